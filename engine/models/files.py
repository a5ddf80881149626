"""Whether a model's weight files can be loaded, said in one sentence, before (and while) they are loaded.

A truncated download, a file cut short by a full disk, or a pickle that would run code must never surface as a
raw `SafetensorError`/`UnpicklingError` traceback: each loader checks the files first and raises `ModelLoadError`
with one sentence (which file, what is wrong with it, what to do); the front doors print it, the pipeline marks the
stage unavailable with it. The same checks serve `myvlm models import` and `verify`.

Two depths:
  * `quick_problem` reads a safetensors file's header and compares the lengths it declares with the file's size:
    stdlib only, a few kilobytes read, so `myvlm status` can afford it;
  * `load_problem` also opens pickled weights (`.bin`, `.pt`, `.pth`) with `torch.load(weights_only=True)`, which
    refuses any object that is not plain tensor data instead of running it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import struct
from collections.abc import Iterator
from pathlib import Path

from engine.errors import UserError

log = logging.getLogger(__name__)

SAFETENSORS_SUFFIX = ".safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
_MAX_HEADER = 100_000_000  # the safetensors format's own limit on the header's length
_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
                "U32": 4, "I32": 4, "F32": 4, "U64": 8, "I64": 8, "F64": 8}


class ModelError(UserError, RuntimeError):
    """A model cannot be listed, fetched, verified, removed, imported or loaded as asked; the message says why and
    what to do. (Defined here, the lowest module that needs it; engine.models.downloads re-exports it.)"""


class ModelLoadError(ModelError):
    """A model's files are on this computer but cannot be loaded; the message is one sentence saying which file,
    what is wrong and what to do."""


def weight_files(folder: Path) -> list[Path]:
    """The weight files of a checkpoint folder (safetensors and pickled), shards included; hidden folders skipped."""
    out = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).parts
        if any(part.startswith(".") for part in rel) or not path.is_file():
            continue
        if path.name.endswith(SAFETENSORS_SUFFIX) or path.name.endswith(PICKLE_SUFFIXES):
            out.append(path)
    return out


def _safetensors_problem(path: Path) -> str | None:
    """Why a safetensors file cannot be loaded (its header against its size), or None."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return "is empty or cut short (no safetensors header)"
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_HEADER or 8 + n > size:
            return "is damaged or cut short (its safetensors header runs past the end of the file)"
        try:
            header = json.loads(f.read(n))
        except ValueError:
            return "is damaged (its safetensors header is not readable)"
    if not isinstance(header, dict):
        return "is damaged (its safetensors header is not readable)"
    data = size - 8 - n
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, stop = (int(x) for x in info["data_offsets"])
            count = 1
            for dim in info["shape"]:
                count *= int(dim)
            width = _DTYPE_BYTES.get(info["dtype"])
        except (KeyError, TypeError, ValueError):
            return "is damaged (its safetensors header is not readable)"
        if width is not None and stop - begin != count * width:
            return f"is damaged (tensor {name} has the wrong length)"
        end = max(end, stop)
    if end > data:
        return f"is cut short: it holds {data:,} bytes of tensor data where its header declares {end:,}"
    if end < data:
        return f"is damaged: it holds {data:,} bytes of tensor data where its header declares {end:,}"
    return None


def _pickle_problem(path: Path) -> str | None:
    """Why pickled weights cannot be loaded with weights_only=True (a refused object, a damaged file), or None."""
    import pickle

    import torch

    try:
        try:
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:  # the old (non-zip) format cannot be memory-mapped
            if "mmap" not in str(exc):
                raise
            torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"(?:Unsupported global|GLOBAL|global):?\s+(?:GLOBAL\s+)?([\w.]+)", str(exc))
        what = f" ({found.group(1)})" if found else ""
        return (f"holds a pickled object that is not plain weights{what}; it was refused, not run "
                "(only tensors load, with weights_only)")
    except Exception as exc:  # noqa: BLE001 - EOFError, a broken zip, ...: the file is damaged
        return f"is damaged or cut short ({_first_line(exc)})"
    return None


def quick_problem(path: Path, name: str | None = None) -> str | None:
    """Cheap check (no torch): a safetensors file's header against its size; other files pass. `name`: the file's
    real name when `path` is a cache blob (named by its hash)."""
    if (name or path.name).endswith(SAFETENSORS_SUFFIX):
        return _safetensors_problem(path)
    return None


def load_problem(path: Path, name: str | None = None) -> str | None:
    """Full check: safetensors by their header, pickled weights by loading them with weights_only=True."""
    name = name or path.name
    if name.endswith(SAFETENSORS_SUFFIX):
        return _safetensors_problem(path)
    if name.endswith(PICKLE_SUFFIXES):
        return _pickle_problem(path)
    return None


def folder_problem(folder: Path, *, quick: bool = False) -> str | None:
    """The first weight file of a folder that cannot be loaded, as "<file> <why>", or None."""
    check = quick_problem if quick else load_problem
    for path in weight_files(folder):
        why = check(path)
        if why:
            return f"{path.relative_to(folder).as_posix()} {why}"
    return None


def cannot_load(what: str, problem: str, fix: str) -> ModelLoadError:
    """The one sentence: `what` (e.g. "the captioning model BLIP-2 FlanT5-XL") cannot be loaded: problem; fix."""
    return ModelLoadError(f"{what} cannot be loaded: {problem}; {fix}")


def repair_hint(catalogue_name: str | None, where: Path) -> str:
    """What to do about a model that does not load: through the model manager when it is one of its models."""
    if catalogue_name:
        return (f"`myvlm models verify {catalogue_name} --fix` deletes the damaged files, then "
                f"`myvlm models get {catalogue_name}` fetches them again (or `myvlm models import {catalogue_name} "
                "FOLDER` copies a good copy)")
    return f"replace it with a good copy ({where})"


def vlm_terms(spec) -> tuple[str, str | None]:
    """(what to call a VLM in a sentence, its `myvlm models` name or None for tiny presets and folders)."""
    from engine.models.vlm.specs import VLM_SPECS

    return f"the captioning model {spec.title}", (spec.key if spec.key in VLM_SPECS and not spec.tiny else None)


def vlm_quick_problem(spec, folder: Path) -> str | None:
    """The sentence for a VLM checkpoint whose safetensors are damaged (cheap: no torch), or None."""
    problem = folder_problem(folder, quick=True)
    if problem is None:
        return None
    what, name = vlm_terms(spec)
    return str(cannot_load(what, problem, repair_hint(name, folder)))


@contextlib.contextmanager
def checked_load(what: str, where: Path, catalogue_name: str | None) -> Iterator[None]:
    """Check the weights at `where` (a checkpoint folder or one file), then run the loader inside `loading`."""
    fix = repair_hint(catalogue_name, where)
    problem = folder_problem(where) if where.is_dir() else load_problem(where)
    if problem and not where.is_dir():
        problem = f"{where.name} {problem}"
    if problem:
        raise cannot_load(what, problem, fix)
    with loading(what, fix):
        yield


@contextlib.contextmanager
def loading(what: str, fix: str) -> Iterator[None]:
    """Turn whatever a library's loader raises (SafetensorError, UnpicklingError, OSError, a shape mismatch) into
    one ModelLoadError sentence; the traceback goes to the log only."""
    try:
        yield
    except ModelError:
        raise
    except Exception as exc:
        log.warning("loading %s failed", what, exc_info=exc)
        raise cannot_load(what, _first_line(exc), fix) from exc


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__).rstrip(".")
