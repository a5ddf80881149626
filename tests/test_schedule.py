"""The test scheduler's list (tests/conftest.py, HEAVIEST_FIRST) names tests and files that exist: a renamed slow test
would otherwise lose its place silently and start last again."""

from __future__ import annotations

import ast

from .conftest import HEAVIEST_FIRST, ROOT, _unit


def test_every_scheduled_unit_exists_once():
    assert len(set(HEAVIEST_FIRST)) == len(HEAVIEST_FIRST)
    for name in HEAVIEST_FIRST:
        path, _, test = name.partition("::")
        assert (ROOT / path).is_file(), name
        if test:
            tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
            assert test in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}, name


def test_a_named_test_is_its_own_unit_and_the_rest_go_by_file():
    alone = next(n for n in HEAVIEST_FIRST if "::" in n)
    assert _unit(alone) == alone and _unit(alone + "[param]") == alone
    assert _unit(alone + "_and_more") == alone.split("::")[0]
    assert _unit("tests/test_images.py::test_x[a-b]") == "tests/test_images.py"
