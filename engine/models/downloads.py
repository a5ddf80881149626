"""The model manager: which models each feature needs, whether they are on this computer, and getting them.

One catalogue (`catalogue()`) lists every model the app can use, per feature: the dlib face models (installed with
the app), the InsightFace face packs, the CLIP models and the vision-language models (BLIP-2, LLaVA), each with its
size, licence and where it lives. `ModelManager` answers for each one whether it is present, missing or partial, and
downloads, verifies, removes and imports them. Nothing here downloads on its own: only `get()` touches the network.

Where models live:
  * Hugging Face models (CLIP, BLIP-2, LLaVA) in the standard Hugging Face cache (`HF_HOME` / `HF_HUB_CACHE`), in
    the cache's own layout (`models--org--name/{blobs,snapshots,refs}`), so `clip.find_cached_weights`,
    `personalize.checkpoints.checkpoint_folder` and any other program using the cache find them;
  * InsightFace packs in the library's models folder, `<library>/models/insightface/<pack>/`, where
    `faces.backends.find_insightface_packs` looks. They come from a hub repository holding the packs' ONNX files
    (`FACE_PACK_REPO`, or `$MYVLM_FACE_PACK_REPO` as "owner/name" or "owner/name:sub/folder/{pack}").

Downloads (huggingface_hub for the hub's API, URLs, headers, session and cache scanning): the file list, sizes and
SHA-256s come from the hub's model info; each file's ETag and address from its `resolve` URL. Every file is written
to `<etag>.incomplete` beside its final place and resumed from there with an HTTP Range request, after a dropped
connection (retried at once) or on the next `get()` after a cancel, a Ctrl-C or a crash: huggingface_hub 2.x's own
`hf_hub_download` writes to a temporary file that it deletes when interrupted, so it cannot resume across runs.
Each file is checked against its size and hash (SHA-256 for LFS files, the git blob hash for small ones) before it
is moved into place; a file that fails is deleted, never kept.

`HF_ENDPOINT`, `HF_HOME`/`HF_HUB_CACHE` and `HF_HUB_OFFLINE` are read the way huggingface_hub reads them (its
`constants`, set from the environment when it is imported), so the manager and the lookups always agree; a manager
can be given another cache, endpoint or offline flag explicitly. Offline, `get()` refuses before any connection.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote, urlparse

from engine.errors import Cancelled
from engine.models.files import ModelError  # defined with the weight checks (the lowest module that needs it)
from engine.models.sizes import SIZES as _SIZES  # noqa: F401 - re-exported
from engine.models.sizes import human as _human
from engine.progress import Progress, ProgressFn

log = logging.getLogger(__name__)

PRESENT, MISSING, PARTIAL = "present", "missing", "partial"
HUB, FACE_PACK, PACKAGE = "hub", "face_pack", "package"
FACES, SEARCH, CAPTIONS = "faces", "search and things", "captions and questions"

# A hub repository that mirrors InsightFace's model zoo (models/<pack>/*.onnx). It is a third-party mirror, not
# InsightFace's own release (that is a zip on GitHub): its files are checked against the hub's SHA-256s, which
# proves they arrived intact, not who made them. Whatever the source, the packs' licence is InsightFace's:
# non-commercial research only. Another repository: $MYVLM_FACE_PACK_REPO or `myvlm models get PACK --repo ...`.
FACE_PACK_REPO = "public-data/insightface"
FACE_PACK_SUBFOLDER = "models/{pack}"
ENV_FACE_PACK_REPO = "MYVLM_FACE_PACK_REPO"
INSIGHTFACE_LICENCE = "InsightFace: non-commercial research only"
MANIFEST = ".myvlm-pack.json"  # a face pack's files with their sizes and SHA-256s, written when it is installed

DLIB_FILES = {
    "shape_predictor_5_face_landmarks.dat": "5-point face alignment",
    "dlib_face_recognition_resnet_model_v1.dat": "128-d face embeddings (ResNet)",
    "mmod_human_face_detector.dat": "CNN face detector (optional)",
}

CHUNK_TIMEOUT_S = 30.0  # no byte for this long: the connection is treated as dropped (and resumed)
RETRIES = 5  # attempts per file without progress before giving up (the next get() resumes anyway)
PROGRESS_EVERY_S = 0.1  # progress callbacks at most this often (and always at the end of each file)
_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class OfflineError(ModelError):
    pass


class TokenRequired(ModelError):
    """The hub wants to know who is downloading (a gated model such as Llama 2): the message says why and how."""


def gated_message(repo_id: str, had_token: bool) -> str:
    why = (f"{repo_id} is gated: its makers let only Hugging Face accounts that accepted their licence download it, "
           "and the hub checks that with your access token")
    if had_token:
        return (f"{why}; the token given was not let in. Accept the licence at https://huggingface.co/{repo_id} with "
                "the account the token belongs to, then try again")
    return (f"{why}. Accept the licence at https://huggingface.co/{repo_id}, make a read token at "
            "https://huggingface.co/settings/tokens and give it when asked (or set HF_TOKEN, or run `hf auth "
            "login`). The token goes to the hub only and the app does not keep it")


class DownloadCancelled(ModelError, Cancelled):
    """The user stopped a download (engine.errors.Cancelled); the partial files are kept to resume."""


Cancel = threading.Event  # the engine's one cancel (engine/progress.py): set by the front door, checked here


# -- the catalogue ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelEntry:
    name: str                    # what users type: `myvlm models get blip2`
    feature: str                 # FACES / SEARCH / CAPTIONS
    title: str
    purpose: str
    licence: str
    kind: str                    # HUB / FACE_PACK / PACKAGE
    size_bytes: int              # approximate download size (the hub's listing gives the exact one)
    repo_id: str = ""            # hub repository (face packs: filled in from the configured pack repository)
    revision: str = "main"
    files: tuple[str, ...] = ()  # patterns (fnmatch) of the repository's files to fetch, besides the weights
    # weight formats, best first: the first one the repository has is fetched, files of the others never are.
    # Each is a tuple of patterns; the first pattern names the weights, the others go with them (shard indexes).
    weights: tuple[tuple[str, ...], ...] = ()
    required: tuple[str, ...] = ()  # files the model cannot work without (besides the weights)
    default: bool = False        # what the feature uses out of the box

    def patterns(self) -> tuple[str, ...]:
        return self.files + tuple(p for alt in self.weights for p in alt)

    def matches(self, path: str) -> bool:
        return any(fnmatch.fnmatchcase(path, p) for p in self.patterns())


FACE_PACKS = {
    # pack: (files the backend needs: detection, recognition), approximate size, title
    "buffalo_l": (("det_10g.onnx", "w600k_r50.onnx"), 191_000_000, "InsightFace buffalo_l (SCRFD-10G + ArcFace R50)"),
    "buffalo_s": (("det_500m.onnx", "w600k_mbf.onnx"), 16_100_000, "InsightFace buffalo_s (SCRFD-500M + MobileFaceNet)"),
    "antelopev2": (("scrfd_10g_bnkps.onnx", "glintr100.onnx"), 278_000_000,
                   "InsightFace antelopev2 (SCRFD-10G + ArcFace R100 Glint360K)"),
}
INSIGHTFACE_PACKS = list(FACE_PACKS)
_VLM_FILES = ("*.json", "*.model", "*.txt", "*.tiktoken")
_VLM_WEIGHTS = (("*.safetensors", "*.safetensors.index.json"), ("*.bin", "*.bin.index.json"))
_VLM_REQUIRED = ("config.json", "tokenizer_config.json")
# MiniGPT-v2's hub download is its language model, the gated Llama-2 chat; its other two parts come from BLIP-2 and
# the MiniGPT-4 project (specs.minigpt_v2_parts)
_HUB_REPO = {"minigpt-v2": "meta-llama/Llama-2-7b-chat-hf"}
_PURPOSE_NOTE = {"minigpt-v2": " and 'where is …?' boxes; downloads Llama-2-7b-chat (gated: asks for your Hugging "
                               "Face token) and also needs BLIP-2 and minigptv2_checkpoint.pth"}  # processors save preprocessor_ or processor_config

_CATALOGUE: list[ModelEntry] | None = None
_CATALOGUE_LOCK = threading.Lock()


def catalogue() -> list[ModelEntry]:
    """Every model the app can use, grouped by feature (faces, search, captions). Repo ids and licences come from
    the features' own tables (clip.CLIP_MODELS, vlm.VLM_SPECS), so there is one list of each."""
    global _CATALOGUE
    with _CATALOGUE_LOCK:
        if _CATALOGUE is None:
            _CATALOGUE = _build_catalogue()
        return list(_CATALOGUE)


def _build_catalogue() -> list[ModelEntry]:
    from engine.models.clip import CLIP_MODELS, DEFAULT_MODEL, HUB_WEIGHT_FILES
    from engine.models.hardware import recommended_vlm
    from engine.models.vlm.specs import VLM_SPECS

    out = [ModelEntry("dlib", FACES, "dlib face models", "faces (default; installed with the app)", "CC0", PACKAGE,
                      31_000_000, default=True)]
    for pack, (files, size, title) in FACE_PACKS.items():
        out.append(ModelEntry(pack, FACES, title, "faces (optional, better than dlib)", INSIGHTFACE_LICENCE,
                              FACE_PACK, size, files=files, required=files))
    for spec in CLIP_MODELS.values():
        purpose = ("semantic search and object heads (light default CLIP)" if spec.name == DEFAULT_MODEL
                   else "semantic search and object heads (high-quality CLIP, as in the paper)")
        out.append(ModelEntry(spec.name, SEARCH, f"OpenCLIP {spec.name}", purpose, spec.licence, HUB,
                              _SIZES.get(spec.name, 0), repo_id=spec.hub_id, files=("open_clip_config.json",),
                              weights=tuple((f,) for f in HUB_WEIGHT_FILES), default=spec.name == DEFAULT_MODEL))
    for spec in VLM_SPECS.values():
        if spec.tiny:
            continue
        purpose = ("personalised captions and questions" if len(spec.tasks) > 1 else "personalised captions")
        purpose += f" ({spec.title})" + _PURPOSE_NOTE.get(spec.key, "")
        out.append(ModelEntry(spec.key, CAPTIONS, spec.title, purpose, spec.license, HUB,
                              _SIZES.get(spec.key, int(spec.params_b * 4e9)),
                              repo_id=_HUB_REPO.get(spec.key, spec.checkpoint),
                              files=_VLM_FILES, weights=_VLM_WEIGHTS, required=_VLM_REQUIRED,
                              default=spec.key == recommended_vlm()))
    return out


def face_pack_source(override: str | None = None) -> tuple[str, str]:
    """(repo id, subfolder template with {pack}) the face packs are downloaded from: `override`, else
    $MYVLM_FACE_PACK_REPO ("owner/name" or "owner/name:sub/folder/{pack}"), else FACE_PACK_REPO."""
    text = (override or os.environ.get(ENV_FACE_PACK_REPO) or "").strip()
    if not text:
        return FACE_PACK_REPO, FACE_PACK_SUBFOLDER
    repo, _, sub = text.partition(":")
    if repo.count("/") != 1:
        raise ModelError(f"face pack repository {text!r} should be owner/name or owner/name:sub/folder/{{pack}}")
    sub = sub.strip("/")
    if sub and "{pack}" not in sub:
        sub = f"{sub}/{{pack}}"
    return repo, sub or "{pack}"


# -- progress --------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DownloadProgress(Progress):
    """A model's download, import or check: Progress(phase, bytes of the model on disk (finished files and partial
    ones), bytes in all, the file in hand). phase: "listing" | "downloading" | "copying" | "verifying" | "done"."""

    name: str = ""
    files_done: int = 0
    files_total: int = 0
    resumed: int = 0        # bytes that were already here when this run started

    @property
    def file(self) -> str:
        return self.detail


class _Reporter:
    """Calls progress() at most every PROGRESS_EVERY_S (the GUI gets a signal per call), and always when forced.
    `state` holds the report's fields as they change (DownloadProgress is frozen: each call gets a new one)."""

    def __init__(self, callback: ProgressFn | None, name: str, phase: str, total: int | None = None,
                 files_total: int = 0):
        self.callback, self._last = callback, 0.0
        self.state = SimpleNamespace(name=name, phase=phase, done=0, total=total, file="", files_done=0,
                                     files_total=files_total, resumed=0)

    def __call__(self, force: bool = False, **changes: Any) -> None:
        for key, value in changes.items():
            setattr(self.state, key, value)
        if self.callback is None:
            return
        now = time.monotonic()
        if force or now - self._last >= PROGRESS_EVERY_S:
            self._last = now
            s = self.state
            self.callback(DownloadProgress(s.phase, s.done, s.total, s.file, name=s.name, files_done=s.files_done,
                                           files_total=s.files_total, resumed=s.resumed))


# -- results ---------------------------------------------------------------------------------------------------------

@dataclass
class ModelStatus:
    name: str
    feature: str
    title: str
    purpose: str
    licence: str
    kind: str
    repo_id: str
    state: str
    size_bytes: int              # on disk when present, else the approximate download
    approx_bytes: int
    partial_bytes: int = 0       # bytes of an unfinished download
    where: str | None = None     # the model's folder (present or partial) or where it goes
    default: bool = False
    fix: str | None = None       # what to do when it is not present
    can_get: bool = True
    can_remove: bool = False
    can_import: bool = True

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class VerifyReport:
    name: str
    ok: bool
    state: str
    checked: list[str] = field(default_factory=list)      # files whose size and hash are right
    problems: list[str] = field(default_factory=list)     # in words, one per bad or missing file
    unverified: list[str] = field(default_factory=list)   # present, but no hash is known to check them against
    removed: list[str] = field(default_factory=list)      # bad files deleted (fix=True), fetched again by get()

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class GetResult:
    name: str
    state: str
    path: str | None
    downloaded_bytes: int = 0
    resumed_bytes: int = 0
    files: list[str] = field(default_factory=list)
    commit: str | None = None
    already_present: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _RemoteFile:
    path: str            # in the repository
    rel: str             # where it goes: in the snapshot (hub models) or the pack folder (face packs)
    size: int | None
    sha256: str | None   # LFS files


# -- hashing ---------------------------------------------------------------------------------------------------------

def git_blob_sha1(data_size: int) -> Any:
    """A sha1 primed with git's blob header: the hub's ETag of a small (non-LFS) file is this hash of its bytes."""
    h = hashlib.sha1()
    h.update(f"blob {data_size}\0".encode())
    return h


def _expected_hasher(etag: str | None, sha256: str | None, size: int | None):
    """(hasher, expected hex digest) for a file, or (None, None) when nothing is known to check against."""
    if sha256 and _HEX64.match(sha256):
        return hashlib.sha256(), sha256
    if etag and _HEX64.match(etag):
        return hashlib.sha256(), etag
    if etag and _HEX40.match(etag) and size is not None:
        return git_blob_sha1(size), etag
    return None, None


def _hash_file(path: Path, hasher, cancel: Cancel | None = None, block: int = 1 << 20) -> None:
    with path.open("rb") as f:
        while True:
            if cancel is not None and cancel.is_set():
                raise DownloadCancelled("stopped")
            data = f.read(block)
            if not data:
                return
            hasher.update(data)


def _check_file(path: Path, blob_name: str) -> str | None:
    """Offline check of a cached file against its blob name (the hub's ETag): None when it is right, else why not.
    Returns "unverifiable" when the name is not a hash."""
    size = path.stat().st_size
    hasher, want = _expected_hasher(blob_name, None, size)
    if hasher is None:
        return "unverifiable"
    _hash_file(path, hasher)
    got = hasher.hexdigest()
    return None if got == want else f"hash {got[:12]}… is not the expected {want[:12]}…"


# -- the manager -----------------------------------------------------------------------------------------------------

class ModelManager:
    """Catalogue states, downloads, verification, removal and imports. Thread-safe for one download per model;
    a second download of the same model (another thread or program) is refused while the first runs."""

    def __init__(self, models_dir: Path | str | None = None, *, cache_dir: Path | str | None = None,
                 endpoint: str | None = None, offline: bool | None = None, token: str | bool | None = None,
                 face_pack_repo: str | None = None):
        from huggingface_hub import constants

        self.models_dir = Path(models_dir) if models_dir is not None else None
        self.cache_dir = Path(cache_dir if cache_dir is not None else constants.HF_HUB_CACHE).expanduser()
        self.endpoint = (endpoint or constants.ENDPOINT).rstrip("/")
        self._offline = offline
        self.token = token
        self.face_pack_error: str | None = None
        try:
            self.face_pack_repo, self.face_pack_subfolder = face_pack_source(face_pack_repo)
        except ModelError as exc:  # listing still works; fetching a pack says what is wrong
            log.warning("%s", exc)
            self.face_pack_error = str(exc)
            self.face_pack_repo, self.face_pack_subfolder = FACE_PACK_REPO, FACE_PACK_SUBFOLDER

    # -- settings ---------------------------------------------------------------------------------------------------

    @property
    def offline(self) -> bool:
        if self._offline is not None:
            return self._offline
        from huggingface_hub import constants

        env = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")
        return bool(constants.is_offline_mode() or env)

    def entry(self, name: str) -> ModelEntry:
        """The catalogue entry of a name (case-insensitive) or a repo id; ModelError lists the names otherwise."""
        entries = catalogue()
        low = name.strip().lower()
        for e in entries:
            if e.name.lower() == low or (e.repo_id and e.repo_id.lower() == low):
                return self._resolved(e)
        raise ModelError(f"unknown model {name!r}; known: {', '.join(e.name for e in entries)}")

    def entries(self) -> list[ModelEntry]:
        return [self._resolved(e) for e in catalogue()]

    def _resolved(self, e: ModelEntry) -> ModelEntry:
        if e.kind != FACE_PACK:
            return e
        return dataclasses.replace(e, repo_id=self.face_pack_repo)

    # -- where things are -------------------------------------------------------------------------------------------

    def repo_dir(self, e: ModelEntry) -> Path:
        return self.cache_dir / ("models--" + e.repo_id.replace("/", "--"))

    def _ref_snapshot(self, e: ModelEntry) -> Path | None:
        """The snapshot the lookups read (refs/<revision>), or None."""
        repo = self.repo_dir(e)
        ref = repo / "refs" / e.revision
        if _HEX40.match(e.revision):
            commit = e.revision
        else:
            try:
                commit = ref.read_text().strip()
            except OSError:
                return None
        snap = repo / "snapshots" / commit
        return snap if snap.is_dir() else None

    def _incomplete_blobs(self, e: ModelEntry) -> list[Path]:
        try:
            return sorted((self.repo_dir(e) / "blobs").glob("*.incomplete"))
        except OSError:
            return []

    def pack_dir(self, name: str) -> Path:
        if self.models_dir is None:
            raise ModelError("InsightFace packs live in a library's models folder: open a library first "
                             "(myvlm --library PATH models ...)")
        return self.models_dir / "insightface" / name

    def _staging_dir(self, name: str) -> Path:
        assert self.models_dir is not None
        return self.models_dir / "downloads" / "insightface" / name

    def _found_pack(self, name: str) -> Path | None:
        """Where find_insightface_packs finds this pack (the library's folder first, then ~/.insightface)."""
        from engine.models.faces.backends import find_insightface_packs, insightface_search_dirs

        if self.models_dir is not None:
            return find_insightface_packs(self.models_dir).get(name)
        home = insightface_search_dirs(Path("."))[-1]  # no library: only insightface's own folder counts
        folder = home / name
        return folder if folder.is_dir() and any(folder.glob("*.onnx")) else None

    # -- state ------------------------------------------------------------------------------------------------------

    @staticmethod
    def _complete(e: ModelEntry, folder: Path) -> bool:
        """Whether a folder (a snapshot, a pack, a folder to import) holds everything the model needs."""
        if not all((folder / f).is_file() for f in e.required):
            return False
        if not e.weights:
            return True
        return any(_weights_complete(folder, alt) for alt in e.weights)

    def _model_files(self, e: ModelEntry, folder: Path) -> list[Path]:
        """The model's files in a folder (snapshot), by the catalogue's patterns."""
        out = []
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder).as_posix()
            if path.is_file() and not rel.startswith(".") and e.matches(rel):
                out.append(path)
        return out

    def status(self, name: str | None = None) -> list[ModelStatus]:
        entries = [self.entry(name)] if name else self.entries()
        return [self._status(e) for e in entries]

    def state(self, name: str) -> str:
        return self._status(self.entry(name)).state

    def _status(self, e: ModelEntry) -> ModelStatus:
        st = ModelStatus(e.name, e.feature, e.title, e.purpose, e.licence, e.kind, e.repo_id, MISSING,
                         e.size_bytes, e.size_bytes, default=e.default)
        if e.kind == PACKAGE:
            info = dlib_models()
            st.state, st.where = info["state"], info.get("path")
            if info.get("path"):
                st.size_bytes = sum(p.stat().st_size for p in (Path(info["path"]) / f for f in DLIB_FILES)
                                    if p.exists())
            st.fix, st.can_get, st.can_import = info.get("fix"), False, False
            return st
        if e.kind == FACE_PACK:
            return self._pack_status(e, st)
        snap = self._ref_snapshot(e)
        partial = sum(p.stat().st_size for p in self._incomplete_blobs(e))
        files = self._model_files(e, snap) if snap is not None else []
        on_disk = sum(p.stat().st_size for p in files if p.exists())
        damaged = _damaged_weights(e, snap, files) if snap is not None else None
        if snap is not None and self._complete(e, snap) and damaged is None:
            st.state, st.size_bytes, st.where = PRESENT, on_disk, str(snap)
        elif damaged:  # all there, but a weights file is cut short: it would not load
            st.state, st.partial_bytes, st.where = PARTIAL, on_disk, str(snap)
            st.can_remove = True
            st.fix = (f"{damaged}: `myvlm models verify {e.name} --fix` deletes it, then `myvlm models get {e.name}` "
                      f"fetches it again (or `myvlm models import {e.name} FOLDER` a good copy)")
            return st
        elif files or partial:
            st.state, st.partial_bytes = PARTIAL, on_disk + partial
            st.where = str(self.repo_dir(e))
        else:
            st.where = str(self.repo_dir(e))
        st.can_remove = st.state != MISSING
        if st.state != PRESENT:
            verb = "finish the download" if st.state == PARTIAL else "download it"
            st.fix = (f"{verb}: Settings ▸ Models ▸ Download, or `myvlm models get {e.name}` "
                      f"({_human(e.size_bytes)}, licence: {e.licence}). On a computer without the app: "
                      f"`hf download {e.repo_id} --local-dir FOLDER`, then `myvlm models import {e.name} FOLDER`.")
        return st

    def _pack_status(self, e: ModelEntry, st: ModelStatus) -> ModelStatus:
        found = self._found_pack(e.name)
        staging_bytes = 0
        if self.models_dir is not None:
            staging = self._staging_dir(e.name)
            if staging.is_dir():
                staging_bytes = sum(p.stat().st_size for p in staging.rglob("*") if p.is_file())
        if found is not None:
            onnx = list(found.glob("*.onnx"))
            complete = self._complete(e, found) or len(onnx) >= 2
            st.state = PRESENT if complete else PARTIAL
            st.where = str(found)
            st.size_bytes = sum(p.stat().st_size for p in onnx)
            st.partial_bytes = 0 if complete else st.size_bytes + staging_bytes
        elif staging_bytes:
            st.state, st.partial_bytes, st.where = PARTIAL, staging_bytes, str(self._staging_dir(e.name))
        elif self.models_dir is not None:
            st.where = str(self.pack_dir(e.name))
        st.can_remove = st.state != MISSING and (found is None or self._ours(found))
        st.can_get = st.can_import = self.models_dir is not None
        if st.state != PRESENT:
            target = self.pack_dir(e.name) if self.models_dir is not None else "<library>/models/insightface/" + e.name
            st.fix = (f"optional (dlib is used without it): Settings ▸ Models ▸ Download, or `myvlm models get "
                      f"{e.name}` ({_human(e.size_bytes)}, from {self.face_pack_repo}); or unpack {e.name}.zip and "
                      f"`myvlm models import {e.name} FOLDER` (it goes to {target}). Licence: {e.licence}.")
        return st

    def _ours(self, folder: Path) -> bool:
        return self.models_dir is not None and (self.models_dir / "insightface") in folder.parents

    # -- download ---------------------------------------------------------------------------------------------------

    def get(self, name: str, progress: ProgressFn | None = None,
            cancel: Cancel | None = None) -> GetResult:
        """Download a model (resuming whatever an earlier run left). Raises OfflineError before any connection
        when offline, DownloadCancelled when cancelled (the partial files stay for the next get()), ModelError
        otherwise."""
        e = self.entry(name)
        if e.kind == PACKAGE:
            info = dlib_models()
            if info["state"] == PRESENT:
                return GetResult(e.name, PRESENT, info.get("path"), already_present=True)
            raise ModelError(f"the dlib face models come with the app's packages: {info.get('fix')}")
        if e.kind == FACE_PACK:
            self.pack_dir(e.name)  # refuses without a library
            if self.face_pack_error:
                raise ModelError(self.face_pack_error)
        current = self._status(e)
        if current.state == PRESENT:
            return GetResult(e.name, PRESENT, current.where, already_present=True)
        if self.offline:
            raise OfflineError(
                f"downloads are switched off (HF_HUB_OFFLINE is set): {e.title} was not fetched and nothing was "
                f"sent over the network. Unset HF_HUB_OFFLINE to download it, or import a copy from a folder "
                f"(`myvlm models import {e.name} FOLDER`).")
        with self._lock(e):
            report = _Reporter(progress, e.name, "listing")
            report(force=True)
            commit, files = self._listing(e)
            if e.kind == FACE_PACK:
                return self._get_pack(e, commit, files, report, cancel)
            return self._get_hub(e, commit, files, report, cancel)

    @contextlib.contextmanager
    def _lock(self, e: ModelEntry):
        """One download, removal or import of a model at a time, across threads and programs."""
        from filelock import FileLock, Timeout

        if e.kind == FACE_PACK:
            path = self.pack_dir(e.name).parent.parent / ".locks" / f"insightface-{e.name}.lock"
        else:
            path = self.cache_dir / ".locks" / self.repo_dir(e).name / "myvlm-manager.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(path), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise ModelError(f"{e.title} is being downloaded or changed by another window or program; "
                             "wait for it to finish") from None
        try:
            yield
        finally:
            lock.release()

    def _listing(self, e: ModelEntry) -> tuple[str, list[_RemoteFile]]:
        """(commit, files to fetch) from the hub's model info."""
        from huggingface_hub import HfApi
        from huggingface_hub.errors import (
            EntryNotFoundError,
            GatedRepoError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        api = HfApi(endpoint=self.endpoint, token=self.token)
        try:
            info = api.model_info(e.repo_id, revision=e.revision, files_metadata=True, timeout=CHUNK_TIMEOUT_S)
        except GatedRepoError as exc:
            raise TokenRequired(gated_message(e.repo_id, bool(self.token))) from exc
        except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as exc:
            raise ModelError(f"{e.repo_id} (revision {e.revision}) is not on the hub at {self.endpoint}: "
                             f"{_first_line(exc)}") from exc
        except Exception as exc:
            raise ModelError(f"cannot reach the model hub at {self.endpoint} to list {e.repo_id}: "
                             f"{_first_line(exc)}. Check the internet connection (or HF_ENDPOINT) and try again."
                             ) from exc
        commit = info.sha or e.revision
        siblings = {s.rfilename: s for s in (info.siblings or [])}
        prefix = ""
        if e.kind == FACE_PACK:
            prefix = self.face_pack_subfolder.format(pack=e.name).strip("/") + "/"
            if prefix == "/":
                prefix = ""
        names = {n[len(prefix):]: n for n in siblings if n.startswith(prefix)}
        chosen = _select(e, names)
        missing = [f for f in e.required if f not in chosen]
        if e.weights and not any(_matches_any(f, alt[:1]) for f in chosen for alt in e.weights):
            missing.append("weights (" + " or ".join(alt[0] for alt in e.weights) + ")")
        if missing:
            where = f" under {prefix.rstrip('/')}" if prefix else ""
            hint = f"; another repository can be chosen with ${ENV_FACE_PACK_REPO}" if e.kind == FACE_PACK else ""
            raise ModelError(f"{e.repo_id} at {self.endpoint} does not have the files {e.title} needs"
                             f"{where}: {', '.join(missing)}{hint}")
        out = []
        for rel in chosen:
            s = siblings[names[rel]]
            size = s.lfs.size if s.lfs is not None else s.size
            out.append(_RemoteFile(names[rel], rel, size, s.lfs.sha256 if s.lfs is not None else None))
        return commit, out

    def _check_space(self, folder: Path, need: int) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(folder).free
        if need > free:
            raise ModelError(f"not enough disk space: the download needs {_human(need)} more and {folder} has "
                             f"{_human(free)} free")

    def _get_hub(self, e: ModelEntry, commit: str, files: list[_RemoteFile], report: _Reporter,
                 cancel: Cancel | None) -> GetResult:
        repo = self.repo_dir(e)
        snap = repo / "snapshots" / commit
        blobs = repo / "blobs"
        total = sum(f.size or 0 for f in files)
        done_bytes, to_fetch = 0, []
        for f in files:
            pointer = snap / f.rel
            if pointer.is_file() and (f.size is None or pointer.stat().st_size == f.size):
                done_bytes += pointer.stat().st_size
            else:
                to_fetch.append(f)
        resumed = done_bytes + sum(p.stat().st_size for p in self._incomplete_blobs(e))
        self._check_space(self.cache_dir, max(0, total - resumed))
        blobs.mkdir(parents=True, exist_ok=True)
        snap.mkdir(parents=True, exist_ok=True)
        _write_ref(repo, e.revision, commit)
        result = GetResult(e.name, PARTIAL, None, commit=commit, files=[f.rel for f in files])
        report(phase="downloading", total=total, done=done_bytes, files_total=len(files),
               files_done=len(files) - len(to_fetch), resumed=resumed, force=True)
        for f in to_fetch:
            meta = self._file_meta(e, f, commit, cancel)
            etag = meta.etag or f.sha256  # the blob's name in the cache, as huggingface_hub names it
            blob = blobs / etag if etag else None
            if blob is None or not (blob.is_file() and (meta.size is None or blob.stat().st_size == meta.size)):
                key = etag or "noetag-" + hashlib.sha1(f"{commit}/{f.path}".encode()).hexdigest()
                partial = blobs / f"{key}.incomplete"
                result.resumed_bytes += partial.stat().st_size if partial.exists() else 0
                got = self._fetch(meta.location, partial, meta.size if meta.size is not None else f.size,
                                  etag, f.sha256, f.rel, report, done_bytes, cancel)
                result.downloaded_bytes += got
                if blob is None:  # the server named no ETag: the content's own SHA-256 names it (verify checks it)
                    h = hashlib.sha256()
                    _hash_file(partial, h, cancel)
                    blob = blobs / h.hexdigest()
                os.replace(partial, blob)
            _link(blob, snap / f.rel)
            done_bytes += blob.stat().st_size if blob.exists() else (snap / f.rel).stat().st_size
            report(done=done_bytes, files_done=report.state.files_done + 1, force=True)
        after = self._status(e)
        result.state, result.path = after.state, after.where
        if after.state != PRESENT:
            raise ModelError(f"{e.title}: all files were fetched but the model is still incomplete; "
                             f"`myvlm models verify {e.name}` says what is wrong")
        report(phase="done", done=done_bytes, force=True)
        return result

    def _file_meta(self, e: ModelEntry, f: _RemoteFile, commit: str, cancel: Cancel | None):
        """The file's ETag, size and address (the hub redirects LFS files to its CDN), from a HEAD request;
        retried here (not inside huggingface_hub) so that Cancel is never stuck behind its back-off."""
        from huggingface_hub import get_hf_file_metadata
        from huggingface_hub.errors import (
            EntryNotFoundError,
            GatedRepoError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        # the hub's resolve URL (what hf_hub_url makes; built here because hf_hub_url only swaps in an endpoint
        # that matches the one huggingface_hub was imported with)
        url = f"{self.endpoint}/{e.repo_id}/resolve/{quote(commit, safe='')}/{quote(f.path)}"
        for attempt in range(4):
            try:
                return get_hf_file_metadata(url, token=self.token, endpoint=self.endpoint, retry_on_errors=False,
                                            timeout=CHUNK_TIMEOUT_S)
            except GatedRepoError as exc:
                raise TokenRequired(gated_message(e.repo_id, bool(self.token))) from exc
            except (EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError) as exc:
                raise ModelError(f"{f.path} of {e.repo_id} is not available at {self.endpoint}: "
                                 f"{_first_line(exc)}") from exc
            except Exception as exc:  # network trouble: a few tries, then one sentence
                if attempt == 3:
                    raise ModelError(f"cannot reach {f.path} of {e.repo_id} at {self.endpoint}: "
                                     f"{_first_line(exc)}. Run the download again to resume it.") from exc
                log.warning("%s: %s; trying again", url, _first_line(exc))
                _sleep(0.5 * 2 ** attempt, cancel)
        raise AssertionError("unreachable")

    def _headers(self, url: str) -> dict[str, str]:
        from huggingface_hub.utils import build_hf_headers

        headers = build_hf_headers(token=self.token)
        if _origin(url) != _origin(self.endpoint):  # a CDN: the hub token stays with the hub
            headers.pop("authorization", None)
            headers.pop("Authorization", None)
        headers["Accept-Encoding"] = "identity"  # byte offsets for Range must be the file's own
        return headers

    def _fetch(self, url: str, partial: Path, size: int | None, etag: str | None, sha256: str | None,
               label: str, report: _Reporter, base_done: int, cancel: Cancel | None) -> int:
        """Download url into partial, appending to what an earlier run left there (HTTP Range), then check its size
        and hash. Dropped connections are resumed at once. Returns the bytes received by this call."""
        import httpx2
        from huggingface_hub.utils import hf_raise_for_status, http_stream_backoff

        have = partial.stat().st_size if partial.exists() else 0
        if size is not None and have > size:  # not the file we expect: start over
            partial.unlink()
            have = 0
        hasher, want = _expected_hasher(etag, sha256, size)
        if hasher is not None and have:
            report(phase="verifying", file=label, force=True)
            _hash_file(partial, hasher, cancel)
        report(phase="downloading", file=label, done=base_done + have, force=True)
        received, failures = 0, 0
        while True:
            if cancel is not None and cancel.is_set():
                raise DownloadCancelled(f"stopped; {_human(have)} of {label} kept for the next download")
            if size is not None and have >= size:
                break
            headers = self._headers(url)
            if have:
                headers["Range"] = f"bytes={have}-"
            progressed = False
            try:
                # retry_on_exceptions=(): errors while reading the body are this loop's to resume (the backoff
                # helper cannot retry once it has handed the response over)
                with http_stream_backoff("GET", url, headers=headers, timeout=CHUNK_TIMEOUT_S, max_retries=2,
                                         base_wait_time=0.5, retry_on_exceptions=()) as response:
                    if response.status_code == 416 and have:  # the partial file is not a prefix of this one
                        log.info("%s: cannot resume %s at %d bytes; starting again", url, label, have)
                        partial.unlink(missing_ok=True)
                        have = 0
                        hasher, want = _expected_hasher(etag, sha256, size)
                        raise httpx2.RemoteProtocolError("range not satisfiable")
                    try:
                        hf_raise_for_status(response)
                    except Exception as exc:
                        raise ModelError(f"the hub refused {label} ({_first_line(exc)}); {_human(have)} are "
                                         "kept: try again later") from exc
                    if have and response.status_code == 200:  # the server ignored Range: the whole file comes
                        log.info("%s: the server does not resume; starting %s again", url, label)
                        partial.unlink(missing_ok=True)
                        have = 0
                        hasher, want = _expected_hasher(etag, sha256, size)
                    with partial.open("ab") as out:
                        for chunk in response.iter_bytes():
                            if cancel is not None and cancel.is_set():
                                raise DownloadCancelled(
                                    f"stopped; {_human(have)} of {label} kept for the next download")
                            if not chunk:
                                continue
                            out.write(chunk)
                            if hasher is not None:
                                hasher.update(chunk)
                            have += len(chunk)
                            received += len(chunk)
                            progressed = True
                            report(done=base_done + have)
                if size is None:
                    break
                if have < size:
                    raise httpx2.RemoteProtocolError(f"the server sent {have} of {size} bytes")
            except (httpx2.TransportError, OSError) as exc:
                if isinstance(exc, OSError) and not isinstance(exc, (ConnectionError, TimeoutError)):
                    raise ModelError(f"cannot write {partial}: {exc}") from exc
                failures = 0 if progressed else failures + 1
                if failures > RETRIES:
                    raise ModelError(f"the download of {label} keeps failing ({_first_line(exc)}); "
                                     f"{_human(have)} are kept: run it again to resume") from exc
                log.warning("download of %s interrupted at %d bytes (%s); resuming", label, have, _first_line(exc))
                _sleep(min(0.2 * 2 ** failures, 5.0), cancel)
        if size is not None and have != size:
            partial.unlink(missing_ok=True)
            raise ModelError(f"{label}: got {have} bytes, expected {size}; the partial file was deleted, "
                             "download again")
        if hasher is not None and hasher.hexdigest() != want:
            partial.unlink(missing_ok=True)
            raise ModelError(f"{label} arrived damaged (its hash is not the hub's {want[:12]}…); the file was "
                             "deleted: download again")
        report(done=base_done + have, force=True)
        return received

    def _get_pack(self, e: ModelEntry, commit: str, files: list[_RemoteFile], report: _Reporter,
                  cancel: Cancel | None) -> GetResult:
        staging = self._staging_dir(e.name)
        staging.mkdir(parents=True, exist_ok=True)
        total = sum(f.size or 0 for f in files)
        done_bytes = 0
        for f in files:
            final = staging / f.rel
            if final.is_file() and (f.size is None or final.stat().st_size == f.size):
                done_bytes += final.stat().st_size
        resumed = done_bytes + sum(p.stat().st_size for p in staging.glob("*.incomplete"))
        self._check_space(staging, max(0, total - resumed))
        result = GetResult(e.name, PARTIAL, None, commit=commit, files=[f.rel for f in files], resumed_bytes=0)
        report(phase="downloading", total=total, done=done_bytes, files_total=len(files), resumed=resumed,
               files_done=sum((staging / f.rel).is_file() for f in files), force=True)
        manifest: dict[str, Any] = {"source": "hub", "repo": e.repo_id, "endpoint": self.endpoint,
                                    "commit": commit, "licence": e.licence, "files": {}}
        for f in files:
            final = staging / f.rel
            meta = None
            if not (final.is_file() and (f.size is None or final.stat().st_size == f.size)):
                meta = self._file_meta(e, f, commit, cancel)
                partial = staging / f"{f.rel}.incomplete"
                result.resumed_bytes += partial.stat().st_size if partial.exists() else 0
                result.downloaded_bytes += self._fetch(meta.location, partial, meta.size or f.size, meta.etag,
                                                       f.sha256, f.rel, report, done_bytes, cancel)
                os.replace(partial, final)
                done_bytes += final.stat().st_size
                report(done=done_bytes, files_done=report.state.files_done + 1, force=True)
            sha = f.sha256 or (meta.etag if meta is not None and meta.etag and _HEX64.match(meta.etag) else None)
            if sha is None:
                report(phase="verifying", file=f.rel, force=True)
                h = hashlib.sha256()
                _hash_file(final, h, cancel)
                sha = h.hexdigest()
            manifest["files"][f.rel] = {"size": final.stat().st_size, "sha256": sha}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
        target = self._install_pack(e, staging)
        result.state, result.path = PRESENT, str(target)
        report(phase="done", done=done_bytes, force=True)
        return result

    def _install_pack(self, e: ModelEntry, staging: Path) -> Path:
        """Move a finished staging folder into place (one rename: a half-installed pack is never seen)."""
        target = self.pack_dir(e.name)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            if not self._ours(target):
                raise ModelError(f"{target} exists and is not a pack folder of this library")
            old = staging.with_name(f"{e.name}.old-{os.getpid()}")  # outside insightface/: never seen as a pack
            os.replace(target, old)
            os.replace(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, target)
        _remove_empty_dirs(self.models_dir / "downloads", stop=self.models_dir, include_root=True)
        return target

    # -- verify -----------------------------------------------------------------------------------------------------

    def verify(self, name: str, fix: bool = False, progress: ProgressFn | None = None,
               cancel: Cancel | None = None) -> VerifyReport:
        """Check the model's files on disk against their sizes and hashes, without the network. fix=True deletes
        damaged files (and their cache entries), so that get() fetches them again."""
        e = self.entry(name)
        if fix and e.kind != PACKAGE:
            with self._lock(e):
                return self._verify(e, progress, cancel, fix=True)
        return self._verify(e, progress, cancel, fix=False)

    def _verify(self, e: ModelEntry, progress, cancel, *, fix: bool) -> VerifyReport:
        st = self._status(e)
        rep = VerifyReport(e.name, False, st.state)
        report = _Reporter(progress, e.name, "verifying")
        if e.kind == PACKAGE:
            info = dlib_models()
            for fname, ok in (info.get("files") or {}).items():
                (rep.checked if ok else rep.problems).append(fname if ok else f"{fname} is missing")
            if not info.get("dlib"):
                rep.problems.append("the dlib package is not installed")
            rep.ok = not rep.problems and st.state == PRESENT
            return rep
        if e.kind == FACE_PACK:
            return self._verify_pack(e, st, rep, fix, report, cancel)
        snap = self._ref_snapshot(e)
        if snap is None:
            rep.problems.append("not downloaded" if st.state == MISSING else "no complete download yet")
            return rep
        files = self._model_files(e, snap)
        report(total=sum(p.stat().st_size for p in files if p.exists()), files_total=len(files), force=True)
        done = 0
        for path in files:
            rel = path.relative_to(snap).as_posix()
            report(file=rel)
            if path.is_symlink():
                target = Path(os.path.abspath(path.parent / os.readlink(path)))
                if not target.exists():
                    rep.problems.append(f"{rel}: its data ({target.name}) is missing")
                    if fix:
                        path.unlink()
                        rep.removed.append(rel)
                    continue
                why = _check_file(target, target.name)
                if why in (None, "unverifiable"):  # a right hash proves the bytes arrived, not that they load
                    loads = _weights_problem(e, target, rel)
                    why = f"it {loads}" if loads else why
                if why == "unverifiable":
                    rep.unverified.append(rel)
                elif why:
                    rep.problems.append(f"{rel}: damaged ({why})")
                    if fix:
                        path.unlink()
                        target.unlink(missing_ok=True)
                        rep.removed.append(rel)
                else:
                    rep.checked.append(rel)
                done += target.stat().st_size if target.exists() else 0
            else:
                loads = _weights_problem(e, path, rel)
                (rep.problems if loads else rep.unverified).append(f"{rel}: damaged (it {loads})" if loads else rel)
                done += path.stat().st_size
            report(done=done)
            if cancel is not None and cancel.is_set():
                raise DownloadCancelled("verification stopped")
        if not self._complete(e, snap):
            rep.problems.append("files are missing (" + ", ".join(
                [f for f in e.required if not (snap / f).is_file()] or ["weights"]) + ")")
        if self._incomplete_blobs(e):
            rep.problems.append("an unfinished download is waiting (Download resumes it)")
        rep.state = self._status(e).state
        rep.ok = not rep.problems and rep.state == PRESENT
        report(done=done, force=True)
        return rep

    def _verify_pack(self, e: ModelEntry, st: ModelStatus, rep: VerifyReport, fix: bool, report: _Reporter,
                     cancel: Cancel | None) -> VerifyReport:
        folder = self._found_pack(e.name)
        if folder is None:
            rep.problems.append("not installed" if st.state == MISSING else "the download is not finished")
            return rep
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
            expected = manifest.get("files", {})
        except (OSError, ValueError):
            expected = {}
        for req in e.required:
            if not (folder / req).is_file() and req not in expected:
                if not expected and len(list(folder.glob("*.onnx"))) >= 2:
                    continue  # a pack unpacked by hand with other file names
                rep.problems.append(f"{req} is missing")
        for path in sorted(folder.glob("*.onnx")):
            if cancel is not None and cancel.is_set():
                raise DownloadCancelled("verification stopped")
            report(file=path.name, force=True)
            want = expected.get(path.name)
            if not want:
                rep.unverified.append(path.name)
                continue
            bad = None
            if path.stat().st_size != want.get("size"):
                bad = f"size {path.stat().st_size} is not {want.get('size')}"
            else:
                h = hashlib.sha256()
                _hash_file(path, h, cancel)
                if h.hexdigest() != want.get("sha256"):
                    bad = f"hash {h.hexdigest()[:12]}… is not the expected {str(want.get('sha256'))[:12]}…"
            if bad:
                rep.problems.append(f"{path.name}: damaged ({bad})")
                if fix and self._ours(folder):
                    path.unlink()
                    rep.removed.append(path.name)
            else:
                rep.checked.append(path.name)
        for fname in expected:
            if not (folder / fname).exists() and f"{fname} is missing" not in rep.problems:
                rep.problems.append(f"{fname} is missing")
        if rep.removed and self._ours(folder):
            # a damaged pack must not be picked by "auto": move what is left back to the download folder
            staging = self._staging_dir(e.name)
            staging.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(staging, ignore_errors=True)
            os.replace(folder, staging)
        rep.state = self._status(e).state
        rep.ok = not rep.problems and rep.state == PRESENT
        return rep

    # -- remove -----------------------------------------------------------------------------------------------------

    def remove(self, name: str) -> int:
        """Delete the model's files (and any unfinished download of it); returns the bytes freed. Hub models:
        only this model's files of its repository, through huggingface_hub's cache deletion."""
        e = self.entry(name)
        if e.kind == PACKAGE:
            raise ModelError("the dlib face models are part of the app's packages and cannot be removed here")
        with self._lock(e):
            if e.kind == FACE_PACK:
                return self._remove_pack(e)
            return self._remove_hub(e)

    def _remove_pack(self, e: ModelEntry) -> int:
        freed = 0
        found = self._found_pack(e.name)
        if found is not None and not self._ours(found):
            raise ModelError(f"{e.name} is installed in {found}, outside this library; delete that folder yourself "
                             "if you want it gone")
        for folder in (self.pack_dir(e.name), self._staging_dir(e.name)):
            if folder.exists():
                freed += sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
                shutil.rmtree(folder)
        _remove_empty_dirs(self.models_dir / "downloads", stop=self.models_dir, include_root=True)
        return freed

    def _remove_hub(self, e: ModelEntry) -> int:
        from huggingface_hub import scan_cache_dir

        repo_path = self.repo_dir(e)
        if not repo_path.exists():
            return 0
        freed = 0
        info = scan_cache_dir(self.cache_dir)
        repo = next((r for r in info.repos if r.repo_path == repo_path), None)
        if repo is not None:
            whole, files = [], []
            for rev in repo.revisions:
                ours = [f for f in rev.files if e.matches(f.file_path.relative_to(rev.snapshot_path).as_posix())]
                if ours and len(ours) == len(rev.files):
                    whole.append(rev.commit_hash)
                else:
                    files.extend(ours)
            if whole:
                strategy = info.delete_revisions(*whole)
                freed += strategy.expected_freed_size
                strategy.execute()
            if files:
                info = scan_cache_dir(self.cache_dir) if whole else info
                present = {f.file_path for r in info.repos for rev in r.revisions for f in rev.files}
                strategy = info.delete_files(*[f for f in files if f.file_path in present])
                freed += strategy.expected_freed_size
                strategy.execute()
        for inc in info.incomplete_files:  # unfinished downloads of this repository
            if repo_path in inc.file_path.parents and inc.file_path.exists():
                freed += inc.size_on_disk
                inc.file_path.unlink()
        if repo_path.exists():
            _remove_empty_dirs(repo_path, stop=self.cache_dir, include_root=True)
            ref = repo_path / "refs" / e.revision
            if ref.is_file() and self._ref_snapshot(e) is None:
                ref.unlink()  # it named a snapshot that is gone now
                _remove_empty_dirs(repo_path, stop=self.cache_dir, include_root=True)
        return freed

    # -- import -----------------------------------------------------------------------------------------------------

    def import_folder(self, name: str, folder: Path | str, progress: ProgressFn | None = None,
                      cancel: Cancel | None = None) -> GetResult:
        """Copy a model from a local folder (an `hf download --local-dir` folder, a snapshot folder
        of another computer's cache, an unpacked face pack zip) into its place, checking it on the way. The
        folder is only read."""
        e = self.entry(name)
        source = Path(folder).expanduser()
        if e.kind == PACKAGE:
            raise ModelError("the dlib face models come with the app's packages; there is nothing to import")
        if e.name == "minigpt-v2" and source.is_file():
            return self._import_minigpt_v2_checkpoint(source)
        if not source.is_dir():
            raise ModelError(f"{source} is not a folder")
        with self._lock(e):
            if e.kind == FACE_PACK:
                return self._import_pack(e, source, progress, cancel)
            return self._import_hub(e, source, progress, cancel)

    def _import_minigpt_v2_checkpoint(self, source: Path) -> GetResult:
        """The official minigptv2_checkpoint.pth (its projection and LoRA weights) into <models>/minigpt-v2/, after
        checking that it loads with weights_only (a pickle with code in it is refused) and is MiniGPT-v2's."""
        from engine.models.files import load_problem
        from engine.models.vlm.specs import MINIGPT_V2_CHECKPOINT, MINIGPT_V2_FOLDER

        if self.models_dir is None:
            raise ModelError("MiniGPT-v2's checkpoint lives in a library's models folder: open a library first "
                             "(myvlm --library PATH models import ...)")
        problem = load_problem(source)
        if problem is None:
            from engine.models.vlm.minigpt_v2 import load_official_checkpoint

            try:
                if "llama_proj.weight" not in load_official_checkpoint(source):
                    problem = "has no llama_proj weights, so it is not a MiniGPT-v2 checkpoint"
            except ValueError as exc:
                problem = str(exc)
        if problem:
            raise ModelError(f"{source.name} was not imported: it {problem.removeprefix('it ')}")
        dest = self.models_dir / MINIGPT_V2_FOLDER / MINIGPT_V2_CHECKPOINT
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".tmp")
        shutil.copyfile(source, tmp)
        os.replace(tmp, dest)
        return GetResult("minigpt-v2", PRESENT, str(dest), files=[dest.name], downloaded_bytes=0)

    def _import_hub(self, e: ModelEntry, source: Path, progress, cancel) -> GetResult:
        names = {}
        for path in sorted(source.rglob("*")):
            rel = path.relative_to(source).as_posix()
            if path.is_file() and not any(part.startswith(".") for part in Path(rel).parts):
                names[rel] = rel
        chosen = _select(e, names)
        if not self._complete(e, source) or not chosen:
            need = list(e.required) + [" or ".join(alt[0] for alt in e.weights)] if e.weights else list(e.required)
            raise ModelError(f"{source} does not hold {e.title}: it needs {', '.join(need)}")
        commit = _folder_commit(source, chosen)
        repo = self.repo_dir(e)
        snap = repo / "snapshots" / commit
        total = sum((source / r).stat().st_size for r in chosen)
        self._check_space(self.cache_dir, total)
        report = _Reporter(progress, e.name, "copying", total=total, files_total=len(chosen))
        report(force=True)
        (repo / "blobs").mkdir(parents=True, exist_ok=True)
        done = 0
        created: list[Path] = []  # taken away again if the import fails half way: no orphaned cache entries
        try:
            for rel in chosen:
                src = source / rel
                recorded = _local_dir_etag(source, rel)
                size = src.stat().st_size
                if recorded:  # the download's own record: the hub's ETag, so the file is checked against it
                    etag = recorded
                elif size > 10_000_000 or not _is_text_like(rel):
                    h = hashlib.sha256()
                    report(phase="verifying", file=rel, force=True)
                    _hash_file(src, h, cancel)
                    etag = h.hexdigest()
                else:
                    h = git_blob_sha1(size)
                    _hash_file(src, h, cancel)
                    etag = h.hexdigest()
                blob = repo / "blobs" / etag
                report(phase="copying", file=rel, force=True)
                if not blob.is_file():
                    tmp = blob.with_name(f"{etag}.import-{os.getpid()}.incomplete")
                    try:
                        hasher, want = _expected_hasher(etag, None, size)
                        _copy(src, tmp, hasher, cancel, lambda n, base=done: report(done=base + n))
                        if hasher is not None and hasher.hexdigest() != want:
                            raise ModelError(f"{rel} in {source} is damaged: its hash does not match its "
                                             f"download record ({want[:12]}…); nothing was imported")
                        os.replace(tmp, blob)
                        created.append(blob)
                    finally:
                        tmp.unlink(missing_ok=True)
                why = _weights_problem(e, blob, rel)  # the bytes are the ones recorded, but do they load?
                if why:
                    raise ModelError(f"{source} was not imported: {rel} {why}")
                pointer = snap / rel
                if not (pointer.is_symlink() or pointer.exists()):
                    created.append(pointer)
                _link(blob, pointer)
                done += size
                report(done=done, files_done=report.state.files_done + 1, force=True)
        except BaseException:
            for path in reversed(created):
                path.unlink(missing_ok=True)
            _remove_empty_dirs(repo, stop=self.cache_dir, include_root=True)
            raise
        _write_ref(repo, e.revision, commit)
        st = self._status(e)
        report(phase="done", force=True)
        return GetResult(e.name, st.state, st.where, files=chosen, commit=commit)

    def _import_pack(self, e: ModelEntry, source: Path, progress, cancel) -> GetResult:
        from engine.models.faces.backends import _pack_folder
        from engine.models.faces.insightface_backend import _onnx_role

        pack = _pack_folder(source) or source
        onnx = sorted(pack.glob("*.onnx"))
        roles = {}
        for path in onnx:
            try:
                roles[path.name] = _onnx_role(path)
            except Exception as exc:
                raise ModelError(f"{path} is not a readable ONNX model: {_first_line(exc)}") from exc
        if "detection" not in roles.values() or "recognition" not in roles.values():
            have = ", ".join(f"{n} ({r})" for n, r in roles.items()) or "no .onnx files"
            raise ModelError(f"{pack} is not a face pack: it needs a detection and a recognition ONNX model "
                             f"(has {have})")
        staging = self._staging_dir(e.name)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        total = sum(p.stat().st_size for p in onnx)
        self._check_space(staging, total)
        report = _Reporter(progress, e.name, "copying", total=total, files_total=len(onnx))
        manifest: dict[str, Any] = {"source": "import", "from": str(pack), "licence": e.licence, "files": {}}
        done = 0
        for path in onnx:
            h = hashlib.sha256()
            report(file=path.name, force=True)
            _copy(path, staging / path.name, h, cancel, lambda n, base=done: report(done=base + n))
            manifest["files"][path.name] = {"size": path.stat().st_size, "sha256": h.hexdigest()}
            done += path.stat().st_size
            report(done=done, files_done=report.state.files_done + 1, force=True)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
        target = self._install_pack(e, staging)
        report(phase="done", force=True)
        return GetResult(e.name, PRESENT, str(target), files=[p.name for p in onnx])

    # -- reports ----------------------------------------------------------------------------------------------------

    def doctor_rows(self) -> dict[str, Any]:
        """The `models` part of `myvlm doctor --json` (its shape predates the manager)."""
        rows = self.status()
        packs = [{"name": s.name, "state": s.state, "path": s.where if s.state != MISSING else None,
                  "licence": s.licence, "fix": s.fix} for s in rows if s.kind == FACE_PACK]
        hub = [{"name": s.repo_id, "model": s.name, "purpose": s.purpose, "licence": s.licence, "state": s.state,
                "size_mb": round(s.size_bytes / 1e6) if s.state == PRESENT else None, "fix": s.fix}
               for s in rows if s.kind == HUB]
        return {"dlib_face": dlib_models(), "insightface_packs": packs, "hub": hub,
                "catalogue": [s.as_dict() for s in rows],
                "hub_cache": str(self.cache_dir), "endpoint": self.endpoint, "offline": self.offline}


# -- helpers ---------------------------------------------------------------------------------------------------------

def dlib_models() -> dict[str, Any]:
    """The dlib face models, installed with the app (face-recognition-models)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        return {"state": MISSING, "licence": "CC0",
                "fix": "pip install face-recognition-models (part of the default install)"}
    folder = Path(next(iter(spec.submodule_search_locations))) / "models"
    files = {name: (folder / name).exists() for name in DLIB_FILES}
    dlib_ok = importlib.util.find_spec("dlib") is not None
    state = PRESENT if all(files.values()) and dlib_ok else PARTIAL
    return {"state": state, "path": str(folder), "files": files, "dlib": dlib_ok, "licence": "CC0",
            "fix": None if state == PRESENT else
            "reinstall: pip install --force-reinstall dlib-bin face-recognition-models"}


def _matches_any(path: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(path, p) for p in patterns)


def _select(e: ModelEntry, names: Iterable[str]) -> list[str]:
    """The files of a listing that the model needs: its files, and the weights in the first format present."""
    names = list(names)
    all_weights = [p for alt in e.weights for p in alt]
    chosen = [n for n in names if _matches_any(n, e.files) and not _matches_any(n, all_weights)]
    for alt in e.weights:
        if any(_matches_any(n, alt[:1]) for n in names):
            chosen += [n for n in names if _matches_any(n, alt) and n not in chosen]
            break
    return sorted(chosen)


def _weights_complete(folder: Path, alt: tuple[str, ...]) -> bool:
    """One weight format is complete in a folder: its shard index's shards are all there, or (no index) a weights
    file is."""
    indexes = [p for p in folder.glob("*.index.json") if _matches_any(p.name, alt[1:])]
    for index in indexes:
        try:
            shards = set(json.loads(index.read_text()).get("weight_map", {}).values())
        except (OSError, ValueError):
            return False
        return bool(shards) and all((folder / s).is_file() for s in shards)
    return any(p.is_file() and _matches_any(p.name, alt[:1]) and not p.name.endswith(".json")
               for p in folder.iterdir())


def _damaged_weights(e: ModelEntry, snap: Path, files: list[Path]) -> str | None:
    """"<file> is cut short…" for the first weights file of a snapshot whose safetensors header does not match its
    size (a few kilobytes read per file, so listing the models stays quick), or None."""
    from engine.models.files import quick_problem

    for path in files:
        rel = path.relative_to(snap).as_posix()
        if path.exists() and any(_matches_any(rel, alt[:1]) for alt in e.weights):
            why = quick_problem(path, rel)
            if why:
                return f"{rel} {why}"
    return None


def _weights_problem(e: ModelEntry, path: Path, rel: str) -> str | None:
    """Why a weights file of the model would not load (cut short, a refused pickle), or None; other files pass."""
    from engine.models.files import load_problem

    if not any(_matches_any(rel, alt[:1]) for alt in e.weights) or rel.endswith(".json"):
        return None
    return load_problem(path, rel)


def _write_ref(repo: Path, revision: str, commit: str) -> None:
    if revision == commit:
        return
    ref = repo / "refs" / revision
    ref.parent.mkdir(parents=True, exist_ok=True)
    try:
        if ref.read_text() == commit:
            return
    except OSError:
        pass
    tmp = ref.with_name(f".{ref.name}.{os.getpid()}.tmp")
    tmp.write_text(commit)
    os.replace(tmp, ref)


def _link(blob: Path, pointer: Path) -> None:
    """The snapshot entry: a relative symlink to the blob, as huggingface_hub makes them (a copy where the file
    system has no symlinks)."""
    pointer.parent.mkdir(parents=True, exist_ok=True)
    if pointer.is_symlink() or pointer.exists():
        if pointer.resolve() == blob.resolve():
            return
        pointer.unlink()
    try:
        os.symlink(os.path.relpath(blob, pointer.parent), pointer)
    except OSError:
        shutil.copyfile(blob, pointer)


def _copy(src: Path, dst: Path, hasher, cancel: Cancel | None, report: Callable[[int], None],
          block: int = 4 << 20) -> None:
    done = 0
    with src.open("rb") as fin, dst.open("wb") as fout:
        while True:
            if cancel is not None and cancel.is_set():
                raise DownloadCancelled("import stopped; nothing was changed")
            data = fin.read(block)
            if not data:
                break
            fout.write(data)
            if hasher is not None:
                hasher.update(data)
            done += len(data)
            report(done)


def _local_dir_etag(folder: Path, rel: str) -> str | None:
    """The hub ETag that `hf download --local-dir` recorded for a file (read without touching the
    folder: huggingface_hub's own reader creates folders)."""
    meta = folder / ".cache" / "huggingface" / "download" / f"{rel}.metadata"
    try:
        lines = meta.read_text().splitlines()
    except OSError:
        return None
    etag = lines[1].strip() if len(lines) > 1 else ""
    return etag if (_HEX40.match(etag) or _HEX64.match(etag)) else None


def _folder_commit(folder: Path, files: list[str]) -> str:
    """The commit a folder's files came from: the local-dir download record, a cache snapshot's folder name, or
    (unknown) a stable stand-in made from the files' names and sizes."""
    for rel in files:
        meta = folder / ".cache" / "huggingface" / "download" / f"{rel}.metadata"
        try:
            commit = meta.read_text().splitlines()[0].strip()
        except (OSError, IndexError):
            continue
        if _HEX40.match(commit):
            return commit
    if _HEX40.match(folder.name) and folder.parent.name == "snapshots":
        return folder.name
    h = hashlib.sha1(b"myvlm-import\0")
    for rel in files:
        h.update(f"{rel}\0{(folder / rel).stat().st_size}\0".encode())
    return h.hexdigest()


def _is_text_like(rel: str) -> bool:
    return rel.endswith((".json", ".txt", ".model", ".md", ".py", ".tiktoken", ".yaml", ".yml"))


def _remove_empty_dirs(root: Path, stop: Path | None, include_root: bool = False) -> None:
    """Delete empty folders under root (root too when include_root), never `stop` or anything above it."""
    if not root.is_dir():
        return
    for dirpath, _dirs, _files in sorted(os.walk(root), key=lambda t: -len(t[0])):
        p = Path(dirpath)
        if (p == root and not include_root) or (stop is not None and p == stop):
            continue
        try:
            p.rmdir()
        except OSError:
            pass


def _sleep(seconds: float, cancel: Cancel | None) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if cancel is not None and cancel.is_set():
            raise DownloadCancelled("stopped")
        time.sleep(min(0.05, max(0.0, end - time.monotonic())))


def _origin(url: str) -> tuple[str, str, int | None]:
    u = urlparse(url)
    return u.scheme, (u.hostname or "").lower(), u.port


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
