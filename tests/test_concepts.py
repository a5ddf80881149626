"""The concept registry, stored heads, and detection over the album (the concepts stage)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from engine.domain.concepts.detect import ConceptDetector
from engine.domain.concepts.registry import ConceptError, ConceptRegistry, Head
from engine.library import Library
from engine.models.clip import resolve_encoder
from engine.storage.vectors import load_clip_matrix

from .helpers import write_jpeg


@pytest.fixture
def clip_library(library: Library, tmp_path: Path) -> Library:
    """An album indexed with a random-weight ViT-B-32 (the architecture is real; no weights can be downloaded)."""
    library.catalog.set_setting("clip_weights", "random")
    album = tmp_path / "album"
    for i in range(10):
        write_jpeg(album / f"{i}.jpg", seed=i, width=240, height=180)
    library.add_folder(album)
    library.scan()
    report = library.process()
    assert report.stages["clip"].processed == 10
    return library


def test_registry_rules(clip_library: Library):
    reg = ConceptRegistry(clip_library.catalog)
    ids = [p.id for p in clip_library.photos()]
    mug = reg.add_object("My red mug", ids[:4])
    assert mug.kind == "object" and mug.identifier == "sks" and mug.head_state == "untrained"
    assert [e["photo_id"] for e in reg.examples(mug.id)] == ids[:4]
    bella = reg.add_object("Bella", ids[4:6])
    assert bella.identifier != mug.identifier  # identifiers never collide
    with pytest.raises(ConceptError, match="exists already"):
        reg.add_object("bella", ids[:1])
    with pytest.raises(ConceptError, match="already used"):
        reg.add_object("Cup", ids[:1], identifier="SKS")
    with pytest.raises(ConceptError, match="no photo"):
        reg.add_object("Ghost", [99999])
    with pytest.raises(ConceptError, match="no person"):
        reg.add_person(12345)
    assert [c.name for c in reg.list()] == ["Bella", "My red mug"]
    assert reg.get("my red mug").id == mug.id and reg.get(str(mug.id)).name == "My red mug"
    reg.remove(bella.id)
    with pytest.raises(ConceptError):
        reg.get(bella.id)


def test_an_object_is_made_with_its_head_or_not_at_all(clip_library: Library):
    reg = ConceptRegistry(clip_library.catalog)
    ids = [p.id for p in clip_library.photos()]

    def no_clip(concept_id: int):
        raise ConceptError("no CLIP here")

    for failure in (no_clip, lambda cid: (_ for _ in ()).throw(KeyboardInterrupt())):
        with pytest.raises((ConceptError, KeyboardInterrupt)):
            reg.add_object_trained("Bella", ids[:2], failure)
        assert reg.list() == [] and not any(reg.root.iterdir() if reg.root.exists() else [])
    bella = reg.add_object_trained("Bella", ids[:2], clip_library.train_concept_head)
    assert bella.head_state == "ready" and [c.name for c in reg.list()] == ["Bella"]
    # one left half-made by an older version is finished by the same call, not refused as existing
    mug = reg.add_object("Mug", ids[2:3])
    finished = reg.add_object_trained("mug", ids[3:4], clip_library.train_concept_head)
    assert finished.id == mug.id and finished.head_state == "ready"
    assert [e["photo_id"] for e in reg.examples(mug.id)] == ids[2:4]
    with pytest.raises(ConceptError, match="exists already"):   # a trained one is not silently changed
        reg.add_object_trained("Bella", ids[4:5], clip_library.train_concept_head)


def test_unnamed_person_cannot_become_a_concept(library: Library):
    ts = "2026-01-01T00:00:00"
    with library.catalog.write():
        pid = library.catalog.conn.execute(
            "INSERT INTO people(name, hidden, created_at, updated_at) VALUES (NULL, 0, ?, ?)", [ts, ts]).lastrowid
    with pytest.raises(ConceptError, match="has no name yet"):
        ConceptRegistry(library.catalog).add_person(pid)
    library.people().name(pid, "Alex")
    concept = ConceptRegistry(library.catalog).add_person(pid)
    assert (concept.kind, concept.name, concept.identifier) == ("person", "Alex", "Alex")
    assert ConceptRegistry(library.catalog).add_person(pid).id == concept.id  # once per person


def test_head_roundtrip_and_detection(clip_library: Library):
    cat = clip_library.catalog
    reg = ConceptRegistry(cat)
    enc = resolve_encoder(cat)
    ids, feats = load_clip_matrix(cat, enc.key, enc.dim)
    assert feats.shape == (10, 512) and np.allclose(np.linalg.norm(feats, axis=1), 1, atol=1e-4)
    concept = reg.add_object("Target", [int(ids[3])])
    # a head that fires exactly on photo 3: weight along its embedding, bias at the midpoint of the similarities
    target = feats[3]
    sims = feats @ target
    second = np.sort(sims)[-2]
    w = np.stack([-target, target]) * 50
    b = np.array([0.0, -50 * (second + sims[3])])
    head = Head("object", enc.key, 0.5, {"classifier.weight": w.astype(np.float32), "classifier.bias": b.astype(np.float32)})
    saved = reg.save_head(concept.id, head)
    assert saved.head_state == "ready" and saved.head_revision == 1
    loaded = reg.head(concept.id)
    assert np.array_equal(loaded.tensors["classifier.weight"], head.tensors["classifier.weight"])
    assert (loaded.space, loaded.threshold) == (enc.key, 0.5)
    report = ConceptDetector(cat).run([concept.id])
    assert report.fired == 1
    assert reg.photos_with(concept.id) == [int(ids[3])]
    sig = reg.signals(int(ids[3]))
    assert sig[0]["name"] == "Target" and sig[0]["fired"] == 1 and sig[0]["revision"] == 1
    # retraining bumps the revision: only this concept's signals are redone
    reg.save_head(concept.id, Head("object", enc.key, 0.5, {"classifier.weight": -w.astype(np.float32),
                                                              "classifier.bias": -b.astype(np.float32)}))
    ConceptDetector(cat).run([concept.id])
    assert int(ids[3]) not in reg.photos_with(concept.id) and len(reg.photos_with(concept.id)) == 9
    assert {r["revision"] for r in cat.query("SELECT revision FROM concept_signals")} == {2}


def test_new_photos_get_signals_from_the_stage(clip_library: Library, tmp_path: Path):
    cat = clip_library.catalog
    reg = ConceptRegistry(cat)
    enc = resolve_encoder(cat)
    ids, feats = load_clip_matrix(cat, enc.key, enc.dim)
    concept = reg.add_object("Zero", [int(ids[0])])
    sims = feats @ feats[0]
    cut = (np.sort(sims)[-2] + 1.0) / 2  # random weights make every image look alike: cut just below identical
    w = np.stack([-feats[0], feats[0]]).astype(np.float32) * 1000
    b = np.array([0, -2000 * cut], np.float32)
    reg.save_head(concept.id, Head("object", enc.key, 0.5, {"classifier.weight": w, "classifier.bias": b}))
    ConceptDetector(cat).run()
    assert reg.photos_with(concept.id) == [int(ids[0])]
    # a copy of photo 0 arrives in the album: the pipeline shares its embedding, the concepts stage its signals
    src = next(p for p in clip_library.photos() if p.id == int(ids[0]))
    shutil.copy(src.fs_path, tmp_path / "album" / "copy.jpg")
    # and a re-encoded variant, which the CLIP stage must embed itself
    write_jpeg(tmp_path / "album" / "other.jpg", seed=77)
    clip_library.scan()
    report = clip_library.process()
    assert report.stages["concepts"].processed + report.stages["concepts"].shared == 2
    copy = clip_library.catalog.photo_by_path(tmp_path / "album" / "copy.jpg")
    other = clip_library.catalog.photo_by_path(tmp_path / "album" / "other.jpg")
    expected = {int(ids[0]), copy.id}
    ids2, feats2 = load_clip_matrix(cat, enc.key, enc.dim)
    if float(feats2[list(ids2).index(other.id)] @ feats[0]) >= cut:
        expected.add(other.id)
    assert set(reg.photos_with(concept.id)) == expected
