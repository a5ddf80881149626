"""Import and export in the MyVLM research formats (docs/method.md §14), so the paper's data and releases can be used.

  * A concept folder `<root>/<concept>/`: the concept's images, `captions.json` and/or `captions_augmented.json`
    (`{"img1.jpg": ["caption 1", ...]}`), optionally `additional_llava_vqa_data.json` (`{"img1.jpg": [["question",
    "answer"], ...]}`), optionally a released object head (a .pt/.pth state dict) and concept embeddings
    (`concept_embeddings_<vlm>_<task>.pt`). `import_research_concept` turns it into a concept of the library.
  * An object head: a state dict with `classifier.weight` (2, D) and `classifier.bias` (2,): `load_research_object_head`.
  * Concept embeddings: `{step: {"keys": Tensor, "values": Tensor(1, D)}}`: `load_research_concept_embeddings` and
    `export_research_concept_embeddings`.

Safety: a .pt file is a pickle, and unpickling can run any code. Every .pt is read with
`torch.load(..., map_location="cpu", weights_only=True)`, whose unpickler only builds tensors and plain containers and
refuses anything else (a class, a function, `os.system`) before calling it; such files are refused with a
ConceptError. Nothing from a .pt is stored as a pickle: the library keeps safetensors only.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from engine.domain.concepts.registry import OBJECT, OBJECT_TOKENS, PERSON, Concept, ConceptError, ConceptRegistry, Head

log = logging.getLogger(__name__)

CAPTION_FILES = ("captions.json", "captions_augmented.json")  # read in this order, captions merged per image
VQA_FILE = "additional_llava_vqa_data.json"  # kept under this name in the concept's folder
IMAGES_DIR = "images"  # concepts/<id>/images/: the imported images
RESEARCH_EMBEDDINGS_DIR = "research_embeddings"  # concepts/<id>/research_embeddings/<stem>.safetensors
EMBEDDINGS_PREFIX = "concept_embeddings_"
HEAD_SUFFIXES = (".pt", ".pth")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
MAX_JSON_BYTES = 32 << 20  # the paper's caption files are kilobytes
CHECK_SIDE = 256  # images are checked by decoding them this small (JPEG: at reduced scale)
OBJECT_THRESHOLD = 0.5  # the paper's object head fires at softmax p(concept) >= 0.5 (concept = class 1)
WEIGHT, BIAS = "classifier.weight", "classifier.bias"


def research_head_space(dim: int) -> str | None:
    """The embedding space a released object head of input size `dim` reads, when known.

    The paper's object heads are trained on open_clip `apple/DFN5B-CLIP-ViT-H-14-378` image features (1024-d,
    L2-normalised): a 1024-d head is recorded as that CLIP space ("DFN5B-CLIP-ViT-H-14-378/dfn5b", the key of
    engine.models.clip.ClipEncoder for that model) and only works on photos embedded by that model. Other sizes: unknown.
    """
    from engine.models.clip import CLIP_MODELS

    spec = CLIP_MODELS["DFN5B-CLIP-ViT-H-14-378"]
    return f"{spec.name}/{spec.tag}" if dim == spec.dim else None


# ----------------------------------------------------------------------------------------------------------------------
# .pt files
# ----------------------------------------------------------------------------------------------------------------------


def _torch_load(path: Path, what: str) -> Any:
    """torch.load with weights_only=True; every failure becomes a ConceptError saying what is wrong."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise ConceptError(f"{what} {path} does not exist")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "Detected pickle protocol 4": the refusal says enough
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # The weights-only unpickler stopped at something that is not a tensor or a plain container (a class, a
        # function such as os.system, an unknown opcode) before calling anything.
        lines = [ln.strip() for ln in str(exc).splitlines()]
        detail = next((ln for ln in lines if "GLOBAL" in ln or ln.startswith("Unsupported")), "")
        raise ConceptError(
            f"{path.name} is not a plain tensor file; refused: only files of tensors and plain containers are "
            f"loaded, never ones that build Python objects or run code (a pickle can)"
            + (f" [{detail}]" if detail else "")) from None
    except Exception as exc:  # noqa: BLE001 - a damaged file fails anywhere in torch: struct.error, AssertionError ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "no detail"
        raise ConceptError(f"{path.name} cannot be read as a PyTorch tensor file ({type(exc).__name__}: {first})"
                           ) from None


def _to_numpy(value: Any, name: str, source: str) -> np.ndarray:
    import torch

    if not isinstance(value, torch.Tensor):
        raise ConceptError(f"{source}: {name} is a {type(value).__name__}, not a tensor")
    if value.is_nested or value.layout != torch.strided or value.is_meta:
        kind = "nested" if value.is_nested else "data-less (meta)" if value.is_meta else str(value.layout)
        raise ConceptError(f"{source}: {name} is a {kind} tensor, not a plain dense one")
    if not value.is_floating_point():
        raise ConceptError(f"{source}: {name} has dtype {value.dtype}, not a floating-point type")
    try:
        arr = value.detach().to(torch.float32).cpu().numpy().copy()
    except (RuntimeError, TypeError, NotImplementedError, ValueError) as exc:
        raise ConceptError(f"{source}: {name} cannot be read as numbers ({type(exc).__name__}: {exc})") from None
    if not np.isfinite(arr).all():
        raise ConceptError(f"{source}: {name} holds NaN or infinite values")
    return arr


def _find_head_state(obj: Any) -> Mapping[str, Any] | None:
    """The (weight, bias) state dict inside what a .pt held: {classifier.weight, classifier.bias}, the same under a
    prefix ("module.", "head.") or one level down ({"state_dict": {...}}), or an nn.Linear's {weight, bias}."""
    if not isinstance(obj, Mapping):
        return None
    keys = [k for k in obj if isinstance(k, str)]
    if WEIGHT in obj and BIAS in obj:
        return {WEIGHT: obj[WEIGHT], BIAS: obj[BIAS]}
    prefixed = [k[: -len(WEIGHT)] for k in keys if k.endswith("." + WEIGHT)]
    if len(prefixed) == 1 and prefixed[0] + BIAS in obj:
        return {WEIGHT: obj[prefixed[0] + WEIGHT], BIAS: obj[prefixed[0] + BIAS]}
    if set(keys) == {"weight", "bias"}:
        return {WEIGHT: obj["weight"], BIAS: obj["bias"]}
    for k in ("state_dict", "model", "head", "classifier"):
        if isinstance(obj.get(k), Mapping):
            found = _find_head_state(obj[k])
            if found is not None:
                return found
    return None


def load_research_object_head(path: str | Path) -> dict[str, np.ndarray]:
    """A released MyVLM object head -> {"classifier.weight": (2, D), "classifier.bias": (2,)} float32.

    Read with torch.load(weights_only=True) (a file that would build objects or run code is refused, see the
    module's docstring). Checks keys, shapes (2, D) and (2,), floating-point and finite values; ConceptError with
    the reason otherwise. Class 1 is the concept: p(concept) = softmax(features @ W.T + b)[1] (registry.softmax_p1),
    on L2-normalised CLIP image features of the space `research_head_space(D)` names.
    """
    path = Path(path)
    obj = _torch_load(path, "object head")
    state = _find_head_state(obj)
    if state is None:
        have = sorted(map(str, obj))[:8] if isinstance(obj, Mapping) else type(obj).__name__
        raise ConceptError(f"{path.name} is not an object head: it needs '{WEIGHT}' and '{BIAS}' (found {have})")
    w = _to_numpy(state[WEIGHT], WEIGHT, path.name)
    b = _to_numpy(state[BIAS], BIAS, path.name)
    if w.ndim != 2 or w.shape[0] != 2 or w.shape[1] < 1:
        raise ConceptError(f"{path.name}: {WEIGHT} has shape {tuple(w.shape)}, expected (2, D): a head has two "
                           f"classes (not the concept, the concept)")
    if b.shape != (2,):
        raise ConceptError(f"{path.name}: {BIAS} has shape {tuple(b.shape)}, expected (2,)")
    return {WEIGHT: w, BIAS: b}


def load_research_concept_embeddings(path: str | Path) -> dict[int, dict[str, np.ndarray]]:
    """`concept_embeddings_<vlm>_<task>.pt` -> {step: {"keys": array, "values": (n, D) array}}, float32.

    Format (the reference code's checkpoints): {step: {"keys": Tensor, "values": Tensor(1, D)}}; `keys` are what
    the concept was recognised by (a person's reference face embeddings, an object head's scores), `values` the
    concept embedding (one row per concept token; a 1-d value is read as one row). Steps may be ints or digit
    strings ("iteration_25" too). Read with weights_only=True; ConceptError for anything else.
    """
    path = Path(path)
    obj = _torch_load(path, "concept embeddings")
    if not isinstance(obj, Mapping) or not obj:
        raise ConceptError(f"{path.name} is not concept embeddings: expected {{step: {{'keys', 'values'}}}}, got "
                           f"{type(obj).__name__}{' (empty)' if isinstance(obj, Mapping) else ''}")
    out: dict[int, dict[str, np.ndarray]] = {}
    for step, entry in obj.items():
        step_n = _step_number(step)
        if step_n is None:
            raise ConceptError(f"{path.name}: {step!r} is not a training step (expected an int)")
        if not isinstance(entry, Mapping) or "keys" not in entry or "values" not in entry:
            got = sorted(map(str, entry)) if isinstance(entry, Mapping) else type(entry).__name__
            raise ConceptError(f"{path.name}: step {step_n} needs 'keys' and 'values' (found {got})")
        keys = _to_numpy(entry["keys"], f"step {step_n} keys", path.name)
        values = _to_numpy(entry["values"], f"step {step_n} values", path.name)
        if values.ndim == 1:
            values = values[None, :]
        if values.ndim != 2 or values.shape[0] < 1 or values.shape[1] < 1:
            raise ConceptError(f"{path.name}: step {step_n} values have shape {tuple(values.shape)}, expected (1, D)")
        out[step_n] = {"keys": keys, "values": values}
    dims = {e["values"].shape[1] for e in out.values()}
    if len(dims) > 1:
        raise ConceptError(f"{path.name}: the steps' values differ in size ({sorted(dims)})")
    return dict(sorted(out.items()))


def _step_number(step: Any) -> int | None:
    if isinstance(step, bool):
        return None
    if isinstance(step, int):
        return step
    if isinstance(step, str):
        m = re.fullmatch(r"(?:iteration_|step_)?(\d+)", step.strip())
        return int(m.group(1)) if m else None
    return None


def export_research_concept_embeddings(path: str | Path, steps: Mapping[int, Mapping[str, Any]]) -> Path:
    """Write {step: {"keys", "values"}} (numpy arrays or tensors) as the research `.pt` format (torch.save), for the
    reference code and other tools. Name it `research_embeddings_filename(vlm, task)` to match their convention."""
    import torch

    if not steps:
        raise ConceptError("no concept embeddings to export")
    data: dict[int, dict[str, Any]] = {}
    for step, entry in steps.items():
        n = _step_number(step)
        if n is None or "keys" not in entry or "values" not in entry:
            raise ConceptError(f"step {step!r}: need an int step with 'keys' and 'values'")
        values = torch.as_tensor(np.asarray(entry["values"], dtype=np.float32))
        data[n] = {"keys": torch.as_tensor(np.asarray(entry["keys"], dtype=np.float32)).clone(),
                   "values": (values[None, :] if values.ndim == 1 else values).clone()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(data, str(tmp))
    tmp.replace(path)
    return path


def research_embeddings_filename(vlm: str, task: str) -> str:
    """The reference code's name: concept_embeddings_<vlm>_<task>.pt (e.g. concept_embeddings_llava_captioning.pt)."""
    return f"{EMBEDDINGS_PREFIX}{vlm}_{task}.pt"


# The VLM part of a concept-embeddings file name, lower-cased without "VLMType." and punctuation → our family. The
# reference writes f"{vlm_type}_{task}" of str enums: "blip-2_captioning" under Python ≤ 3.10, and
# "VLMType.BLIP2_PersonalizationTask.CAPTIONING" from 3.11 on (Enum.__format__ changed); others write
# "BLIP2_CAPTIONING". The families the paper has no name for go by ours (this app's export writes "<family>_<task>").
RESEARCH_FAMILIES = {"blip2": "blip2", "blip": "blip2", "llava": "llava", "minigptv2": "minigpt-v2",
                     "smolvlm": "smolvlm", "idefics3": "smolvlm", "llavaonevision": "llava-onevision",
                     "qwen2vl": "qwen2-vl", "qwen25vl": "qwen2-vl"}
RESEARCH_TASKS = {"captioning": "caption", "caption": "caption", "vqa": "vqa", "rec": "rec"}
# The research files of the paper's families are the paper's checkpoint's (a BLIP-2 FlanT5 embedding means nothing to
# BLIP-2 OPT, whose vision encoder has the same width); the other families' go with every checkpoint of that width.
PAPER_CHECKPOINT_KEY = {"blip2": "blip2", "llava": "llava", "minigpt-v2": "minigpt-v2"}


def parse_research_embeddings_name(name: str) -> tuple[str, str] | None:
    """("qwen2-vl", "caption") for concept_embeddings_qwen2-vl_captioning.pt (.safetensors): (family, our task), the
    family being the name's own (normalised) when it is none we know; None when the name is not of that pattern."""
    stem = name.removesuffix(".pt").removesuffix(".safetensors")
    if not stem.startswith(EMBEDDINGS_PREFIX) or "_" not in stem[len(EMBEDDINGS_PREFIX):]:
        return None
    vlm, task = stem[len(EMBEDDINGS_PREFIX):].rsplit("_", 1)
    vlm = re.sub(r"[^a-z0-9]", "", vlm.lower().removeprefix("vlmtype."))
    task = task.lower().removeprefix("personalizationtask.")
    if not vlm or task not in RESEARCH_TASKS:
        return None
    return RESEARCH_FAMILIES.get(vlm, vlm), RESEARCH_TASKS[task]


def research_embeddings_checkpoints(family: str) -> list[str]:
    """The VLM keys (VLM_SPECS) a research embedding of `family` may be used with; the concept dimension decides
    among them (`concept_dim`)."""
    from engine.models.vlm.specs import VLM_SPECS

    if family in PAPER_CHECKPOINT_KEY:
        return [k for k in [PAPER_CHECKPOINT_KEY[family]] if k in VLM_SPECS]
    return [k for k, spec in VLM_SPECS.items() if spec.family == family]


def check_research_embeddings(name: str, steps: Mapping[int, Mapping[str, np.ndarray]]) -> tuple[str, str]:
    """(family, task) of a concept-embeddings file of a research folder, or a ConceptError that says why the app
    could never use it: a name not of the pattern, a VLM family the app does not have, or values of a width that
    no checkpoint of that family has (trained on another model)."""
    from engine.models.vlm.specs import CONCEPT_DIM, UNSUPPORTED, VLM_SPECS

    found = parse_research_embeddings_name(name)
    if found is None:
        raise ConceptError(f"{name} is not named concept_embeddings_<vlm>_<task>.pt (task captioning or vqa, e.g. "
                           f"concept_embeddings_llava_captioning.pt), so it is unclear which VLM it is for")
    family, task = found
    families = {s.family for s in VLM_SPECS.values()}
    if family not in families and family not in UNSUPPORTED:
        have = ", ".join(sorted(families))
        raise ConceptError(f"{name} holds concept embeddings of a '{family}' VLM, which this app does not have "
                           f"(it has {have}); take the file out of the folder to import the rest")
    dim = next(iter(steps.values()))["values"].shape[1]
    keys = research_embeddings_checkpoints(family)
    dims = {k: CONCEPT_DIM.get(k) for k in keys}
    if keys and all(dims.values()) and dim not in dims.values():
        sizes = ", ".join(f"{d}-d for {k}" for k, d in dims.items())
        raise ConceptError(f"{name} holds {dim}-d concept embeddings, but {family}'s are {sizes}: it was trained on "
                           f"another model; take the file out of the folder to import the rest")
    return family, task


# ----------------------------------------------------------------------------------------------------------------------
# Concept folders
# ----------------------------------------------------------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    """A JSON file of the folder; any failure (not UTF-8, not JSON, nested too deep, a number too long to read,
    too large to be a captions file) is a ConceptError. A UTF-8 byte-order mark (Windows editors) is fine."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ConceptError(f"{path.name} is not readable: {exc.strerror or exc}") from None
    if size > MAX_JSON_BYTES:
        raise ConceptError(f"{path.name} is {size / 1e6:.0f} MB, too large for a captions file "
                           f"(limit {MAX_JSON_BYTES / 1e6:.0f} MB)")
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except RecursionError:
        raise ConceptError(f"{path.name} is not readable JSON: nested too deeply") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError, and int("9" * 5000)'s ValueError
        raise ConceptError(f"{path.name} is not readable JSON: {exc}") from None


def _is_text(value: Any) -> bool:
    """A str that is valid Unicode: JSON's "\\ud800" escapes give lone surrogates, which cannot be written out."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _image_name(key: Any, source: str) -> str:
    """An image named by a captions/VQA file: a plain file name (paths keep their last part, nothing outside)."""
    if not _is_text(key) or not key.strip() or "\x00" in key:
        raise ConceptError(f"{source}: {key!r} is not an image file name")
    name = Path(key.replace("\\", "/")).name
    if name in ("", ".", ".."):
        raise ConceptError(f"{source}: {key!r} is not an image file name")
    return name


def read_research_captions(folder: Path) -> dict[str, list[str]]:
    """{image name: [captions]} from captions.json and captions_augmented.json (merged per image, in that order,
    without repeats). ConceptError when neither exists or one is malformed."""
    found = [folder / n for n in CAPTION_FILES if (folder / n).is_file()]
    if not found:
        raise ConceptError(f"{folder} has no {' or '.join(CAPTION_FILES)}: not a MyVLM concept folder")
    out: dict[str, list[str]] = {}
    for path in found:
        _inside(folder, path)
        data = _read_json(path)
        if not isinstance(data, dict):
            raise ConceptError(f"{path.name} must map image names to lists of captions")
        for key, caps in data.items():
            name = _image_name(key, path.name)
            if isinstance(caps, str):
                caps = [caps]
            if not isinstance(caps, list) or not all(_is_text(c) for c in caps):
                raise ConceptError(f"{path.name}: the captions of {key!r} must be a list of strings")
            have = out.setdefault(name, [])
            have.extend(c.strip() for c in caps if c.strip() and c.strip() not in have)
    return out


def read_research_vqa(folder: Path) -> dict[str, list[list[str]]] | None:
    """{image name: [[question, answer], ...]} from additional_llava_vqa_data.json, or None when absent."""
    path = folder / VQA_FILE
    if not path.is_file():
        return None
    _inside(folder, path)
    data = _read_json(path)
    if not isinstance(data, dict):
        raise ConceptError(f"{VQA_FILE} must map image names to lists of [question, answer] pairs")
    out: dict[str, list[list[str]]] = {}
    for key, pairs in data.items():
        name = _image_name(key, VQA_FILE)
        if not isinstance(pairs, list) or not all(
                isinstance(p, (list, tuple)) and len(p) == 2 and all(_is_text(s) for s in p) for p in pairs):
            raise ConceptError(f"{VQA_FILE}: the entry of {key!r} must be a list of [question, answer] pairs")
        out.setdefault(name, []).extend([str(q), str(a)] for q, a in pairs)
    return out


def _check_image(path: Path) -> None:
    """The image decodes, as the album's photos do (same size limits, truncation and corruption checks)."""
    from engine.ingest.images import PhotoReadError, decode

    try:
        decode(str(path), max_side=CHECK_SIDE)
    except PhotoReadError as exc:
        raise ConceptError(f"{path.name} is not a readable image ({exc})") from None


def _inside(folder: Path, path: Path) -> None:
    """Refuse a file of the folder that is a link to somewhere outside it: an import reads only the folder."""
    try:
        target = path.resolve(strict=True)
        inside = target.is_relative_to(folder.resolve(strict=True))
    except (OSError, RuntimeError) as exc:  # a dangling link, a link loop
        raise ConceptError(f"{path.name} is a broken link ({exc})") from None
    if not inside:
        raise ConceptError(f"{path.name} is a link to {target}, outside the concept folder: copy the file into the "
                           f"folder instead (an import reads nothing outside its folder)")


def _word_re(token: str) -> re.Pattern[str]:
    return re.compile(rf"(?<![\w]){re.escape(token)}(?![\w])", re.IGNORECASE)


def _identifier_in_captions(captions: list[str], candidates: list[str]) -> str | None:
    """The candidate token the captions use for the concept: the one in most captions, if in at least half."""
    if not captions:
        return None
    best, best_n = None, 0
    for token in candidates:
        n = sum(bool(_word_re(token).search(c)) for c in captions)
        if n > best_n:
            best, best_n = token, n
    return best if best_n * 2 >= len(captions) else None


def import_research_concept(registry: ConceptRegistry, folder: str | Path, name: str | None = None,
                            kind: str = OBJECT, *, identifier: str | None = None,
                            object_head: str | Path | None = None, face_backend: Any = None) -> Concept:
    """A MyVLM research-layout concept folder becomes a concept of this library.

    - The images (every image file of the folder; those the caption files name must exist) are copied into
      `concepts/<id>/images/` and registered as the concept's examples with their captions
      (`add_imported_example`; an image without captions gets none). The album is never touched.
    - Captions: captions.json and captions_augmented.json, merged per image. The token they use for the concept
      ("sks", the folder's or the given name) is found; if the concept's identifier differs (an explicit
      `identifier`, or "sks" being taken by another concept), captions and VQA answers are rewritten to it.
    - `additional_llava_vqa_data.json` is kept (validated, identifier rewritten) as that file in the concept folder.
    - An object head (kind "object"): `object_head`, else the one .pt/.pth in the folder that is not
      `concept_embeddings_*` (see `load_research_object_head`). It is stored as the concept's head with threshold
      0.5 in space `research_head_space(D)`: a 1024-d head is DFN5B-CLIP-ViT-H-14-378's and only works with that
      CLIP model; a head of another size is refused (its feature space is unknown).
    - `concept_embeddings_*.pt` files are validated (`check_research_embeddings`: a VLM family the app has, a width
      one of its checkpoints has) and kept as safetensors in `concepts/<id>/research_embeddings/` (keys
      "<step>/keys", "<step>/values"); re-export them with `export_research_concept_embeddings`.
    - kind "person": with `face_backend`, a person head is built from the images' faces (one face per image, the
      paper's multi-face rule: `face_head.build_person_head_from_images`). The concept is tied to no album person.

    Everything is validated before the concept is created; if a later step fails the concept is removed again.
    Only the folder is read: names in the caption files are plain file names, and a file that is a link to
    somewhere outside the folder is refused. Raises ConceptError with the reason.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ConceptError(f"not a folder: {folder}")
    if kind not in (OBJECT, PERSON):
        raise ConceptError(f"kind must be {OBJECT!r} or {PERSON!r}, not {kind!r}")
    name = " ".join((folder.name.replace("_", " ") if name is None else name).split())
    if not name:
        raise ConceptError("a concept needs a name")

    # -- read and validate everything first ------------------------------------------------------------------------
    captions = read_research_captions(folder)
    vqa = read_research_vqa(folder)
    files = {p.name: p for p in sorted(folder.iterdir())
             if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES}
    missing = sorted(set(captions) - set(files))
    if missing:
        raise ConceptError(f"{', '.join(missing[:5])}{' …' if len(missing) > 5 else ''} named in the captions "
                           f"{'is' if len(missing) == 1 else 'are'} not in {folder}")
    if not files:
        raise ConceptError(f"{folder} holds no images")
    for p in files.values():
        _inside(folder, p)
        _check_image(p)
    if vqa:
        stray = sorted(set(vqa) - set(files))
        if stray:
            raise ConceptError(f"{VQA_FILE} names images that are not in the folder: {', '.join(stray[:5])}")

    head_tensors: dict[str, np.ndarray] | None = None
    head_file: Path | None = None
    if object_head is not None:
        if kind != OBJECT:
            raise ConceptError("only object concepts have a released head; a person's head is their faces")
        head_file = Path(object_head)
    elif kind == OBJECT:
        candidates = [p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in HEAD_SUFFIXES
                      and not p.name.startswith(EMBEDDINGS_PREFIX)]
        if len(candidates) > 1:
            raise ConceptError(f"{folder} holds several possible object heads ({', '.join(p.name for p in candidates)}):"
                               f" name the one to use")
        head_file = candidates[0] if candidates else None
        if head_file is not None:
            _inside(folder, head_file)
    space = None
    if head_file is not None:
        head_tensors = load_research_object_head(head_file)
        dim = head_tensors[WEIGHT].shape[1]
        space = research_head_space(dim)
        if space is None:
            raise ConceptError(f"{head_file.name} reads {dim}-d features; MyVLM's released object heads read 1024-d "
                               f"DFN5B-CLIP-ViT-H-14-378 features, and no other space is known for it")
    embedding_files = sorted(folder.glob(EMBEDDINGS_PREFIX + "*.pt"))
    for p in embedding_files:
        _inside(folder, p)
    embeddings = {p.stem: load_research_concept_embeddings(p) for p in embedding_files}
    for p in embedding_files:
        check_research_embeddings(p.name, embeddings[p.stem])

    # -- the identifier the captions use, and the concept's ------------------------------------------------------------
    all_caps = [c for caps in captions.values() for c in caps]
    candidates = list(dict.fromkeys([t for t in ([identifier] if identifier else []) + [name, folder.name]
                                     + list(OBJECT_TOKENS) if t]))
    used = _identifier_in_captions(all_caps, candidates)
    taken = {c.identifier.lower() for c in registry.list()}

    # -- create --------------------------------------------------------------------------------------------------------
    keep_caption_word = bool(used and used.lower() not in taken and re.fullmatch(r"[\w][\w' .-]*", used))
    concept = registry.create(kind, name, identifier or (used if keep_caption_word else None))
    cid, ident = concept.id, concept.identifier
    try:
        def rewrite(text: str) -> str:
            return _word_re(used).sub(ident, text) if used and used != ident else text

        dest_dir = registry.folder(cid) / IMAGES_DIR
        dest_dir.mkdir(parents=True, exist_ok=True)
        copied = []
        for fname, src in files.items():
            dest = dest_dir / fname
            tmp = dest.with_name(dest.name + ".tmp")
            shutil.copyfile(src, tmp)
            tmp.replace(dest)
            caps = captions.get(fname)
            registry.add_imported_example(cid, dest, [rewrite(c) for c in caps] if caps is not None else None)
            copied.append(dest)
        if vqa is not None:
            kept = {img: [[rewrite(q), rewrite(a)] for q, a in pairs] for img, pairs in vqa.items()}
            out = registry.folder(cid) / VQA_FILE
            out.write_text(json.dumps(kept, indent=1, ensure_ascii=False), encoding="utf-8")
        for stem, steps in embeddings.items():
            _save_embeddings(registry.folder(cid) / RESEARCH_EMBEDDINGS_DIR / f"{stem}.safetensors", steps, stem)
        if head_tensors is not None:
            assert head_file is not None and space is not None
            registry.save_head(cid, Head(OBJECT, space, OBJECT_THRESHOLD, head_tensors),
                               {"source": "research import", "file": head_file.name, "space": space,
                                "note": f"released head: works only on {space} image features"})
        elif kind == PERSON and face_backend is not None:
            from engine.domain.concepts.face_head import build_person_head_from_images

            head, metrics = build_person_head_from_images(face_backend, copied)
            registry.save_head(cid, head, {"source": "research import", **metrics})
    except BaseException:
        registry.remove(cid)
        raise
    log.info("imported research concept %r (%s) from %s: %d images", name, kind, folder, len(files))
    return registry.get(cid)


def _save_embeddings(path: Path, steps: Mapping[int, Mapping[str, np.ndarray]], source: str) -> None:
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"{step}/{part}": np.ascontiguousarray(entry[part], dtype=np.float32)
               for step, entry in steps.items() for part in ("keys", "values")}
    save_file(tensors, str(path), metadata={"format": "myvlm-research-concept-embeddings", "source": source})


def load_imported_embeddings(path: str | Path) -> dict[int, dict[str, np.ndarray]]:
    """The research concept embeddings an import kept (safetensors) -> {step: {"keys", "values"}}."""
    from safetensors.numpy import load_file

    path = Path(path)
    try:
        tensors = load_file(str(path))
        out: dict[int, dict[str, np.ndarray]] = {}
        for key, arr in tensors.items():
            step, part = key.split("/", 1)
            out.setdefault(int(step), {})[part] = arr
        for step, entry in out.items():
            if set(entry) != {"keys", "values"}:
                raise ValueError(f"step {step} has {sorted(entry)}, not keys and values")
            if entry["values"].ndim != 2 or not np.isfinite(entry["values"]).all():
                raise ValueError(f"step {step} values have shape {entry['values'].shape} or are not finite")
    except Exception as exc:  # noqa: BLE001 - SafetensorError, a foreign key, a wrong shape: all "damaged"
        raise ConceptError(f"{path.name} is damaged and cannot be read ({type(exc).__name__}: {exc}); import the "
                           f"research concept again") from None
    if not out:
        raise ConceptError(f"{path.name} holds no concept embeddings; import the research concept again")
    return dict(sorted(out.items()))


def object_head_p(head_tensors: Mapping[str, np.ndarray], features: np.ndarray) -> np.ndarray:
    """p(concept) of (n, D) L2-normalised image features under a (research) object head -> (n,)."""
    from engine.domain.concepts.object_head import score

    f = np.atleast_2d(np.asarray(features, dtype=np.float32))
    if f.shape[1] != head_tensors[WEIGHT].shape[1]:
        raise ConceptError(f"features are {f.shape[1]}-d, the head reads {head_tensors[WEIGHT].shape[1]}-d")
    return score(head_tensors[WEIGHT], head_tensors[BIAS], f)


__all__ = [
    "OBJECT_THRESHOLD", "VQA_FILE", "check_research_embeddings", "export_research_concept_embeddings",
    "import_research_concept", "parse_research_embeddings_name", "research_embeddings_checkpoints",
    "load_imported_embeddings", "load_research_concept_embeddings", "load_research_object_head", "object_head_p",
    "read_research_captions", "read_research_vqa", "research_embeddings_filename", "research_head_space",
]
