"""Measure the code's shape: lines per package and module, what the front doors import from the engine, SQL in
the front doors, and import cycles (counting imports inside functions; not those under TYPE_CHECKING).

    .venv/bin/python scripts/architecture.py [--json]

Issue 19's closing note compares these numbers before and after the refactor; tests/test_layers.py asserts the
rules (no cycles, front doors only through the API) on the same import graph.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parent.parent
FRONT_DOORS = [p for p in ("myvlm_desktop", "myvlm_cli") if (ROOT / p).is_dir()]
SQL = re.compile(r"\bexecute\(|\.query\(|\.scalar\(|\.catalog\b")


def packages() -> list[str]:
    return ["engine", *FRONT_DOORS]


def build_graph() -> grimp.ImportGraph:
    sys.path.insert(0, str(ROOT))
    return grimp.build_graph(*packages(), exclude_type_checking_imports=True, cache_dir=None)


def module_file(module: str) -> Path:
    path = ROOT / module.replace(".", "/")
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def lines(module: str) -> int:
    try:
        return sum(1 for _ in module_file(module).open(encoding="utf-8"))
    except OSError:
        return 0


def cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, it = work[-1]
            for nxt in it:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph.find_modules_directly_imported_by(nxt)))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        m = stack.pop()
                        on_stack.discard(m)
                        comp.append(m)
                        if m == node:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def front_door_imports(graph: grimp.ImportGraph) -> dict[str, dict[str, int]]:
    """For each front door: the engine modules it imports, with how many of its modules import each."""
    out: dict[str, dict[str, int]] = {}
    for door in FRONT_DOORS:
        counts: Counter[str] = Counter()
        for module in graph.find_descendants(door) | {door}:
            for imported in graph.find_modules_directly_imported_by(module):
                if imported == "engine" or imported.startswith("engine."):
                    counts[imported] += 1
        out[door] = dict(sorted(counts.items()))
    return out


def front_door_sql() -> dict[str, int]:
    out = {}
    for door in FRONT_DOORS:
        out[door] = sum(len(SQL.findall(p.read_text(encoding="utf-8"))) for p in (ROOT / door).rglob("*.py"))
    return out


def measure() -> dict:
    graph = build_graph()
    mods = sorted(m for m in graph.modules if m.split(".")[0] in packages())
    per_package: Counter[str] = Counter()
    for m in mods:
        parts = m.split(".")
        per_package[".".join(parts[:2]) if len(parts) > 1 and module_file(".".join(parts[:2])).name == "__init__.py"
                     else parts[0]] += lines(m)
    biggest = sorted(((lines(m), m) for m in mods), reverse=True)[:15]
    cyc = cycles(graph)
    return {
        "modules": len(mods),
        "lines": sum(lines(m) for m in mods),
        "lines_per_package": dict(sorted(per_package.items())),
        "biggest_modules": [{"module": m, "lines": n} for n, m in biggest],
        "front_door_engine_imports": front_door_imports(graph),
        "front_door_sql_or_catalog": front_door_sql(),
        "cycles": cyc,
        "modules_in_cycles": sum(len(c) for c in cyc),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    data = measure()
    if args.json:
        json.dump(data, sys.stdout, indent=2)
        print()
        return 0
    print(f"{data['modules']} modules, {data['lines']} lines")
    for pkg, n in data["lines_per_package"].items():
        print(f"  {pkg:40s} {n:6d}")
    print("biggest modules:")
    for row in data["biggest_modules"]:
        print(f"  {row['module']:50s} {row['lines']:6d}")
    for door, imports in data["front_door_engine_imports"].items():
        print(f"{door}: imports {len(imports)} engine modules ({sum(imports.values())} import edges); "
              f"SQL/catalog touches: {data['front_door_sql_or_catalog'][door]}")
        for mod, n in imports.items():
            print(f"    {mod} ({n})")
    print(f"import cycles: {len(data['cycles'])} ({data['modules_in_cycles']} modules)")
    for c in data["cycles"]:
        print("   ", " <-> ".join(c) if len(c) < 8 else f"{len(c)} modules: {', '.join(c[:8])}, ...")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
