"""Object concept heads: the paper's linear classifier on cached CLIP features, trained from the user's album.

Two kinds of evidence:
- synthetic features that are separable by construction: the head must learn them (held-out points right), fire
  exactly at its threshold, be the same for the same seed, report progress and stop when cancelled;
- real photos (the KPhotoAlbum demo album) through the real pipeline, with a ViT-B-32 of RANDOM weights (no weights
  can be downloaded here). Random CLIP features carry no meaning: photos of the same subject are not closer than
  others (the album's embeddings are all highly correlated), so these tests do NOT show the head recognises a rabbit
  or a canyon. They show what must hold whatever the weights: the whole path runs (previews, augmented views, one
  batched encode, album negatives from stored embeddings, held-out / leave-one-out evaluation), the head fires on
  its own training photos (stored embeddings and augmented views), the metrics are computed and reported, the
  view cache is reused, and the head is saved and reloaded bit for bit.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.domain.concepts.object_head import (
    VIEWS_FILE,
    ObjectHeadConfig,
    ObjectHeadTrainer,
    TrainingCancelled,
    augment,
    score,
    score_heads,
    train_linear_head,
)
from engine.domain.concepts.registry import ConceptError, ConceptRegistry
from engine.library import Library
from engine.models.clip import resolve_encoder
from engine.progress import Progress
from engine.storage.vectors import load_clip_matrix

from .helpers import write_jpeg

# -- synthetic features -------------------------------------------------------------------------------------------------

D = 512


def _cluster(rng: np.random.Generator, n: int, centre: np.ndarray | None, spread: float) -> np.ndarray:
    x = rng.normal(size=(n, D)) * spread / np.sqrt(D)
    if centre is not None:
        x += centre
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def synthetic():
    """4 positives × 16 'views' around one direction; negatives around other directions (as an album would be)."""
    rng = np.random.default_rng(7)
    c = rng.normal(size=D)
    c /= np.linalg.norm(c)
    others = rng.normal(size=(6, D))
    others /= np.linalg.norm(others, axis=1, keepdims=True)

    def negs(n: int) -> np.ndarray:
        return np.concatenate([_cluster(rng, n // 6, o, 0.8) for o in others] + [_cluster(rng, n - 6 * (n // 6), None, 1)])

    pos = np.stack([_cluster(rng, 16, c, 0.5) for _ in range(4)])
    return {"pos": pos, "neg": negs(150), "pos_test": _cluster(rng, 300, c, 0.5), "neg_test": negs(600)}


def test_learns_separable_features(synthetic):
    w, b, info = train_linear_head(synthetic["pos"], synthetic["neg"], ObjectHeadConfig())
    assert w.shape == (2, D) and b.shape == (2,) and w.dtype == np.float32
    p_pos, p_neg = score(w, b, synthetic["pos_test"]), score(w, b, synthetic["neg_test"])
    assert np.mean(p_pos >= 0.5) >= 0.99, p_pos.min()
    assert np.mean(p_neg < 0.5) >= 0.99, p_neg.max()
    assert info["train_positive_accuracy"] == 1.0 and info["train_negative_accuracy"] == 1.0
    assert info["steps"] == 500 and info["final_loss"] < 0.5
    assert info["seconds"] < 20  # ~0.2 s on 2 idle cores; generous for loaded CI machines


def test_threshold_and_scoring(synthetic):
    w, b, _ = train_linear_head(synthetic["pos"], synthetic["neg"], ObjectHeadConfig(steps=100))
    feats = np.concatenate([synthetic["pos_test"][:50], synthetic["neg_test"][:50]])
    p = score(w, b, feats)
    assert p.shape == (100,) and np.all((p >= 0) & (p <= 1))
    # the 2-way softmax by hand
    logits = feats.astype(np.float64) @ w.T.astype(np.float64) + b
    np.testing.assert_allclose(p, 1 / (1 + np.exp(logits[:, 0] - logits[:, 1])), rtol=1e-4, atol=1e-6)
    # firing means p >= threshold: a feature exactly on the boundary (equal logits) has p = 0.5 and fires at 0.5
    dw, db = w[1] - w[0], b[1] - b[0]
    on_boundary = feats[0] - ((feats[0] @ dw + db) / (dw @ dw)) * dw
    assert score(w, b, on_boundary)[0] == pytest.approx(0.5, abs=1e-4)
    # a stricter threshold fires on fewer photos
    assert np.sum(p >= 0.9) <= np.sum(p >= 0.5)
    # several heads at once (detection): the same numbers as one by one
    w2, b2, _ = train_linear_head(synthetic["pos"][:2], synthetic["neg"], ObjectHeadConfig(steps=50, seed=3))
    many = score_heads(np.stack([w, w2]), np.stack([b, b2]), feats)
    np.testing.assert_allclose(many[:, 0], p, atol=1e-5)
    np.testing.assert_allclose(many[:, 1], score(w2, b2, feats), atol=1e-5)
    assert score_heads(np.zeros((0, 2, D)), np.zeros((0, 2)), feats).shape == (100, 0)


def test_deterministic_from_seed(synthetic):
    cfg = ObjectHeadConfig(steps=120)
    w1, b1, _ = train_linear_head(synthetic["pos"], synthetic["neg"], cfg)
    w2, b2, _ = train_linear_head(synthetic["pos"], synthetic["neg"], cfg)
    assert np.array_equal(w1, w2) and np.array_equal(b1, b2)
    w3, _, _ = train_linear_head(synthetic["pos"], synthetic["neg"], ObjectHeadConfig(steps=120, seed=1))
    assert not np.array_equal(w1, w3)
    # one view per positive ((n, D)) is accepted too
    w4, _, _ = train_linear_head(synthetic["pos"][:, 0], synthetic["neg"], cfg)
    assert w4.shape == (2, D)


def test_progress_and_cancel(synthetic):
    seen: list[Progress] = []
    train_linear_head(synthetic["pos"], synthetic["neg"], ObjectHeadConfig(steps=100), progress=seen.append)
    assert seen == [Progress("training", d, 100) for d in (25, 50, 75, 100)]

    stop = threading.Event()

    def stop_at_50(p: Progress) -> None:
        if p.done >= 50:
            stop.set()

    with pytest.raises(TrainingCancelled, match="step 50"):
        train_linear_head(synthetic["pos"], synthetic["neg"], ObjectHeadConfig(), progress=stop_at_50, cancel=stop)
    already = threading.Event()
    already.set()
    with pytest.raises(TrainingCancelled, match="step 0"):  # set before the first step: no step is taken
        train_linear_head(synthetic["pos"], synthetic["neg"], ObjectHeadConfig(), cancel=already)
    with pytest.raises(ValueError):
        train_linear_head(synthetic["pos"], np.zeros((0, D)), ObjectHeadConfig())


def test_augment_views():
    img = Image.new("RGB", (300, 200), (200, 30, 40))
    img.paste((10, 200, 10), (0, 0, 60, 200))  # a green band on the left: flips move it
    views = augment(img, 16, np.random.default_rng(0))
    assert len(views) == 16 and views[0] is not None
    assert np.array_equal(np.asarray(views[0]), np.asarray(img))  # view 0 is the original
    assert all(v.size == img.size for v in views)
    flipped = [v for v in views[1:] if np.asarray(v)[100, 290, 1] > 150]  # green now on the right
    assert 2 <= len(flipped) <= 14
    # the frame stays filled: no black corners after rotation
    for v in views:
        a = np.asarray(v).astype(int)
        for y, x in ((0, 0), (0, 299), (199, 0), (199, 299)):
            assert a[y, x].sum() > 150, (y, x, a[y, x])
    again = augment(img, 16, np.random.default_rng(0))
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(views, again, strict=True))
    assert len(augment(img, 1, np.random.default_rng(0))) == 1


# -- real photos, random CLIP weights --------------------------------------------------------------------------------------

SMALL = {"views": 8, "near_negatives": 8, "random_negatives": 4}  # an album of 24 photos; 8 views keep it quick


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, test_data: Path):
    """The KPhotoAlbum demo photos (top level: 24 JPEGs), thumbnails + CLIP (ViT-B-32, random weights)."""
    root = tmp_path_factory.mktemp("object-head")
    album = root / "album"
    album.mkdir()
    for f in sorted((test_data / "kphotoalbum").glob("*.jpg")):
        shutil.copy(f, album / f.name)
    lib = Library(root / "library")
    lib.catalog.set_setting("clip_weights", "random")
    lib.add_folder(album)
    lib.scan()
    report = lib.process(stages=["thumbnail", "clip"])
    assert report is not None
    yield lib
    lib.close()


def _photo_ids(lib: Library) -> dict[str, int]:
    return {p.name: p.id for p in lib.photos()}


def test_real_photos_leave_one_out(indexed):
    lib = indexed
    ids = _photo_ids(lib)
    enc = resolve_encoder(lib.catalog)
    assert enc.key == "ViT-B-32/random"
    album_ids, album = load_clip_matrix(lib.catalog, enc.key, enc.dim)
    assert len(album_ids) == len(ids) == 24

    reg = ConceptRegistry(lib.catalog)
    concept = reg.add_object("Spiff", [ids["spiff.jpg"], ids["spiff_2.jpg"]])
    trainer = ObjectHeadTrainer(lib.catalog, enc, ObjectHeadConfig(**SMALL))
    phases: set[str] = set()
    head, metrics = trainer.train(concept.id, progress=lambda p: phases.add(p.phase))
    assert phases == {"views", "training", "evaluation"}

    assert head.kind == "object" and head.space == enc.key and head.threshold == 0.5
    w, b = head.tensors["classifier.weight"], head.tensors["classifier.bias"]
    assert w.shape == (2, 512) and b.shape == (2,)

    # it fires on its own training photos: their stored embeddings (what detection reads) and their augmented views
    row = {int(p): i for i, p in enumerate(album_ids)}
    stored = album[[row[ids["spiff.jpg"]], row[ids["spiff_2.jpg"]]]]
    assert np.all(score(w, b, stored) >= 0.5), score(w, b, stored)
    views = np.stack([v for k, v in trainer._views.items()])  # (2, 8, 512): computed once, cached
    assert views.shape == (2, 8, 512)
    assert np.all(score(w, b, views.reshape(-1, 512)) >= 0.5)
    # view 0 is the photo's preview as the clip stage saw it
    np.testing.assert_allclose(np.sort(views[:, 0] @ stored.T, axis=None)[-2:], [1, 1], atol=1e-3)

    # two marked photos: leave-one-out; every photo not used as a training negative is a held-out negative
    assert metrics["method"] == "leave-one-out"
    assert metrics["positives_heldout"] == 2 and metrics["positives_train"] == 2
    assert metrics["negatives_train"] == metrics["negatives_album"] == 12
    assert metrics["negatives_heldout"] == 24 - 2 - 12
    for key in ("precision", "recall"):  # computed; values mean nothing with random weights
        assert metrics[key] is None or 0.0 <= metrics[key] <= 1.0
    assert metrics["recall"] is not None and 0 <= metrics["train_seconds"] < 30
    assert metrics["train_positive_accuracy"] == 1.0

    # saved with the registry: revision 1, metrics stored, tensors reload identically
    saved = reg.save_head(concept.id, head, metrics)
    assert saved.head_state == "ready" and saved.head_revision == 1 and saved.head_space == enc.key
    assert saved.threshold == 0.5 and saved.metrics["method"] == "leave-one-out"
    loaded = reg.head(concept.id)
    assert loaded is not None and loaded.kind == "object" and loaded.space == enc.key and loaded.threshold == 0.5
    for k in ("classifier.weight", "classifier.bias"):
        assert np.array_equal(loaded.tensors[k], head.tensors[k])
    assert np.array_equal(score(loaded.tensors["classifier.weight"], loaded.tensors["classifier.bias"], album),
                          score(w, b, album))

    # the augmented views were cached on disk: a new trainer encodes nothing and trains the same head
    assert (reg.folder(concept.id) / VIEWS_FILE).exists()
    calls = []

    class Counting:
        key, dim = enc.key, enc.dim

        def encode_images(self, images):
            calls.append(len(images))
            return enc.encode_images(images)

        def missing_reason(self):
            return None

    head2, _ = ObjectHeadTrainer(lib.catalog, Counting(), ObjectHeadConfig(**SMALL)).train(concept.id)
    assert calls == []
    assert np.array_equal(head2.tensors["classifier.weight"], w)


def test_real_photos_heldout_with_explicit_and_folder_negatives(indexed, test_data: Path):
    lib = indexed
    ids = _photo_ids(lib)
    enc = resolve_encoder(lib.catalog)
    reg = ConceptRegistry(lib.catalog)
    canyon = [ids[f"grand_canyon_{i}.jpg"] for i in (1, 2, 3)]
    concept = reg.add_object("Canyon", canyon)
    reg.add_examples(concept.id, [ids["snow.jpg"], canyon[0]], role="negative")  # marked both ways: positive wins
    folder = test_data / "face_recognition"
    cfg = ObjectHeadConfig(positives=2, **{**SMALL, "views": 4})
    head, metrics = ObjectHeadTrainer(lib.catalog, enc, cfg).train(concept.id, negatives_folder=folder)

    # 3 marked, 2 train: the third is held out; snow.jpg is always a training negative, never held out
    assert metrics["method"] == "heldout"
    assert metrics["positives_train"] == 2 and metrics["positives_heldout"] == 1
    assert metrics["negatives_explicit"] == 1
    assert metrics["negatives_folder"] == len([f for f in folder.iterdir() if f.suffix.lower() in (".jpg", ".png")])
    assert metrics["negatives_album"] == 12
    assert metrics["negatives_train"] == 12 + 1 + metrics["negatives_folder"]
    assert metrics["negatives_heldout"] == 24 - 3 - 1 - 12
    assert metrics["recall"] in (0.0, 1.0)
    assert metrics["precision"] is None or 0.0 <= metrics["precision"] <= 1.0
    assert metrics["false_positive_rate"] is not None

    album_ids, album = load_clip_matrix(lib.catalog, enc.key, enc.dim)
    row = {int(p): i for i, p in enumerate(album_ids)}
    p_train = score(head.tensors["classifier.weight"], head.tensors["classifier.bias"], album[[row[canyon[0]],
                                                                                              row[canyon[1]]]])
    assert np.all(p_train >= 0.5)


def test_errors_say_what_to_do(library: Library, tmp_path: Path):
    album = tmp_path / "album"
    write_jpeg(album / "a.jpg", 1)
    write_jpeg(album / "b.jpg", 2)
    library.catalog.set_setting("clip_weights", "random")
    library.add_folder(album)
    library.scan()  # no clip stage: no embeddings
    ids = _photo_ids(library)
    reg = ConceptRegistry(library.catalog)
    concept = reg.add_object("Thing", [ids["a.jpg"]])
    trainer = ObjectHeadTrainer(library.catalog, resolve_encoder(library.catalog))
    with pytest.raises(ConceptError, match=r"CLIP embedding.*myvlm index"):
        trainer.train(concept.id)
    with pytest.raises(ConceptError, match="no concept"):
        trainer.train(999)
