"""Import and export of the MyVLM research formats: concept folders, released object heads, concept embeddings; and
the refusal of .pt files that would run code."""

from __future__ import annotations

import builtins
import json
import os
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.domain.concepts.face_head import REFERENCES
from engine.domain.concepts.registry import OBJECT, PERSON, ConceptError, ConceptRegistry
from engine.domain.concepts.research import (
    RESEARCH_EMBEDDINGS_DIR,
    VQA_FILE,
    export_research_concept_embeddings,
    import_research_concept,
    load_imported_embeddings,
    load_research_concept_embeddings,
    load_research_object_head,
    object_head_p,
    research_embeddings_filename,
)

from .helpers import album_snapshot, write_jpeg

DFN5B = "DFN5B-CLIP-ViT-H-14-378/dfn5b"


def research_folder(root: Path, name: str = "my_mug", n: int = 4, head: bool = True) -> Path:
    """A concept folder as the paper's data and code lay it out."""
    folder = root / name
    for i in range(n):
        write_jpeg(folder / f"img{i}.jpg", seed=i)
    (folder / "captions.json").write_text(json.dumps(
        {f"img{i}.jpg": [f"sks on a table, photo {i}", "a close-up of sks"] for i in range(n)}))
    (folder / "captions_augmented.json").write_text(json.dumps(
        {"img0.jpg": ["a close-up of sks", "sks next to a laptop"]}))
    (folder / VQA_FILE).write_text(json.dumps(
        {"img0.jpg": [["What colour is sks?", "sks is red."], ["Where is sks?", "On a desk."]]}))
    if head:
        torch.manual_seed(0)
        torch.save({"classifier.weight": torch.randn(2, 1024), "classifier.bias": torch.randn(2)}, folder / "head.pt")
    torch.save({0: {"keys": torch.rand(1, 2), "values": torch.randn(1, 1408)},
                25: {"keys": torch.rand(1, 2), "values": torch.randn(1, 1408)}},
               folder / research_embeddings_filename("blip", "captioning"))
    return folder


def test_import_research_concept_folder(library, tmp_path: Path):
    folder = research_folder(tmp_path / "data")
    before = album_snapshot(folder)
    registry = ConceptRegistry(library.catalog)
    concept = import_research_concept(registry, folder)
    assert album_snapshot(folder) == before  # the source is only read
    assert (concept.kind, concept.name, concept.identifier, concept.person_id) == (OBJECT, "my mug", "sks", None)

    examples = registry.examples(concept.id)
    assert len(examples) == 4 and all(e["photo_id"] is None for e in examples)
    images = registry.folder(concept.id) / "images"
    for e in examples:
        path = Path(e["path"])
        assert path.parent == images and path.read_bytes() == (folder / path.name).read_bytes()
    caps = {Path(e["path"]).name: json.loads(e["captions"]) for e in examples}
    assert caps["img0.jpg"] == ["sks on a table, photo 0", "a close-up of sks", "sks next to a laptop"]  # merged
    assert caps["img3.jpg"] == ["sks on a table, photo 3", "a close-up of sks"]
    vqa = json.loads((registry.folder(concept.id) / VQA_FILE).read_text())
    assert vqa == {"img0.jpg": [["What colour is sks?", "sks is red."], ["Where is sks?", "On a desk."]]}

    # the released head: stored as safetensors, in DFN5B's CLIP space, p >= 0.5
    assert concept.head_state == "ready" and concept.head_space == DFN5B and concept.threshold == 0.5
    head = registry.head(concept.id)
    src = torch.load(folder / "head.pt", weights_only=True)
    assert head is not None and head.kind == OBJECT and head.space == DFN5B
    np.testing.assert_array_equal(head.tensors["classifier.weight"], src["classifier.weight"].numpy())
    np.testing.assert_array_equal(head.tensors["classifier.bias"], src["classifier.bias"].numpy())
    feats = np.random.default_rng(0).normal(size=(3, 1024)).astype(np.float32)
    expected = torch.softmax(torch.from_numpy(feats) @ src["classifier.weight"].T + src["classifier.bias"], 1)[:, 1]
    np.testing.assert_allclose(object_head_p(head.tensors, feats), expected.numpy(), rtol=1e-5)

    # the concept embeddings are kept, as safetensors
    kept = load_imported_embeddings(registry.folder(concept.id) / RESEARCH_EMBEDDINGS_DIR /
                                    "concept_embeddings_blip_captioning.safetensors")
    assert sorted(kept) == [0, 25] and kept[25]["values"].shape == (1, 1408)
    assert not list(registry.folder(concept.id).rglob("*.pt"))  # no pickle is stored in the library

    # a second concept that also says "sks": gets a free identifier, its captions and VQA answers follow
    other = import_research_concept(registry, research_folder(tmp_path / "more", "teddy", n=2, head=False))
    assert other.identifier not in ("sks",) and other.head_state == "untrained"
    caps = [c for e in registry.examples(other.id) for c in json.loads(e["captions"])]
    assert all(other.identifier in c and "sks" not in c for c in caps)
    vqa = json.loads((registry.folder(other.id) / VQA_FILE).read_text())
    assert vqa["img0.jpg"][0] == [f"What colour is {other.identifier}?", f"{other.identifier} is red."]


def test_import_refuses_broken_folders_and_creates_nothing(library, tmp_path: Path):
    registry = ConceptRegistry(library.catalog)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConceptError, match="not a MyVLM concept folder"):
        import_research_concept(registry, empty)
    with pytest.raises(ConceptError, match="not a folder"):
        import_research_concept(registry, tmp_path / "nowhere")

    folder = research_folder(tmp_path / "a", "missing_image")
    (folder / "img1.jpg").unlink()
    with pytest.raises(ConceptError, match="img1.jpg named in the captions is not in"):
        import_research_concept(registry, folder)

    folder = research_folder(tmp_path / "b", "bad_json")
    (folder / "captions.json").write_text("{not json")
    with pytest.raises(ConceptError, match="captions.json is not readable JSON"):
        import_research_concept(registry, folder)

    folder = research_folder(tmp_path / "c", "small_head", head=False)
    torch.save({"classifier.weight": torch.randn(2, 512), "classifier.bias": torch.randn(2)}, folder / "h.pth")
    with pytest.raises(ConceptError, match="1024-d"):
        import_research_concept(registry, folder)

    folder = research_folder(tmp_path / "d", "not_an_image")
    (folder / "img2.jpg").write_bytes(b"this is text")
    with pytest.raises(ConceptError, match="img2.jpg is not a readable image"):
        import_research_concept(registry, folder)

    assert registry.list() == [] and not any(registry.root.iterdir())


def test_object_head_loads_and_validates(tmp_path: Path):
    good = tmp_path / "good.pt"
    torch.save({"classifier.weight": torch.randn(2, 1024), "classifier.bias": torch.randn(2)}, good)
    head = load_research_object_head(good)
    assert head["classifier.weight"].shape == (2, 1024) and head["classifier.bias"].shape == (2,)
    assert head["classifier.weight"].dtype == np.float32

    # the same head as saved by other code: a module prefix, a nested state_dict, a bare nn.Linear, half precision
    lin = torch.nn.Linear(1024, 2)
    variants = {
        "prefixed.pt": {f"module.{k}": v for k, v in {"classifier.weight": lin.weight, "classifier.bias": lin.bias}.items()},
        "nested.pt": {"state_dict": {"classifier.weight": lin.weight.data, "classifier.bias": lin.bias.data}},
        "linear.pth": lin.state_dict(),
        "half.pt": {"classifier.weight": lin.weight.data.half(), "classifier.bias": lin.bias.data.half()},
    }
    for fname, obj in variants.items():
        torch.save(obj, tmp_path / fname)
        got = load_research_object_head(tmp_path / fname)
        np.testing.assert_allclose(got["classifier.weight"], lin.weight.detach().numpy(), atol=1e-3, err_msg=fname)

    bad = {
        "three_classes.pt": ({"classifier.weight": torch.randn(3, 1024), "classifier.bias": torch.randn(3)},
                             r"classifier.weight has shape \(3, 1024\), expected \(2, D\)"),
        "bias.pt": ({"classifier.weight": torch.randn(2, 1024), "classifier.bias": torch.randn(2, 1)},
                    r"classifier.bias has shape \(2, 1\), expected \(2,\)"),
        "flat.pt": ({"classifier.weight": torch.randn(2048), "classifier.bias": torch.randn(2)}, r"expected \(2, D\)"),
        "keys.pt": ({"fc.weight": torch.randn(2, 1024)}, "needs 'classifier.weight' and 'classifier.bias'"),
        "ints.pt": ({"classifier.weight": torch.ones(2, 4, dtype=torch.int64), "classifier.bias": torch.ones(2)},
                    "not a floating-point type"),
        "nan.pt": ({"classifier.weight": torch.full((2, 4), float("nan")), "classifier.bias": torch.ones(2)},
                   "NaN"),
        "list.pt": ([1, 2, 3], "not an object head"),
    }
    for fname, (obj, message) in bad.items():
        torch.save(obj, tmp_path / fname)
        with pytest.raises(ConceptError, match=message):
            load_research_object_head(tmp_path / fname)
    (tmp_path / "garbage.pt").write_bytes(b"\x00" * 100)  # not a pickle of tensors either: refused
    with pytest.raises(ConceptError, match="garbage.pt is not a plain tensor file; refused"):
        load_research_object_head(tmp_path / "garbage.pt")
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[:300])  # a truncated download
    with pytest.raises(ConceptError, match="cut.pt cannot be read as a PyTorch tensor file"):
        load_research_object_head(tmp_path / "cut.pt")
    with pytest.raises(ConceptError, match="does not exist"):
        load_research_object_head(tmp_path / "absent.pt")


class _System:
    """Unpickling this runs a shell command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


class _Open:
    """Unpickling this creates a file (builtins.open in write mode)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (builtins.open, (str(self.marker), "w"))


def test_malicious_pt_is_refused_without_running_it(library, tmp_path: Path):
    marker = tmp_path / "pwned"
    files = {}
    # a raw pickle, as the legacy .pt format; and the zip format torch.save writes, with the payload inside a
    # state dict that otherwise looks right
    with open(tmp_path / "raw.pt", "wb") as fh:
        pickle.dump(_System(marker), fh)
    files["raw"] = tmp_path / "raw.pt"
    torch.save({"classifier.weight": torch.randn(2, 1024), "classifier.bias": torch.randn(2),
                "extra": _System(marker)}, tmp_path / "zip.pt")
    files["zip"] = tmp_path / "zip.pt"
    torch.save({"classifier.weight": _Open(marker), "classifier.bias": torch.randn(2)}, tmp_path / "open.pt")
    files["open"] = tmp_path / "open.pt"
    torch.save({0: {"keys": torch.rand(2), "values": _System(marker)}}, tmp_path / "concept_embeddings_x_y.pt")
    assert not marker.exists()  # saving did not run the payloads either
    live = tmp_path / "live"
    pickle.loads(pickle.dumps(_Open(live))).close()  # the payloads are real: a plain unpickle runs them
    pickle.loads(pickle.dumps(_System(tmp_path / "live2")))
    assert live.exists() and (tmp_path / "live2").exists()

    for kind, path in files.items():
        with pytest.raises(ConceptError, match="not a plain tensor file; refused"):
            load_research_object_head(path)
        assert not marker.exists(), f"{kind}: the payload ran"
    with pytest.raises(ConceptError, match="not a plain tensor file; refused"):
        load_research_concept_embeddings(tmp_path / "concept_embeddings_x_y.pt")

    # inside a concept folder: the import is refused and nothing is created
    registry = ConceptRegistry(library.catalog)
    folder = research_folder(tmp_path / "data", head=False)
    shutil.copy(files["zip"], folder / "head.pt")
    with pytest.raises(ConceptError, match="not a plain tensor file; refused"):
        import_research_concept(registry, folder)
    assert not marker.exists() and registry.list() == []


def test_concept_embeddings_round_trip(tmp_path: Path):
    rng = np.random.default_rng(3)
    steps = {s: {"keys": rng.normal(size=(4, 512)).astype(np.float32),
                 "values": rng.normal(size=(1, 4096)).astype(np.float32)} for s in (25, 50, 75, 100)}
    path = export_research_concept_embeddings(tmp_path / research_embeddings_filename("llava", "captioning"), steps)
    assert path.name == "concept_embeddings_llava_captioning.pt"
    # readable by the reference code's plain torch.load, in its format
    raw = torch.load(path, weights_only=True)
    assert sorted(raw) == [25, 50, 75, 100] and raw[25]["values"].shape == (1, 4096)
    back = load_research_concept_embeddings(path)
    assert sorted(back) == [25, 50, 75, 100]
    for s in steps:
        np.testing.assert_array_equal(back[s]["keys"], steps[s]["keys"])
        np.testing.assert_array_equal(back[s]["values"], steps[s]["values"])
    # a 1-d value is one row; string steps are read as numbers
    torch.save({"iteration_10": {"keys": torch.rand(2), "values": torch.rand(8)}}, tmp_path / "c.pt")
    assert load_research_concept_embeddings(tmp_path / "c.pt")[10]["values"].shape == (1, 8)

    for obj, message in (({25: {"keys": torch.rand(2)}}, "needs 'keys' and 'values'"),
                         ({"last": {"keys": torch.rand(2), "values": torch.rand(1, 8)}}, "not a training step"),
                         ({1: {"keys": torch.rand(2), "values": torch.rand(1, 2, 8)}}, r"expected \(1, D\)"),
                         ({1: {"keys": torch.rand(2), "values": torch.rand(1, 8)},
                           2: {"keys": torch.rand(2), "values": torch.rand(1, 9)}}, "differ in size"),
                         ({}, "not concept embeddings")):
        torch.save(obj, tmp_path / "bad.pt")
        with pytest.raises(ConceptError, match=message):
            load_research_concept_embeddings(tmp_path / "bad.pt")
    with pytest.raises(ConceptError, match="no concept embeddings"):
        export_research_concept_embeddings(tmp_path / "none.pt", {})


def test_import_person_folder_builds_a_face_head(library, test_data: Path, tmp_path: Path):
    """A person concept from a research folder: one reference per image; the two-person image keeps Obama's face."""
    from PIL import Image

    from engine.models.faces.dlib_backend import DlibBackend

    from .test_face_head import side_by_side

    folder = tmp_path / "Barack_Obama"
    folder.mkdir()
    fr = test_data / "face_recognition"
    shutil.copy(fr / "obama.jpg", folder / "a.jpg")
    shutil.copy(fr / "obama3.jpg", folder / "b.jpg")
    side_by_side(fr / "biden.jpg", fr / "obama2.jpg").save(folder / "c.jpg", quality=92)
    Image.new("RGB", (64, 64), (200, 180, 160)).save(folder / "d.png")  # no face at all
    (folder / "captions.json").write_text(json.dumps({
        "a.jpg": ["Barack Obama smiling in a suit"], "b.jpg": ["Barack Obama at a podium"],
        "c.jpg": ["Barack Obama next to another man"]}))
    registry = ConceptRegistry(library.catalog)
    backend = DlibBackend()
    concept = import_research_concept(registry, folder, kind=PERSON, face_backend=backend)
    assert (concept.kind, concept.name, concept.identifier) == (PERSON, "Barack Obama", "Barack Obama")
    assert concept.head_state == "ready" and concept.head_space == backend.key
    assert concept.metrics["faces_per_image"] == [1, 1, 2, 0] and concept.metrics["kept_face_index"][3] is None
    head = registry.head(concept.id)
    refs = head.tensors[REFERENCES]
    assert refs.shape == (3, 128)
    # the kept face of the two-person image is Obama's (close to the other references), not Biden's
    d = 1 - refs @ refs.T
    assert d[2, :2].min() < backend.thresholds.concept_distance
    caps = {Path(e["path"]).name: e["captions"] for e in registry.examples(concept.id)}
    assert caps["d.png"] is None and json.loads(caps["a.jpg"]) == ["Barack Obama smiling in a suit"]


def test_research_embedding_names_in_every_spelling_the_reference_writes():
    from enum import Enum

    from engine.domain.concepts.research import parse_research_embeddings_name as parse

    class VLMType(str, Enum):  # noqa: UP042 - as the reference writes it (a StrEnum formats differently)
        # the reference code's enums: its file names are f"{vlm_type}_{task}"
        BLIP2 = "blip-2"
        LLAVA = "llava"
        MINIGPT_V2 = "minigpt-v2"

    class PersonalizationTask(str, Enum):  # noqa: UP042
        CAPTIONING = "captioning"
        VQA = "vqa"

    # whatever this Python's Enum formatting makes of them ("blip-2" up to 3.10, "VLMType.BLIP2" from 3.11)
    assert parse(f"concept_embeddings_{VLMType.BLIP2}_{PersonalizationTask.CAPTIONING}.pt") == ("blip2", "caption")
    assert parse(f"concept_embeddings_{VLMType.LLAVA}_{PersonalizationTask.VQA}.pt") == ("llava", "vqa")
    assert parse(f"concept_embeddings_{VLMType.MINIGPT_V2}_{PersonalizationTask.CAPTIONING}.pt")[0] == "minigpt-v2"
    for name, found in [("concept_embeddings_blip-2_captioning.pt", ("blip2", "caption")),
                        ("concept_embeddings_VLMType.BLIP2_PersonalizationTask.CAPTIONING.pt", ("blip2", "caption")),
                        ("concept_embeddings_BLIP2_CAPTIONING.pt", ("blip2", "caption")),
                        ("concept_embeddings_MINIGPT_V2_CAPTIONING.safetensors", ("minigpt-v2", "caption")),
                        ("concept_embeddings_smolvlm_captioning.pt", ("smolvlm", "caption")),
                        ("concept_embeddings_llava-onevision_vqa.pt", ("llava-onevision", "vqa")),
                        ("concept_embeddings_qwen2-vl_captioning.pt", ("qwen2-vl", "caption")),
                        ("concept_embeddings_qwen2.5-vl_captioning.pt", ("qwen2-vl", "caption")),
                        ("concept_embeddings_gpt4v_captioning.pt", ("gpt4v", "caption")),
                        ("concept_embeddings_llava.pt", None), ("concept_embeddings_llava_dance.pt", None),
                        ("head.pt", None)]:
        assert parse(name) == found, name


def _embeddings_folder(root: Path, name: str, file: str, dim: int, seed: int = 0) -> tuple[Path, np.ndarray]:
    folder = research_folder(root, name, n=2, head=False)
    (folder / research_embeddings_filename("blip", "captioning")).unlink()
    values = np.random.default_rng(seed).standard_normal((1, dim)).astype(np.float32)
    export_research_concept_embeddings(folder / file, {30: {"keys": np.ones((1, 1), np.float32), "values": values}})
    return folder, values


def test_research_embeddings_of_every_family_import_for_their_checkpoints_and_export_again(library, tmp_path: Path):
    from engine.domain.personalize.embeddings import EmbeddingStore
    from engine.models.vlm.specs import CONCEPT_DIM, VLM_SPECS

    registry = ConceptRegistry(library.catalog)
    store = EmbeddingStore(library.catalog.paths.concepts)
    # (the VLM, the file's family name, the checkpoints of that family that must not take it)
    cases = [("blip2", "blip-2", ["blip2-opt", "tiny-blip2"]), ("llava", "llava", ["tiny-llava"]),
             ("smolvlm-256m", "smolvlm", ["smolvlm-500m", "tiny-smolvlm"]),
             ("smolvlm-500m", "smolvlm", ["smolvlm-256m"]), ("llava-ov-0.5b", "llava-onevision", ["tiny-llava-ov"]),
             ("qwen2-vl-2b", "qwen2-vl", ["tiny-qwen2-vl", "qwen2.5-vl-3b"]),
             ("qwen2.5-vl-3b", "qwen2-vl", ["qwen2-vl-2b"]), ("tiny-qwen2-vl", "qwen2-vl", ["qwen2-vl-2b"]),
             ("tiny-smolvlm", "smolvlm", ["smolvlm-256m"]), ("tiny-llava-ov", "llava-onevision", ["llava-ov-0.5b"])]
    for i, (key, family_name, others) in enumerate(cases):
        spec = VLM_SPECS[key]
        folder, values = _embeddings_folder(tmp_path / key, f"thing{i}", research_embeddings_filename(
            family_name, "captioning"), CONCEPT_DIM[key], seed=i)
        concept = import_research_concept(registry, folder)
        emb = store.load(concept.id, spec.checkpoint, "caption")
        assert emb is not None and emb.source == "research-import" and emb.family == spec.family, key
        assert emb.step == 30 and np.array_equal(emb.values, values)
        assert store.load(concept.id, spec.checkpoint, "vqa") is None
        for other in others:
            assert store.load(concept.id, VLM_SPECS[other].checkpoint, "caption") is None, (key, other)
        out = store.export_research(concept.id, spec.checkpoint, "caption", tmp_path / "out" / key, spec.family)
        assert out.name == f"concept_embeddings_{spec.family}_captioning.pt"
        again = load_research_concept_embeddings(out)
        assert sorted(again) == [30] and np.array_equal(again[30]["values"], values)


def test_research_embeddings_of_another_family_or_width_are_refused_with_the_reason(library, tmp_path: Path):
    registry = ConceptRegistry(library.catalog)
    for file, dim, message in [
            ("concept_embeddings_gpt4v_captioning.pt", 1024,
             "holds concept embeddings of a 'gpt4v' VLM, which this app does not have"),
            ("concept_embeddings_qwen2-vl_captioning.pt", 512,
             "holds 512-d concept embeddings, but qwen2-vl's are 1536-d for qwen2-vl-2b, 2048-d for qwen2.5-vl-3b, "
             "64-d for tiny-qwen2-vl, 128-d for tiny-qwen2.5-vl"),
            ("concept_embeddings_VLMType.BLIP2_PersonalizationTask.CAPTIONING.pt", 4096,
             "holds 4096-d concept embeddings, but blip2's are 1408-d for blip2: it was trained on another "
             "model"),
            ("concept_embeddings_smolvlm_dance.pt", 576, "is not named concept_embeddings_<vlm>_<task>.pt")]:
        folder, _ = _embeddings_folder(tmp_path / file, "thing", file, dim)
        with pytest.raises(ConceptError, match=re.escape(message)):
            import_research_concept(registry, folder)
    assert registry.list() == []
