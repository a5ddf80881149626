"""Fuzzing what comes from outside into the library's concepts: MyVLM research-layout folders (captions.json, VQA
files, images, links), research `.pt` files (concept embeddings, object heads; damaged, mis-shaped, or pickles that
try to run code) and the library's own safetensors embedding files (truncated, overwritten, hand-built headers).

The property throughout: a clear ConceptError (or a valid result), nothing written to the library on failure, the
source folder untouched, no code from a pickle ever run, and the library keeps working afterwards.

CI runs a bounded, derandomized number of examples with no example database; `MYVLM_FUZZ_SCALE=50` runs more.
"""

from __future__ import annotations

import builtins
import io
import itertools
import json
import os
import pickle
import shutil
import struct
import subprocess
import zipfile
from pathlib import Path

import hypothesis
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from PIL import Image

from engine.domain.concepts.registry import OBJECT, ConceptError, ConceptRegistry
from engine.domain.concepts.research import (
    MAX_JSON_BYTES,
    VQA_FILE,
    import_research_concept,
    load_imported_embeddings,
    load_research_concept_embeddings,
    load_research_object_head,
)
from engine.domain.personalize.embeddings import (
    ConceptEmbedding,
    EmbeddingFileError,
    EmbeddingStore,
)
from engine.library import Library
from engine.models.vlm.auto import VLM_SPECS

from . import fuzz_media as M
from .helpers import album_snapshot

SCALE = float(os.environ.get("MYVLM_FUZZ_SCALE", "1"))
FUZZ = settings(database=None, derandomize=True, deadline=None, print_blob=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # torch's notes on odd pickles: expected here


def n(examples: int) -> int:
    return max(1, int(examples * SCALE))


class Blobs(dict):
    """Seed files by name; shown by name only when hypothesis prints a failing example."""

    def __repr__(self) -> str:
        return f"<{len(self)} seed files>"


# ----------------------------------------------------------------------------------------------------------------------
# One library for the module; every example must leave it as it found it
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lib(tmp_path_factory: pytest.TempPathFactory):
    library = Library(tmp_path_factory.mktemp("fuzz-imports") / "library")
    yield library
    library.close()


@pytest.fixture(scope="module")
def registry(lib: Library) -> ConceptRegistry:
    return ConceptRegistry(lib.catalog)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-import-sources")


@pytest.fixture(scope="module")
def photos(test_data: Path) -> Blobs:
    """Small JPEGs of real photos (decoding them is the import's image check), and a private one outside."""
    out = Blobs()
    for i, name in enumerate(("jesper.jpg", "snow.jpg", "skagen.jpg", "donna.jpg")):
        img = Image.open(test_data / "kphotoalbum" / name).convert("RGB")
        img.thumbnail((160, 160))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=85)
        out["secret.jpg" if i == 3 else f"img{i}.jpg"] = buf.getvalue()
    return out


def library_state(lib: Library, registry: ConceptRegistry) -> tuple:
    """Everything an import could leave behind: concepts, their examples, every file of the concepts folder."""
    files = sorted(str(p.relative_to(registry.root)) for p in registry.root.rglob("*")) if registry.root.exists() else []
    return ([(c.id, c.name, c.identifier, c.head_state) for c in registry.list()],
            lib.catalog.scalar("SELECT COUNT(*) FROM concept_examples"), files)


def assert_library_works(lib: Library, registry: ConceptRegistry) -> None:
    assert lib.catalog.scalar("PRAGMA integrity_check") == "ok"
    c = registry.create(OBJECT, "probe after fuzzing")
    registry.remove(c.id)
    assert lib.status()["photos"] is not None


_counter = itertools.count()


def event(text: str) -> None:
    """hypothesis.event, also callable from the plain tests that share the helpers."""
    if currently_in_test_context():
        hypothesis.event(text)


def _gist(message: str) -> str:
    """A ConceptError's kind, for hypothesis' statistics: the message less names and details."""
    return " ".join(w for w in message.split("(")[0].split() if not any(c in w for c in "./'\"\\0123456789"))[:60]


def concept_folder(workdir: Path, photos: Blobs, files: dict[str, bytes | None] | None = None) -> Path:
    """A fresh research-layout folder: three images, and `files` (name -> bytes; None removes it)."""
    folder = workdir / f"concept_{next(_counter)}"
    folder.mkdir()
    for name in ("img0.jpg", "img1.jpg", "img2.jpg"):
        (folder / name).write_bytes(photos[name])
    outside = workdir / "outside"  # what "../outside/secret.jpg" would reach if names were followed as paths
    outside.mkdir(exist_ok=True)
    (outside / "secret.jpg").write_bytes(photos["secret.jpg"])
    for name, data in (files or {}).items():
        if data is not None:
            (folder / name).write_bytes(data)
    return folder


def import_or_refuse(lib: Library, registry: ConceptRegistry, folder: Path, photos: Blobs, check=None, **kw):
    """Import; on ConceptError nothing may have changed. On success the concept is checked (and by `check`, with
    its folder), then removed again."""
    before = library_state(lib, registry)
    source = album_snapshot(folder)
    try:
        concept = import_research_concept(registry, folder, **kw)
    except ConceptError as exc:
        message = str(exc)
        assert message.strip() and "Traceback" not in message
        assert library_state(lib, registry) == before, "a refused import left something behind"
        event(f"refused: {_gist(message)}")  # see --hypothesis-show-statistics
        result = exc
    else:
        home = registry.folder(concept.id)
        examples = registry.examples(concept.id)
        assert examples
        for e in examples:
            path = Path(e["path"])
            assert path.is_relative_to(home) and path.read_bytes() == (folder / path.name).read_bytes()
            assert path.read_bytes() != photos["secret.jpg"]
            if e["captions"] is not None:
                caps = json.loads(e["captions"])
                assert isinstance(caps, list) and all(isinstance(c, str) and c.strip() for c in caps)
        if (home / VQA_FILE).exists():
            json.loads((home / VQA_FILE).read_text(encoding="utf-8"))
        if check is not None:
            check(concept, home)
        registry.remove(concept.id)
        assert library_state(lib, registry) == before
        event("imported")
        result = concept
    assert album_snapshot(folder) == source, "the import wrote into the source folder"
    return result


# ----------------------------------------------------------------------------------------------------------------------
# captions.json, captions_augmented.json, additional_llava_vqa_data.json
# ----------------------------------------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12)
HUGE = "sks " * 250_000  # a megabyte of caption
image_keys = st.one_of(
    st.sampled_from(["img0.jpg", "img1.jpg", "img2.jpg", "img0.jpg", "img1.jpg", "../../etc/passwd", "/etc/passwd",
                     "..", ".", "", "   ", "../outside/secret.jpg", "/abs/outside/secret.jpg", "sub/img0.jpg",
                     "C:\\photos\\img1.jpg", "img0.jpg\x00.png", "\ud800.jpg", "img0.JPG", "x" * 300 + ".jpg",
                     "secret.jpg", "~/img0.jpg"]),
    st.text(max_size=20))
caption_texts = st.one_of(st.text(max_size=40), st.sampled_from(
    ["sks on a table", "a close-up of sks", "", "   ", "\ud800 broken", "sks\x00nul", HUGE, "SKS", "<img>"]))
captions_for_one = st.one_of(st.lists(caption_texts, max_size=4), caption_texts, json_values,
                             st.lists(st.one_of(caption_texts, json_values), max_size=3))
captions_docs = st.one_of(
    st.dictionaries(st.sampled_from(["img0.jpg", "img1.jpg", "img2.jpg"]), st.lists(caption_texts, max_size=3),
                    min_size=1, max_size=3),  # mostly right
    st.dictionaries(image_keys, captions_for_one, max_size=5),
    json_values)
vqa_docs = st.one_of(
    st.dictionaries(image_keys, st.one_of(st.lists(st.lists(caption_texts, max_size=3), max_size=3), json_values),
                    max_size=3),
    json_values)
RAW_DOCS = [  # files no json.dumps writes
    b"[" * 200_000, b'{"img0.jpg": ' + b"9" * 5000 + b"}", b"\xef\xbb\xbf" + json.dumps({"img0.jpg": ["sks"]}).encode(),
    b"\xff\xfe{\x00}\x00", b'{"img0.jpg": ["sks"', b"", b"null", b"\x00" * 64, b'{"img0.jpg": ["\\ud800"]}',
    b'{"img0.jpg": NaN, "img1.jpg": Infinity}', b'{"a": 1, "a": 2}', '{"img0.jpg": ["ø sks é"]}'.encode("latin-1"),
    b'{"img0.jpg": [' + b'{"a":' * 3000 + b"1" + b"}" * 3000 + b"]}",
]


def encode_doc(doc) -> bytes:
    return doc if isinstance(doc, bytes) else json.dumps(doc).encode("utf-8")


docs = st.one_of(captions_docs, st.sampled_from(RAW_DOCS))


@settings(FUZZ, max_examples=n(100))
@given(captions=docs, augmented=st.one_of(st.none(), docs), vqa=st.one_of(st.none(), vqa_docs, st.sampled_from(RAW_DOCS)))
@example(captions={"img0.jpg": ["sks on a table"], "../outside/secret.jpg": ["sks"]}, augmented=None, vqa=None)
@example(captions={"img0.jpg": ["sks"]}, augmented=None, vqa={"img0.jpg": [["What is \ud800?", "sks"]]})
@example(captions=RAW_DOCS[0], augmented=None, vqa=None)
@example(captions=RAW_DOCS[2], augmented=None, vqa=None)
@example(captions={"img0.jpg": [HUGE]}, augmented=None, vqa=None)
def test_malformed_caption_files(lib, registry, workdir, photos, captions, augmented, vqa):
    folder = concept_folder(workdir, photos, {
        "captions.json": encode_doc(captions),
        "captions_augmented.json": None if augmented is None else encode_doc(augmented),
        VQA_FILE: None if vqa is None else encode_doc(vqa)})
    import_or_refuse(lib, registry, folder, photos)
    shutil.rmtree(folder)


def test_caption_file_size_is_capped(lib, registry, workdir, photos):
    folder = concept_folder(workdir, photos, {"captions.json": b'{"img0.jpg": ["' + b"s" * (MAX_JSON_BYTES + 10) + b'"]}'})
    result = import_or_refuse(lib, registry, folder, photos)
    assert isinstance(result, ConceptError) and "too large for a captions file" in str(result)
    shutil.rmtree(folder)
    assert_library_works(lib, registry)


# ----------------------------------------------------------------------------------------------------------------------
# Links and names that point outside the folder
# ----------------------------------------------------------------------------------------------------------------------


def test_links_and_names_pointing_outside_are_refused(lib, registry, workdir, photos):
    good_caps = json.dumps({"img0.jpg": ["sks on a table"], "img1.jpg": ["sks"]}).encode()
    secret = workdir / "outside" / "secret.jpg"
    outside_caps = workdir / "outside" / "captions.json"
    outside_caps.parent.mkdir(exist_ok=True)
    outside_caps.write_bytes(good_caps)
    cases = {
        "image link to a private photo": (lambda f: os.symlink(secret, f / "img9.jpg"), "outside the concept folder"),
        "image link to a system file": (lambda f: os.symlink("/etc/passwd", f / "passwd.jpg"), "outside the concept"),
        "relative link climbing out": (lambda f: os.symlink("../outside/secret.jpg", f / "up.jpg"), "outside the"),
        "captions file that is a link": (lambda f: (f / "captions.json").unlink() or os.symlink(outside_caps,
                                                                                              f / "captions.json"),
                                         "outside the concept folder"),
        "head that is a link": (lambda f: torch.save({"classifier.weight": torch.randn(2, 1024), "classifier.bias":
                                                      torch.randn(2)}, workdir / "outside" / "h.pt")
                                or os.symlink(workdir / "outside" / "h.pt", f / "head.pt"), "outside the concept"),
        "captions naming a path outside": (lambda f: (f / "captions.json").write_text(json.dumps(
            {"img0.jpg": ["sks"], "../outside/secret.jpg": ["sks"]})), "secret.jpg named in the captions is not in"),
        "captions naming a link loop": (lambda f: os.symlink("loop.jpg", f / "loop.jpg") or (f / "captions.json")
                                        .write_text(json.dumps({"img0.jpg": ["sks"], "loop.jpg": ["sks"]})),
                                        "loop.jpg named in the captions is not in"),
        "captions naming a dangling link": (lambda f: os.symlink("gone.jpg", f / "dangling.jpg") or (f / "captions.json")
                                            .write_text(json.dumps({"dangling.jpg": ["sks"]})),
                                            "dangling.jpg named in the captions is not in"),
    }
    for label, (setup, message) in cases.items():
        folder = concept_folder(workdir, photos, {"captions.json": good_caps})
        setup(folder)
        result = import_or_refuse(lib, registry, folder, photos)
        assert isinstance(result, ConceptError) and message in str(result), (label, result)
    # links that stay inside the folder are fine, and a folder named like an image is not one
    folder = concept_folder(workdir, photos, {"captions.json": good_caps})
    os.symlink("img0.jpg", folder / "img3.jpg")
    (folder / "album.jpg").mkdir()
    concept = import_or_refuse(lib, registry, folder, photos)
    assert not isinstance(concept, ConceptError), concept
    assert_library_works(lib, registry)
    assert secret.read_bytes() == photos["secret.jpg"]


# ----------------------------------------------------------------------------------------------------------------------
# Research .pt files: wrong shapes, dtypes, layouts, values, structure
# ----------------------------------------------------------------------------------------------------------------------

DTYPES = [torch.float32] * 5 + [torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.bool, torch.complex64,
                                 torch.uint8]


def _quiet(fn, *args):
    """fn(*args) without its warnings (torch calls nested tensors a prototype, at import time here)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args)


def make_tensor(dtype: torch.dtype, shape: list[int], fill: str, layout: str) -> torch.Tensor:
    if layout == "meta":
        return torch.empty(shape, dtype=dtype, device="meta")
    t = torch.zeros(shape, dtype=torch.float32)
    if t.numel():
        t = torch.linspace(-1, 1, t.numel()).reshape(shape)
        if fill == "nan":
            t.view(-1)[0] = float("nan")
        elif fill == "inf":
            t.view(-1)[-1] = float("inf")
    t = t.to(dtype)
    if layout == "sparse" and t.ndim >= 1:
        return t.to_sparse()
    if layout == "nested" and t.ndim == 2 and t.shape[0] > 0:
        return torch.nested.nested_tensor(list(t))
    if layout == "strided_view" and t.ndim == 2:
        return t.t()
    return t


layouts = st.sampled_from(["dense"] * 6 + ["sparse", "meta", "nested", "strided_view"])
fills = st.sampled_from(["normal", "normal", "normal", "nan", "inf"])
any_shape = st.lists(st.integers(0, 6), max_size=3)
tensors = st.builds(make_tensor, st.sampled_from(DTYPES),
                    st.one_of(st.sampled_from([[1, 8], [1, 8], [8], [2, 8], [1, 0], [0, 8], [], [1, 2, 8], [2, 1]]),
                              any_shape), fills, layouts)
weights = st.builds(make_tensor, st.sampled_from(DTYPES),
                    st.one_of(st.sampled_from([[2, 1024], [2, 8], [2, 8], [3, 8], [2], [8, 2], [2, 0]]), any_shape),
                    fills, layouts)
biases = st.builds(make_tensor, st.sampled_from(DTYPES), st.one_of(st.sampled_from([[2], [2], [2, 1], [3], []]),
                                                                    any_shape), fills, layouts)
scalars = st.one_of(st.none(), st.integers(), st.text(max_size=8), st.floats(), st.booleans())
good_steps = st.integers(0, 10**6)
odd_steps = st.one_of(st.integers(-3, -1), st.sampled_from(["iteration_25", "step_3", "25", " 7 ", "last", "", "-1",
                                                            "1e3", "\u0663"]),
                      st.booleans(), st.floats(allow_nan=False), st.tuples(st.integers(0, 3)))
steps = st.one_of(good_steps, good_steps, good_steps, odd_steps)
pairs = st.fixed_dictionaries({"keys": tensors, "values": tensors})
entries = st.one_of(
    pairs, pairs, pairs,
    st.dictionaries(st.sampled_from(["keys", "values", "extra", "Values"]), st.one_of(tensors, scalars), max_size=3),
    tensors, scalars, st.lists(tensors, max_size=2))
embedding_objects = st.one_of(st.dictionaries(steps, entries, min_size=1, max_size=4),
                              st.dictionaries(steps, entries, max_size=4), entries, st.lists(entries, max_size=2),
                              scalars)
# BLIP-2's concept width: a folder import refuses embeddings no checkpoint of their family can use
dense = st.builds(make_tensor, st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64]),
                  st.just([1, 1408]), st.just("normal"), st.just("dense"))
valid_embedding_objects = st.dictionaries(good_steps, st.fixed_dictionaries({"keys": dense, "values": dense}),
                                          min_size=1, max_size=3)
head_objects = st.one_of(
    st.builds(lambda w, b: {"classifier.weight": w, "classifier.bias": b}, weights, biases),
    st.builds(lambda w, b, prefix: {f"{prefix}classifier.weight": w, f"{prefix}classifier.bias": b}, weights, biases,
              st.sampled_from(["module.", "head.", "a.b.", ""])),
    st.builds(lambda w, b, key: {key: {"classifier.weight": w, "classifier.bias": b}}, weights, biases,
              st.sampled_from(["state_dict", "model", "head", "classifier", "other"])),
    st.builds(lambda w, b: {"weight": w, "bias": b}, weights, biases),
    st.dictionaries(st.text(max_size=20), st.one_of(tensors, scalars), max_size=3),
    scalars, st.lists(tensors, max_size=2))
valid_heads = st.builds(lambda: {"classifier.weight": torch.randn(2, 1024), "classifier.bias": torch.randn(2)})


def check_embeddings(steps_out: dict) -> None:
    assert steps_out and list(steps_out) == sorted(steps_out) and all(isinstance(s, int) for s in steps_out)
    dims = set()
    for entry in steps_out.values():
        values, keys = entry["values"], entry["keys"]
        assert values.dtype == keys.dtype == np.float32 and values.ndim == 2 and values.shape[0] >= 1
        assert np.isfinite(values).all() and np.isfinite(keys).all()
        dims.add(values.shape[1])
    assert len(dims) == 1 and dims.pop() >= 1


def load_embeddings_or_refuse(path: Path, obj) -> None:
    torch.save(obj, path)
    try:
        out = load_research_concept_embeddings(path)
    except ConceptError as exc:
        assert path.name in str(exc)
        event(f"refused: {_gist(str(exc))}")
    else:
        check_embeddings(out)
        event("loaded")


@settings(FUZZ, max_examples=n(50))
@given(obj=st.dictionaries(good_steps, pairs, min_size=1, max_size=3))
@example(obj={0: {"keys": torch.rand(2), "values": torch.randn(1, 8).to_sparse()}})
@example(obj={0: {"keys": torch.rand(2), "values": torch.empty(1, 8, device="meta")}})
@example(obj={0: {"keys": torch.rand(2), "values": _quiet(torch.nested.nested_tensor, [torch.randn(8)])}})
@example(obj={0: {"keys": torch.rand(2), "values": torch.full((1, 8), float("nan"))}})
def test_concept_embeddings_of_any_shape_dtype_and_values(workdir, obj):
    load_embeddings_or_refuse(workdir / "concept_embeddings_blip_captioning.pt", obj)


@settings(FUZZ, max_examples=n(40))
@given(obj=embedding_objects)
def test_concept_embeddings_of_any_structure(workdir, obj):
    load_embeddings_or_refuse(workdir / "concept_embeddings_llava_captioning.pt", obj)


@settings(FUZZ, max_examples=n(60))
@given(obj=head_objects)
def test_object_heads_of_any_shape(workdir, obj):
    path = workdir / "head.pt"
    torch.save(obj, path)
    try:
        head = load_research_object_head(path)
    except ConceptError as exc:
        assert path.name in str(exc)
        event(f"refused: {_gist(str(exc))}")
    else:
        event("loaded")
        w, b = head["classifier.weight"], head["classifier.bias"]
        assert w.dtype == b.dtype == np.float32 and w.ndim == 2 and w.shape[0] == 2 and b.shape == (2,)
        assert np.isfinite(w).all() and np.isfinite(b).all()


def _pt_seeds() -> Blobs:
    obj = {0: {"keys": torch.rand(1, 2), "values": torch.randn(1, 16)},
           25: {"keys": torch.rand(1, 2), "values": torch.randn(1, 16)}}
    out = Blobs()
    for label, kw in (("zip", {}), ("legacy", {"_use_new_zipfile_serialization": False})):
        buf = io.BytesIO()
        torch.save(obj, buf, **kw)
        out[label] = buf.getvalue()
    return out


PT_SEEDS = _pt_seeds()
fracs = st.floats(0, 1, allow_nan=False)
byte_ops = st.one_of(
    st.tuples(st.just("flip"), fracs, st.integers(0, 7)),
    st.tuples(st.just("set"), fracs, st.integers(0, 255)),
    st.tuples(st.just("truncate"), fracs),
    st.tuples(st.just("delete"), fracs, st.integers(1, 64)),
    st.tuples(st.just("duplicate"), fracs, st.integers(1, 64)),
    st.tuples(st.just("insert"), fracs, st.binary(min_size=1, max_size=16)),
)


@settings(FUZZ, max_examples=n(80))
@given(seed=st.sampled_from(sorted(PT_SEEDS)), ops=st.lists(byte_ops, min_size=1, max_size=3))
@example(seed="legacy", ops=[("truncate", 0.5)])
@example(seed="zip", ops=[("truncate", 0.3)])
def test_damaged_pt_files(workdir, seed, ops):
    path = workdir / "concept_embeddings_llava_vqa.pt"
    path.write_bytes(M.apply(PT_SEEDS[seed], ops))
    try:
        out = load_research_concept_embeddings(path)
    except ConceptError as exc:
        assert path.name in str(exc)
        event(f"refused: {_gist(str(exc))}")
    else:
        check_embeddings(out)
        event("loaded")


@settings(FUZZ, max_examples=n(20))
@given(embeddings=st.one_of(valid_embedding_objects, embedding_objects,
                            st.tuples(st.sampled_from(sorted(PT_SEEDS)), st.lists(byte_ops, min_size=1, max_size=2))),
       head=st.one_of(st.none(), valid_heads, head_objects))
@example(embeddings={1: {"keys": torch.rand(2), "values": torch.randn(1, 1408)}},
         head={"classifier.weight": torch.randn(2, 1024), "classifier.bias": torch.randn(2)})
def test_research_folder_with_any_pt_files(lib, registry, workdir, photos, embeddings, head):
    """The same files inside a concept folder: imported whole, or refused with nothing created."""
    folder = concept_folder(workdir, photos, {"captions.json": json.dumps({"img0.jpg": ["sks on a table"]}).encode()})
    target = folder / "concept_embeddings_blip_captioning.pt"
    if isinstance(embeddings, tuple):
        target.write_bytes(M.apply(PT_SEEDS[embeddings[0]], embeddings[1]))
    else:
        torch.save(embeddings, target)
    if head is not None:
        torch.save(head, folder / "head.pt")

    def kept_as_given(concept, home: Path) -> None:  # what the library keeps reads back as what the .pt held
        kept = load_imported_embeddings(home / "research_embeddings" / (target.stem + ".safetensors"))
        given_steps = load_research_concept_embeddings(target)
        assert list(kept) == list(given_steps)
        for step, entry in given_steps.items():
            np.testing.assert_array_equal(kept[step]["values"], entry["values"])
        if head is not None:
            assert concept.head_state == "ready"

    import_or_refuse(lib, registry, folder, photos, check=kept_as_given)
    shutil.rmtree(folder)


# ----------------------------------------------------------------------------------------------------------------------
# Pickles that try to run code
# ----------------------------------------------------------------------------------------------------------------------


class Payload:
    """Unpickling runs `call(*args)`."""

    def __init__(self, call, args):
        self.call, self.args = call, args

    def __reduce__(self):
        return (self.call, self.args)


def payloads(marker: Path) -> dict[str, bytes]:
    """Pickles that create `marker` when loaded by a plain unpickler, built every way the format allows."""
    cmd = f"touch '{marker}'"
    out = {}
    for proto in range(pickle.HIGHEST_PROTOCOL + 1):
        out[f"os.system p{proto}"] = pickle.dumps(Payload(os.system, (cmd,)), protocol=proto)
        out[f"open p{proto}"] = pickle.dumps(Payload(builtins.open, (str(marker), "w")), protocol=proto)
    out["exec"] = pickle.dumps(Payload(builtins.exec, (f"open({str(marker)!r}, 'w').close()",)))
    out["eval"] = pickle.dumps(Payload(builtins.eval, (f"open({str(marker)!r}, 'w')",)))
    out["subprocess"] = pickle.dumps(Payload(subprocess.call, (["touch", str(marker)],)))
    out["nested in a state dict"] = pickle.dumps({"classifier.weight": torch.randn(2, 4), "x": [Payload(os.system, (cmd,))]})
    # hand-assembled opcodes: GLOBAL + REDUCE, INST, OBJ, STACK_GLOBAL, and BUILD through a class
    arg = cmd.encode()
    out["GLOBAL+REDUCE"] = b"cos\nsystem\n(V" + arg + b"\ntR."
    out["INST"] = b"(V" + arg + b"\nios\nsystem\n."
    out["OBJ"] = b"\x80\x02(cos\nsystem\nV" + arg + b"\no."
    out["STACK_GLOBAL"] = (b"\x80\x04\x8c\x02os\x94\x8c\x06system\x94\x93\x94\x8c" + bytes([len(arg)]) + arg
                           + b"\x94\x85\x94R\x94.")
    out["posix.system"] = b"cposix\nsystem\n(V" + arg + b"\ntR."
    out["builtins.getattr chain"] = (b"cbuiltins\ngetattr\n(cbuiltins\n__import__\n(Vos\ntRVsystem\ntR(V" + arg
                                     + b"\ntR.")
    return out


def in_torch_zip(pickled: bytes) -> bytes:
    """A torch.save zip archive whose data.pkl is `pickled` (as a tampered release would be)."""
    buf = io.BytesIO()
    torch.save({0: {"keys": torch.rand(2), "values": torch.rand(1, 8)}}, buf)
    src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = pickled if info.filename.endswith("/data.pkl") else src.read(info)
            dst.writestr(info, data)
    return out.getvalue()


@pytest.fixture(scope="module")
def marker(workdir: Path) -> Path:
    return workdir / "PWNED"


PAYLOAD_NAMES = sorted(payloads(Path("/x")))


@settings(FUZZ, max_examples=n(40))
@given(payload=st.sampled_from(PAYLOAD_NAMES), container=st.sampled_from(["raw", "torch zip"]),
       loader=st.sampled_from(["concept embeddings", "object head", "folder import"]))
def test_pickles_that_run_code_are_refused(lib, registry, workdir, photos, marker, payload, container, loader):
    pickled = payloads(marker)[payload]
    data = pickled if container == "raw" else in_torch_zip(pickled)
    assert not marker.exists()
    if loader == "folder import":
        folder = concept_folder(workdir, photos, {
            "captions.json": json.dumps({"img0.jpg": ["sks"]}).encode(),
            "concept_embeddings_blip_captioning.pt": data})
        result = import_or_refuse(lib, registry, folder, photos)
        assert isinstance(result, ConceptError)
        message = str(result)
    else:
        path = workdir / ("concept_embeddings_x_y.pt" if loader == "concept embeddings" else "head.pt")
        path.write_bytes(data)
        load = load_research_concept_embeddings if loader == "concept embeddings" else load_research_object_head
        with pytest.raises(ConceptError) as info:
            load(path)
        message = str(info.value)
    assert not marker.exists(), f"{payload} ran"
    assert "refused" in message or "cannot be read as a PyTorch tensor file" in message, message


def test_payloads_are_real(workdir):
    """The payloads above do run under a plain unpickler (so their refusal means something)."""
    live = workdir / "live-marker"
    for name, data in payloads(live).items():
        try:
            obj = pickle.loads(data)
        except TypeError:
            obj = None
        if hasattr(obj, "close"):
            obj.close()
        assert live.exists(), name
        live.unlink()


# ----------------------------------------------------------------------------------------------------------------------
# The library's own safetensors files
# ----------------------------------------------------------------------------------------------------------------------

CHECKPOINT = VLM_SPECS["blip2"].checkpoint


def good_embedding(cid: int, d: int = 32) -> ConceptEmbedding:
    rng = np.random.default_rng(cid)
    v = rng.normal(size=(1, d)).astype(np.float32)
    return ConceptEmbedding(cid, CHECKPOINT, "blip2", "caption", "sks", v, rng.random((2, 4)).astype(np.float32),
                            step=10, steps_total=10, history={5: v * 0.5, 10: v},
                            adam={"exp_avg": v * 0.1, "exp_avg_sq": v * v}, adam_step=10, settings={"lr": 0.1})


def safetensors_file(header: dict, body: bytes, length: int | None = None) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + body


st_dtypes = st.sampled_from(["F32", "F32", "F16", "BF16", "F64", "I64", "BOOL", "U8", "F8_E4M3", "X9", ""])
st_shapes = st.one_of(st.sampled_from([[1, 32], [1, 32], [32], [2, 32], [1, 0], [], [1, 2, 32]]),
                      st.lists(st.integers(0, 2**40), max_size=3))
st_offsets = st.one_of(st.just(None), st.tuples(st.integers(0, 256), st.integers(0, 2**40)).map(list))
st_meta = st.dictionaries(st.sampled_from(["format", "concept_id", "checkpoint", "family", "task", "step",
                                           "steps_total", "adam_step", "settings", "source", "identifier"]),
                          st.one_of(st.text(max_size=12), st.sampled_from(["1", "-5", "1e9", "[]", "{}", "null",
                                                                           "myvlm-concept-embedding/1"])),
                          max_size=11)
st_headers = st.builds(
    lambda names, dtype, shape, offsets, meta: {
        **{name: {"dtype": dtype, "shape": shape, "data_offsets": offsets} for name in names},
        "__metadata__": meta},
    st.lists(st.sampled_from(["values", "keys", "history.10", "adam.exp_avg", "history.x", "other"]), max_size=4,
             unique=True),
    st_dtypes, st_shapes, st_offsets, st_meta)


@pytest.fixture(scope="module")
def store(workdir: Path) -> EmbeddingStore:
    return EmbeddingStore(workdir / "concepts")


@pytest.fixture(scope="module")
def good_file(store: EmbeddingStore) -> bytes:
    return store.save(good_embedding(1)).read_bytes()


def check_store(store: EmbeddingStore) -> None:
    """Concept 1's file may be anything now; concept 2's stays usable, and nothing raises."""
    emb = store.load(1, CHECKPOINT, "caption")
    if emb is not None:
        assert emb.values.shape[0] == 1 and np.isfinite(emb.values).all() and emb.values.dtype == np.float32
    found = store.for_checkpoint(CHECKPOINT, "caption", [1, 2])
    assert 2 in found and set(found) <= {1, 2}
    np.testing.assert_array_equal(found[2].values, good_embedding(2).values)
    store.other_checkpoints(1)
    try:
        store.read(store.path(1, CHECKPOINT, "caption"))
    except EmbeddingFileError as exc:
        assert "is damaged and was not used" in str(exc)


@settings(FUZZ, max_examples=n(60))
@given(how=st.one_of(
    st.tuples(st.just("mutate"), st.lists(byte_ops, min_size=1, max_size=3)),
    st.tuples(st.just("header"), st_headers, st.binary(max_size=64), st.one_of(st.none(), st.sampled_from(
        [0, 7, 2**63, 2**64 - 1, 100_000_000])))))
@example(how=("mutate", [("truncate", 0.5)]))
@example(how=("header", {"values": {"dtype": "F32", "shape": [1, 2**40], "data_offsets": [0, 2**42]},
                         "__metadata__": {}}, b"", None))
def test_damaged_embedding_files_are_ignored_not_fatal(store, good_file, how):
    store.save(good_embedding(2))
    path = store.path(1, CHECKPOINT, "caption")
    if how[0] == "mutate":
        path.write_bytes(M.apply(good_file, how[1]))
    else:
        _, header, body, length = how
        path.write_bytes(safetensors_file(header, body, length))
    event("damaged file ignored" if store.load(1, CHECKPOINT, "caption") is None else "still usable")
    check_store(store)
    # teaching the concept again rewrites the file, and it is used again
    store.save(good_embedding(1))
    assert store.load(1, CHECKPOINT, "caption") is not None


def test_damaged_embedding_values(store):
    """Well-formed files whose numbers are unusable: NaN, a wrong shape, history of another size."""
    cases = {"nan": lambda e: e.values.__setitem__((0, 3), np.nan),
             "history": lambda e: e.history.__setitem__(7, np.zeros((1, 5), np.float32)),
             "adam nan": lambda e: e.adam.__setitem__("exp_avg", np.full((1, 32), np.inf, np.float32))}
    store.save(good_embedding(2))
    for label, spoil in cases.items():
        emb = good_embedding(1)
        spoil(emb)
        path = store.save(emb)
        with pytest.raises(EmbeddingFileError, match="is damaged and was not used"):
            store.read(path)
        assert store.load(1, CHECKPOINT, "caption") is None, label
        check_store(store)


@settings(FUZZ, max_examples=n(25))
@given(how=st.one_of(st.tuples(st.just("mutate"), st.lists(byte_ops, min_size=1, max_size=3)),
                     st.tuples(st.just("header"), st_headers, st.binary(max_size=64), st.none())))
def test_damaged_imported_embeddings(store, workdir, how):
    """The safetensors copy a research import keeps: damaged, it is a ConceptError, and the store skips it."""
    from engine.domain.concepts.research import _save_embeddings

    folder = store.root / "3" / "research_embeddings"
    path = folder / "concept_embeddings_blip2_captioning.safetensors"
    rng = np.random.default_rng(0)
    _save_embeddings(path, {5: {"keys": rng.random((1, 2)).astype(np.float32),
                                "values": rng.normal(size=(1, 1408)).astype(np.float32)}}, "fuzz")
    good = path.read_bytes()
    assert store.load(3, CHECKPOINT, "caption") is not None
    if how[0] == "mutate":
        path.write_bytes(M.apply(good, how[1]))
    else:
        path.write_bytes(safetensors_file(how[1], how[2]))
    try:
        steps_out = load_imported_embeddings(path)
    except ConceptError as exc:
        assert path.name in str(exc)
        assert store.load(3, CHECKPOINT, "caption") is None
        event(f"refused: {_gist(str(exc))}")
    else:
        event("still readable")
        assert all(set(e) == {"keys", "values"} and e["values"].ndim == 2 for e in steps_out.values())
        emb = store.load(3, CHECKPOINT, "caption")
        assert emb is None or np.isfinite(emb.values).all()


def test_library_still_works_after_fuzzing(lib, registry, workdir, photos, marker):
    assert not marker.exists()
    assert registry.list() == []
    assert_library_works(lib, registry)
    folder = concept_folder(workdir, photos, {"captions.json": json.dumps(
        {"img0.jpg": ["sks on a table"], "img1.jpg": ["a close-up of sks"]}).encode()})
    concept = import_research_concept(registry, folder)
    assert concept.identifier == "sks" and len(registry.examples(concept.id)) == 3
