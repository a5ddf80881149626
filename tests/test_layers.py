"""The layers stay honest: one front door, no SQL in the views, no import cycles, import-linter's contracts.

The import graph is grimp's (the one import-linter reads): it counts imports inside functions, not those under
`if TYPE_CHECKING:`. scripts/architecture.py prints the same numbers for a person to read.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import architecture  # noqa: E402

FRONT_DOORS = ("myvlm_desktop", "myvlm_cli")
# What a front door may import from the engine: the Library and its read models, the three contracts, the version.
FRONT_DOOR_API = {"engine", "engine.library", "engine.read_models", "engine.errors", "engine.progress",
                  "engine.settings"}
LAYERS = ["engine.admin", "engine.pipeline", "engine.domain", "engine.models", "engine.ingest", "engine.storage"]


@pytest.fixture(scope="module")
def graph():
    return architecture.build_graph()


def test_front_doors_import_only_the_engines_api(graph):
    wrong = {}
    for door in FRONT_DOORS:
        for module in graph.find_descendants(door) | {door}:
            for imported in graph.find_modules_directly_imported_by(module):
                if imported.split(".")[0] == "engine" and imported not in FRONT_DOOR_API:
                    wrong.setdefault(module, []).append(imported)
    assert not wrong, f"front doors reaching past engine.library: {wrong}"


def test_front_doors_run_no_sql_and_never_touch_the_catalog():
    pattern = re.compile(r"\bexecute\(|\.query\(|\.scalar\(|\.catalog\b|\bCatalog\b|\bsqlite3\b")
    hits = []
    for door in FRONT_DOORS:
        for path in sorted((ROOT / door).rglob("*.py")):
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                code = line.split("#", 1)[0]
                if pattern.search(code) and not code.lstrip().startswith(('"', "'")):
                    hits.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not hits, "\n".join(hits)


def test_no_import_cycles_counting_imports_inside_functions(graph):
    assert architecture.cycles(graph) == []


def test_the_measure_finds_a_cycle_when_there_is_one():
    """The cycle finder itself: a graph with a three-module loop and a tail."""
    import grimp

    g = grimp.ImportGraph()
    for a, b in [("p.a", "p.b"), ("p.b", "p.c"), ("p.c", "p.a"), ("p.c", "p.d")]:
        g.add_import(importer=a, imported=b)
    assert architecture.cycles(g) == [["p.a", "p.b", "p.c"]]


def test_every_engine_module_lives_in_a_layer(graph):
    top = {"engine", "engine.library", "engine.read_models", "engine.errors", "engine.progress", "engine.settings"}
    loose = sorted(m for m in graph.modules if m.startswith("engine") and m not in top
                   and not any(m == layer or m.startswith(layer + ".") for layer in LAYERS))
    assert not loose, f"engine modules outside the layers: {loose}"


def test_import_linter_contracts_hold():
    """pyproject.toml's [tool.importlinter] contracts: Qt-free engine, layers, independent front doors."""
    lint = Path(sys.executable).with_name("lint-imports")
    res = subprocess.run([str(lint), "--no-cache"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert "0 broken" in res.stdout
