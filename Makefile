# Two commands on a fresh clone:  `make run`  and  `make test`.  Both set up .venv first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
ALBUM  ?=
LIBRARY ?=
LIBARG := $(if $(LIBRARY),--library "$(LIBRARY)",)
export QT_QPA_PLATFORM ?= offscreen

.PHONY: run test setup test-data bench gui clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

## make run [ALBUM=path] [LIBRARY=path]: index a photo folder (default: your Pictures folder) and print the status
run: $(STAMP)
	$(VENV)/bin/myvlm $(LIBARG) index $(if $(ALBUM),"$(ALBUM)",)

## make gui: the desktop app
gui: $(STAMP)
	QT_QPA_PLATFORM= $(VENV)/bin/myvlm-desktop

## make test: the whole test suite (fetches the real test photos into .cache/ first)
test: $(STAMP)
	$(PY) scripts/fetch_test_data.py
	$(PY) -m pytest -q -ra

test-data: $(STAMP)
	$(PY) scripts/fetch_test_data.py

## make bench: the benchmarks (not part of `make test`)
bench: $(STAMP)
	$(PY) -m pip install --quiet -e ".[bench]"
	$(PY) scripts/fetch_test_data.py
	$(PY) bench/bench_thumbnails.py
	$(PY) bench/bench_scan.py
	$(PY) bench/bench_faces.py
	$(PY) bench/bench_clustering.py
	$(PY) bench/bench_heads.py

clean:
	rm -rf $(VENV) .cache build dist *.egg-info
