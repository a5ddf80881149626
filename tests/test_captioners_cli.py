"""Every captioner family through the real `myvlm` command, on its tiny random-weight preset: one library is indexed
and taught a thing once, then each family trains the thing's embedding, captions and answers by name, and exports
the embedding in the research format. (BLIP-2 takes the same path in test_personalize's end-to-end test, MiniGPT-v2
in test_minigpt_v2; the app calls the same engine verbs whatever the family.)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from engine.domain.concepts.research import load_research_concept_embeddings

from .conftest import myvlm

FAMILIES = ["tiny-smolvlm", "tiny-llava-ov", "tiny-qwen2-vl"]


@pytest.fixture(scope="module")
def taught(tmp_path_factory, test_data: Path) -> tuple[Path, Path]:
    """A library of four photos, indexed with random CLIP weights, with the thing Spiff taught from two of them."""
    root = tmp_path_factory.mktemp("captioners")
    album = root / "album"
    album.mkdir()
    for name in ("spiff.jpg", "spiff_2.jpg", "snow.jpg", "sunset.jpg"):
        shutil.copy(test_data / "kphotoalbum" / name, album / name)
    lib = root / "lib"
    myvlm("settings", "clip_weights", "random", library=lib)
    myvlm("settings", "vlm", "tiny-blip2", library=lib)
    myvlm("index", str(album), "--json", "--no-progress", library=lib)
    myvlm("concept", "add-object", "Spiff", str(album / "spiff.jpg"), str(album / "spiff_2.jpg"), library=lib)
    return lib, album


@pytest.mark.parametrize("family", FAMILIES)
def test_a_family_trains_captions_answers_and_exports_by_name(family: str, taught, tmp_path: Path) -> None:
    lib, album = taught
    trained = json.loads(myvlm("train", "Spiff", "--vlm", family, "--steps", "2", "--json", library=lib).stdout)
    assert trained[0]["steps"] == 2 and trained[0]["vlm"] == family

    cap = json.loads(myvlm("caption", str(album / "spiff.jpg"), "--vlm", family, "--no-store", "--json",
                           library=lib).stdout)
    assert cap["personalised"] and cap["concepts"] and cap["model"] == family

    ans = json.loads(myvlm("ask", str(album / "spiff.jpg"), "What is Spiff doing?", "--vlm", family,
                           "--no-store", "--json", library=lib).stdout)
    assert "What is sks doing?" in ans["prompt"]
    assert ans["personalised"] and ans["concepts"] == cap["concepts"]

    out = Path(myvlm("export-embedding", "Spiff", "--vlm", family, "--out", str(tmp_path / "export"),
                     library=lib).stdout.strip())
    assert out.exists() and out.name.startswith("concept_embeddings_") and out.name.endswith("_captioning.pt")
    assert len(load_research_concept_embeddings(out)) == 1      # the one concept, keyed as the research code keys it
