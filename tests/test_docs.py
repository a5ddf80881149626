"""The method's own document: every "method.md §N" citation in the repository names a section docs/method.md has,
and nothing points at the reference material outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHOD = ROOT / "docs" / "method.md"
TEXT_SUFFIXES = {".py", ".md", ".toml", ".txt", ".cfg", ".ini", ".yml", ".yaml", ".sh", ".rst", ".spec"}
SKIP_DIRS = {".git", ".venv", "venv", "node_modules", "__pycache__", "build", "dist", ".cache", ".mypy_cache",
             ".pytest_cache", ".ruff_cache", ".hypothesis"}
# Written so that this file does not match itself.
CITATION = re.compile(r"method\.md\)?\s*§\s*(\d+)((?:\s*(?:,|and|or|-|–)\s*§?\s*\d+)*)")
OUTSIDE = "shared" + "/reference"


def _text_files() -> list[Path]:
    out = []
    stack = [ROOT]
    while stack:
        folder = stack.pop()
        for p in folder.iterdir():
            if p.is_dir():
                if p.name not in SKIP_DIRS and not p.name.endswith(".egg-info") and p != ROOT / "shared":
                    stack.append(p)
            elif p.suffix in TEXT_SUFFIXES or (p.parent.name == ".ci" and not p.suffix):
                out.append(p)
    return out


def _sections() -> set[int]:
    return {int(m) for m in re.findall(r"^## (\d+)\. ", METHOD.read_text(encoding="utf-8"), flags=re.MULTILINE)}


def test_method_md_sections_are_numbered_in_order():
    text = METHOD.read_text(encoding="utf-8")
    numbers = [int(m) for m in re.findall(r"^## (\d+)\. ", text, flags=re.MULTILINE)]
    assert numbers == list(range(1, len(numbers) + 1)) and len(numbers) >= 10, numbers
    # the document's own cross-references too
    cited = {int(n) for n in re.findall(r"§(\d+)", text)}
    assert cited <= set(numbers), f"docs/method.md cites sections it does not have: {sorted(cited - set(numbers))}"


def test_every_method_md_citation_names_a_section_that_exists():
    sections = _sections()
    bad, found = [], 0
    for path in _text_files():
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for m in CITATION.finditer(text):
            numbers = [int(m.group(1))] + [int(n) for n in re.findall(r"\d+", m.group(2) or "")]
            found += 1
            for n in numbers:
                if n not in sections:
                    line = text.count("\n", 0, m.start()) + 1
                    bad.append(f"{path.relative_to(ROOT)}:{line}: §{n}")
    assert found > 10, f"only {found} citations of docs/method.md found: is the pattern still right?"
    assert not bad, "citations of docs/method.md sections that do not exist:\n" + "\n".join(bad)


def test_nothing_points_at_reference_material_outside_the_repository():
    hits = []
    for path in _text_files():
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if OUTSIDE in text:
            hits.append(str(path.relative_to(ROOT)))
    assert not hits, f"these files point at {OUTSIDE}, which is not part of the repository: {hits}"
