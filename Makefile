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

## make run [ALBUM=path] [LIBRARY=path]: open the desktop app (the first run asks for folders, offering Pictures;
## ALBUM opens that folder). A second `make run` on the same library brings the open window to the front.
## The offscreen platform exported above is for the tests: the app gets the real display, unless you set one.
## On one line, so that make's echo of it is one line too (a continuation echoed a lone `\`).
REAL_DISPLAY = $(if $(filter environment command line,$(origin QT_QPA_PLATFORM)),,env -u QT_QPA_PLATFORM)
run: $(STAMP)
	$(REAL_DISPLAY) $(VENV)/bin/myvlm-desktop $(LIBARG) $(if $(ALBUM),--album "$(ALBUM)",)

## make gui: the desktop app
gui: $(STAMP)
	QT_QPA_PLATFORM= $(VENV)/bin/myvlm-desktop

## make test: the whole test suite (fetches the real test photos into .cache/ first), on two workers, a test file
## per worker: 7 min 56 s on an idle 2-core machine against 13 min 47 s on one (many tests wait on subprocesses),
## measured before tests/conftest.py started the heaviest first, long independent tests on their own, and forked
## `myvlm` commands from a process that has imported torch (MYVLM_TEST_FORK=0: a fresh interpreter each)
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-logo --no-cache
	$(PY) scripts/fetch_test_data.py
	$(PY) -m pytest -q -ra --durations=15 -n 2 --dist loadfile

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
