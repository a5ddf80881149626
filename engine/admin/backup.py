"""Back up, restore and move a library: the catalog, the concept files and the face crops (optionally the
thumbnails), never the photos.

The photos stay where they are: the catalog stores their paths, and nothing here reads, copies, moves or changes an
album file. What a library derives from them lives in its folder (engine/storage/library_folder.py), and that is what is saved.

- **Backup** (`backup_library`): the catalog is copied with SQLite's online backup API (`Connection.backup`): one
  consistent snapshot, even while the app or a `myvlm` command is writing. The files that go with it (concept heads
  and embeddings, imported training images, face crops, thumbnails with `with_thumbnails`) are the ones the
  snapshot knows about, so a restored catalog never finds a stranger's file under a reused id. Everything is written
  under a temporary name beside the destination with a `manifest.json` (the app version, the schema, and the
  sha256 and size of every file) written last; only then is the folder renamed to its real name. An interrupted
  backup is a hidden `.NAME.partial-*` folder without a manifest, never something that looks complete.
- **Restore** (`restore_library`): the manifest's hashes and SQLite's `PRAGMA integrity_check` are verified
  before anything is touched; a library that holds anything is only replaced with `force`; the backup is copied
  into a new folder beside the target, checked again, and only then swapped in by renaming.
- **Move** (`move_library`): the whole library folder is copied (the catalog again through the backup API, while
  other writers are held off), every file compared with the original, and then the default library pointer
  (engine/storage/library_folder.py) is switched. The old folder is kept unless `delete_old`.

Previews are a cache rebuilt from the photos on demand, and the models folder holds downloads that can be fetched
again, so backups leave both out (a move takes the whole folder, models included).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from engine import __version__, errors
from engine.errors import UserError
from engine.progress import ProgressFn, report
from engine.storage.library_folder import LibraryPaths, default_library_path, follow_moves, record_library_move

log = logging.getLogger(__name__)

FORMAT = "myvlm-library-backup/1"
MANIFEST = "manifest.json"
DB_NAME = "library.db"
DB_SIDE_FILES = ("library.db-wal", "library.db-shm", "library.db-journal")
LAYOUT = {DB_NAME, *DB_SIDE_FILES, "thumbs", "previews", "models", "concepts", "faces", "logs",
          "search"}  # search: the picture-search matrix saved between processes (engine/domain/search/visual.py), a cache
CHUNK = 1024 * 1024
BUSY_TIMEOUT_S = 120.0
COUNTED_TABLES = ("folders", "photos", "people", "faces", "concepts", "captions", "qa")

# progress: engine.progress.Progress(phase, done, total); phase is "catalog", "files" or "verify"


class BackupError(UserError, RuntimeError):
    """A backup, restore or move that cannot be done; the message says why and what to do."""


class Cancelled(BackupError, errors.Cancelled):
    """The user stopped a backup, restore or move (engine.errors.Cancelled)."""


@dataclass
class BackupReport:
    path: str
    files: int
    bytes: int
    seconds: float
    with_thumbnails: bool
    counts: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RestoreReport:
    library: str
    backup: str
    files: int
    bytes: int
    seconds: float
    replaced: bool
    app_version: str
    created: str
    counts: dict[str, int] = field(default_factory=dict)
    thumbnails_to_rebuild: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class MoveReport:
    old: str
    new: str
    files: int
    bytes: int
    seconds: float
    default: bool
    pointer: str | None
    old_deleted: bool
    old_kept_reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# -- small tools ---------------------------------------------------------------------------------------------------

def _stamp() -> str:
    return datetime.now().strftime("%Y%m%d-%H%M%S")


def _token() -> str:
    return secrets.token_hex(4)


def _is_within(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
    except ValueError:
        return False
    return True


def _real(path: Path) -> Path:
    """An absolute path with symlinks resolved (for "is one inside the other" questions only)."""
    return Path(os.path.realpath(path))


def sha256_file(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _copy_hashed(src: Path, dst: Path, *, attempts: int = 3, strict: bool = True) -> tuple[str, int]:
    """Copy a file, hashing the bytes written, and fsync it. A file that changed while it was read (a training
    run rewriting a checkpoint in place) is copied again; the app's own writers replace files atomically.
    Not `strict` (a log file that grows): the last copy is kept even if the file went on changing."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(attempts):
        before = os.stat(src)
        h = hashlib.sha256()
        size = 0
        with open(src, "rb") as fin, open(dst, "wb") as fout:
            while chunk := fin.read(CHUNK):
                h.update(chunk)
                fout.write(chunk)
                size += len(chunk)
            fout.flush()
            os.fsync(fout.fileno())
        after = os.stat(src)
        if (before.st_mtime_ns == after.st_mtime_ns and before.st_size == after.st_size == size) or (
                not strict and attempt == attempts - 1):
            shutil.copystat(src, dst)
            return h.hexdigest(), size
        log.info("%s changed while it was copied (attempt %d): copying it again", src, attempt + 1)
    raise BackupError(f"{src} kept changing while it was copied; try again when the app is idle")


def _check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled("stopped: nothing was written (the unfinished copy was removed)")


def _connect(db: Path, *, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        conn = sqlite3.connect(f"{db.absolute().as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S,
                               isolation_level=None)
    else:
        conn = sqlite3.connect(db, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
    return conn


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _counts(conn: sqlite3.Connection) -> dict[str, int]:
    have = _tables(conn)
    return {t: int(conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]) for t in COUNTED_TABLES if t in have}


def snapshot_catalog(source: Path | sqlite3.Connection, target: Path) -> dict[str, Any]:
    """Copy a catalog with SQLite's online backup API into `target` (a new, self-contained file: rollback journal,
    not WAL, so it can be opened read-only anywhere). One step, so the copy is one consistent snapshot however busy
    the source is. Returns what the snapshot holds: schema version, counts, and the ids its files are keyed by."""
    if target.exists():
        target.unlink()
    own = not isinstance(source, sqlite3.Connection)
    src = _connect(source) if own else source
    try:
        dst = sqlite3.connect(target, isolation_level=None)
        try:
            src.backup(dst)   # pages=-1: everything in one step, under one read transaction of the source
            dst.execute("PRAGMA journal_mode = DELETE")
            if "stage_claims" in _tables(dst):
                # the claims of runs working on the source library: no run of a restored or moved copy holds them
                dst.execute("DELETE FROM stage_claims")
            check = dst.execute("PRAGMA integrity_check").fetchone()[0]
            if check != "ok":
                raise BackupError(f"the library's catalog failed SQLite's integrity check ({check}); "
                                  "it was not backed up")
            info = _snapshot_info(dst)
        finally:
            dst.close()
    finally:
        if own:
            src.close()
    return info


def _snapshot_info(conn: sqlite3.Connection) -> dict[str, Any]:
    have = _tables(conn)
    info: dict[str, Any] = {"schema_version": int(conn.execute("PRAGMA user_version").fetchone()[0]),
                            "counts": _counts(conn)}
    info["concept_ids"] = ({r[0] for r in conn.execute("SELECT id FROM concepts")} if "concepts" in have else set())
    info["face_ids"] = {r[0] for r in conn.execute("SELECT id FROM faces")} if "faces" in have else set()
    info["hashes"] = ({r[0] for r in conn.execute("SELECT DISTINCT content_hash FROM photos WHERE content_hash "
                                                  "IS NOT NULL")} if "photos" in have else set())
    return info


def _walk_files(root: Path) -> Iterable[Path]:
    """Regular files under root, sorted, skipping temporaries of atomic writers (*.tmp, .tmp-*) and symlinks."""
    if not root.is_dir():
        return []
    out = []
    for dirpath, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            if name.endswith(".tmp") or name.startswith(".tmp-"):
                continue
            p = Path(dirpath) / name
            if p.is_symlink() or not p.is_file():
                continue
            out.append(p)
    return out


def _symlinks(root: Path) -> dict[str, str]:
    """Symbolic links inside a library folder (relative path → what the link says), not followed."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath) / name
            if p.is_symlink():
                target = os.readlink(p)   # a relative link would point elsewhere from the new place
                out[p.relative_to(root).as_posix()] = target if os.path.isabs(target) else os.path.normpath(
                    os.path.join(os.path.dirname(os.path.abspath(p)), target))
    return out


def _library_files(paths: LibraryPaths, info: dict[str, Any], with_thumbnails: bool) -> list[Path]:
    """The files that go with a catalog snapshot: what its concepts, faces (and photos' thumbnails) refer to."""
    files: list[Path] = []
    for p in _walk_files(paths.concepts):
        top = p.relative_to(paths.concepts).parts[0]
        if top.isdigit() and int(top) not in info["concept_ids"]:
            continue   # a concept made after the snapshot, or removed files: not this catalog's
        files.append(p)
    for p in _walk_files(paths.faces):
        stem = p.stem
        if p.parent == paths.faces and stem.isdigit() and int(stem) not in info["face_ids"]:
            continue
        files.append(p)
    if with_thumbnails:
        files += [p for p in _walk_files(paths.thumbs) if p.stem in info["hashes"]]
    return files


# -- the default library pointer and "is it in use" -----------------------------------------------------------------

def library_in_use(root: Path) -> bool:
    """True when another connection (the desktop app, a `myvlm` command, an indexing worker) has the catalog open.

    In WAL mode every open connection keeps a shared lock, and leaving WAL mode needs the only one; so asking for
    the rollback journal (and going straight back) answers the question without changing anything."""
    db = LibraryPaths(root).db
    if not db.exists():
        return False
    conn = sqlite3.connect(db, timeout=0, isolation_level=None)
    try:
        try:
            mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
            if mode != "wal":
                return False   # a rollback-journal database holds no lock while idle
            changed = conn.execute("PRAGMA journal_mode = DELETE").fetchone()[0]
        except sqlite3.OperationalError:   # "database is locked": someone is writing right now
            return True
        if changed != "wal":
            conn.execute("PRAGMA journal_mode = WAL")
            return False
        return True
    finally:
        conn.close()


def _user_data(root: Path) -> tuple[bool, str]:
    """(holds anything worth keeping, a description) of a library folder."""
    paths = LibraryPaths(root)
    what = []
    if paths.db.exists():
        try:
            conn = _connect(paths.db)
            try:
                counts = _counts(conn)
            finally:
                conn.close()
        except sqlite3.DatabaseError as exc:
            return True, f"a catalog SQLite cannot read ({exc})"
        what += [f"{n} {t}" for t, n in counts.items() if n and t in ("folders", "photos", "people", "concepts")]
    for sub in (paths.concepts, paths.faces, paths.thumbs):
        n = sum(1 for _ in _walk_files(sub))
        if n:
            what.append(f"{n} file(s) in {sub.name}/")
    return bool(what), ", ".join(what)


def _foreign_entries(root: Path) -> list[str]:
    if not root.is_dir():
        return []
    return sorted(e.name for e in root.iterdir() if e.name not in LAYOUT)


def library_is_empty(root: Path) -> bool:
    """A folder a restore may fill without asking: missing, empty, or a library that holds nothing yet (opening a
    library makes its folders and an empty catalog)."""
    root = Path(root)
    if not root.exists():
        return True
    if not root.is_dir() or _foreign_entries(root):
        return False
    return not _user_data(root)[0]


# -- backup --------------------------------------------------------------------------------------------------------

def _backup_target(dest: Path, library_root: Path) -> Path:
    dest = Path(dest).expanduser().absolute()
    if _is_within(_real(dest), _real(library_root)):
        raise BackupError(f"{dest} is inside the library itself; choose a folder outside {library_root}")
    if dest.exists():
        if not dest.is_dir():
            raise BackupError(f"{dest} exists and is not a folder")
        base = dest / f"myvlm-backup-{_stamp()}"   # a folder for backups: a new, dated one inside it
        dest, n = base, 2
        while dest.exists():
            dest = base.with_name(f"{base.name}-{n}")
            n += 1
    return dest


def backup_library(library: Path | str, dest: Path | str, *, with_thumbnails: bool = False,
                   progress: ProgressFn | None = None, cancel: threading.Event | None = None) -> BackupReport:
    """Back the library at `library` up into the new folder `dest` (when `dest` is an existing folder, into a
    new `myvlm-backup-DATE-TIME` folder inside it). Safe while the library is in use."""
    started = time.monotonic()
    paths = LibraryPaths(Path(library).expanduser().absolute())
    if not paths.db.is_file():
        raise BackupError(f"there is no library at {paths.root} (no {DB_NAME})")
    dest = _backup_target(Path(dest), paths.root)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = dest.parent / f".{dest.name}.partial-{_token()}"
    staging.mkdir()
    try:
        report(progress, "catalog", 0, 1)
        info = snapshot_catalog(paths.db, staging / DB_NAME)
        db_hash, db_size = sha256_file(staging / DB_NAME)
        manifest_files = {DB_NAME: {"sha256": db_hash, "size": db_size}}
        files = _library_files(paths, info, with_thumbnails)
        total = len(files)
        report(progress, "files", 0, total)
        for i, src in enumerate(files, 1):
            _check_cancel(cancel)
            rel = src.relative_to(paths.root)
            try:
                digest, size = _copy_hashed(src, staging / rel)
            except FileNotFoundError:
                continue   # removed since the snapshot (a forgotten face): the snapshot's catalog copes
            manifest_files[rel.as_posix()] = {"sha256": digest, "size": size}
            report(progress, "files", i, total)
        _check_cancel(cancel)
        manifest = {
            "format": FORMAT,
            "app": "MyVLM Desktop",
            "app_version": __version__,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "source_library": str(paths.root),
            "schema_version": info["schema_version"],
            "with_thumbnails": bool(with_thumbnails),
            "counts": info["counts"],
            "files": manifest_files,
        }
        tmp = staging / f".{MANIFEST}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(manifest, fh, indent=1, ensure_ascii=False)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, staging / MANIFEST)
        for d in sorted({p.parent for p in staging.rglob("*")} | {staging}, key=lambda p: -len(p.parts)):
            _fsync_dir(d)
        os.rename(staging, dest)   # the moment the backup becomes complete
        _fsync_dir(dest.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    size = sum(f["size"] for f in manifest_files.values())
    log.info("backed up %s to %s: %d files, %.1f MB", paths.root, dest, len(manifest_files), size / 1e6)
    return BackupReport(str(dest), len(manifest_files), size, time.monotonic() - started, bool(with_thumbnails),
                        info["counts"])


# -- verify and restore --------------------------------------------------------------------------------------------

def _safe_rel(rel: str) -> bool:
    p = Path(rel)
    return bool(rel) and not p.is_absolute() and ".." not in p.parts and "\\" not in rel


def verify_backup(backup: Path | str, progress: ProgressFn | None = None) -> dict[str, Any]:
    """Check a backup without changing it: a complete manifest, every file's size and sha256, and the catalog's
    `PRAGMA integrity_check`. Returns the manifest; raises BackupError saying what is wrong."""
    from engine.storage.catalog import SCHEMA_VERSION

    backup = Path(backup).expanduser().absolute()
    if not backup.is_dir():
        raise BackupError(f"no backup at {backup}")
    mpath = backup / MANIFEST
    if not mpath.is_file():
        raise BackupError(f"{backup} is not a complete MyVLM backup: it has no {MANIFEST} "
                          "(an interrupted backup never gets one)")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BackupError(f"the backup's {MANIFEST} cannot be read ({exc}); the backup is damaged") from exc
    if (not isinstance(manifest, dict) or manifest.get("format") != FORMAT
            or not isinstance(manifest.get("files"), dict)):
        raise BackupError(f"{backup} is not a MyVLM library backup this version understands "
                          f"(format {manifest.get('format') if isinstance(manifest, dict) else '?'!r})")
    if int(manifest.get("schema_version") or 0) > SCHEMA_VERSION:
        raise BackupError(f"this backup was made by a newer MyVLM Desktop ({manifest.get('app_version')}, catalog "
                          f"schema {manifest.get('schema_version')}; this version knows {SCHEMA_VERSION}). "
                          "Update the app to restore it.")
    files: dict[str, dict[str, Any]] = manifest["files"]
    if DB_NAME not in files:
        raise BackupError(f"the backup's manifest lists no {DB_NAME}; the backup is damaged")
    bad: list[str] = []
    total = len(files)
    for i, (rel, meta) in enumerate(sorted(files.items()), 1):
        if not _safe_rel(rel):
            raise BackupError(f"the backup's manifest names a file outside the backup ({rel!r}); refusing it")
        p = backup / rel
        if not p.is_file():
            bad.append(f"{rel} is missing")
        elif p.stat().st_size != meta.get("size"):
            bad.append(f"{rel} has the wrong size ({p.stat().st_size} bytes, the manifest says {meta.get('size')})")
        elif sha256_file(p)[0] != meta.get("sha256"):
            bad.append(f"{rel} does not match its checksum")
        report(progress, "verify", i, total)
    if bad:
        more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
        raise BackupError(f"the backup at {backup} is damaged: {'; '.join(bad[:3])}{more}. Nothing was restored.")
    try:
        conn = _connect(backup / DB_NAME, readonly=True)
        try:
            check = [r[0] for r in conn.execute("PRAGMA integrity_check")]
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"the backup's catalog cannot be read by SQLite ({exc}); the backup is damaged. "
                          "Nothing was restored.") from exc
    if check != ["ok"]:
        raise BackupError(f"the backup's catalog failed SQLite's integrity check ({'; '.join(check[:3])}); "
                          "the backup is damaged. Nothing was restored.")
    return manifest


def _relocate_examples(db: Path, old_root: str | None) -> int:
    """Training images imported into the library are stored by absolute path; make those under the old library's
    concept folders relative to their concept folder (which the app resolves), so they survive the new place."""
    if not old_root:
        return 0
    conn = _connect(db)
    try:
        if "concept_examples" not in _tables(conn):
            return 0
        changed = 0
        prefix = str(Path(old_root) / "concepts")
        rows = conn.execute("SELECT id, concept_id, path FROM concept_examples WHERE path IS NOT NULL").fetchall()
        conn.execute("BEGIN IMMEDIATE")
        for eid, cid, path in rows:
            folder = Path(prefix) / str(cid)
            if Path(path).is_absolute() and _is_within(Path(path), folder):
                conn.execute("UPDATE concept_examples SET path = ? WHERE id = ?",
                             [Path(path).relative_to(folder).as_posix(), eid])
                changed += 1
        conn.execute("COMMIT")
        return changed
    finally:
        conn.close()


def _mark_missing_thumbnails(root: Path) -> int:
    """Photos whose thumbnail is not in the library: forget their thumbnail stage so indexing makes it again."""
    paths = LibraryPaths(root)
    conn = _connect(paths.db)
    try:
        if not {"photos", "stage_status"} <= _tables(conn):
            return 0
        ids = [pid for pid, h in conn.execute("SELECT id, content_hash FROM photos WHERE content_hash IS NOT NULL")
               if not (paths.thumbs / h[:2] / f"{h}.jpg").exists()]
        conn.execute("BEGIN IMMEDIATE")
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            conn.execute(f"DELETE FROM stage_status WHERE stage = 'thumbnail' AND photo_id IN "
                         f"({','.join('?' * len(chunk))})", chunk)
        conn.execute("COMMIT")
        return len(ids)
    finally:
        conn.close()


def _swap_in(new: Path, target: Path) -> bool:
    """Rename `new` to `target`; an existing target is renamed aside first and removed once the swap is done.
    Returns whether a target was replaced."""
    if not target.exists():
        os.rename(new, target)
        _fsync_dir(target.parent)
        return False
    aside = target.parent / f".{target.name}.replaced-{_token()}"
    os.rename(target, aside)
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(aside, target)
        raise
    _fsync_dir(target.parent)
    shutil.rmtree(aside, ignore_errors=True)
    return True


def restore_library(backup: Path | str, target: Path | str | None = None, *, force: bool = False,
                    progress: ProgressFn | None = None) -> RestoreReport:
    """Restore a backup into the library folder `target` (default: the default library).

    The backup is verified first; nothing is touched if it is damaged. A target holding a library with anything
    in it is only replaced with `force`, and never while it is open; a folder holding other files never is.
    The backup is copied into a new folder beside the target and checked, then swapped in. The replaced library's
    downloaded models are kept (backups hold none)."""
    started = time.monotonic()
    backup = Path(backup).expanduser().absolute()
    target = Path(target).expanduser().absolute() if target is not None else default_library_path()
    manifest = verify_backup(backup, progress)
    if _is_within(_real(target), _real(backup)) or _is_within(_real(backup), _real(target)):
        raise BackupError(f"the backup {backup} and the library {target} must not be inside one another")
    has_data = False
    if target.exists():
        if not target.is_dir():
            raise BackupError(f"{target} exists and is not a folder")
        foreign = _foreign_entries(target)
        if foreign:
            raise BackupError(f"{target} holds files that are not part of a MyVLM library ({', '.join(foreign[:5])}"
                              f"{' …' if len(foreign) > 5 else ''}); restore into an empty folder or a library")
        has_data, what = _user_data(target)
        if has_data and not force:
            raise BackupError(f"{target} already holds a library ({what}). Restoring would replace it: "
                              "give --force to do that, or restore into another folder with --library")
        if library_in_use(target):
            raise BackupError(f"the library at {target} is open (in MyVLM Desktop or a myvlm command); "
                              "close it first, then restore")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.restoring-{_token()}"
    staging.mkdir()
    old_models = LibraryPaths(target).models
    models_moved = False
    try:
        files = manifest["files"]
        total = len(files)
        size = 0
        for i, (rel, meta) in enumerate(sorted(files.items()), 1):
            digest, n = _copy_hashed(backup / rel, staging / rel)
            if digest != meta["sha256"]:
                raise BackupError(f"{rel} changed while it was copied from the backup; nothing was restored")
            size += n
            report(progress, "files", i, total)
        _relocate_examples(staging / DB_NAME, manifest.get("source_library"))
        LibraryPaths(staging).ensure()
        rebuild = 0 if manifest.get("with_thumbnails") else _mark_missing_thumbnails(staging)
        conn = _connect(staging / DB_NAME)
        try:
            check = conn.execute("PRAGMA integrity_check").fetchone()[0]
            conn.execute("PRAGMA journal_mode = WAL")   # as the app keeps it (backups are self-contained files)
        finally:
            conn.close()
        if check != "ok":
            raise BackupError(f"the restored catalog failed SQLite's integrity check ({check}); nothing was restored")
        if old_models.is_dir() and any(old_models.iterdir()):
            shutil.rmtree(staging / "models", ignore_errors=True)
            os.rename(old_models, staging / "models")   # downloads are kept: same disk, a rename
            models_moved = True
        _swap_in(staging, target)
    except BaseException:
        if models_moved and (staging / "models").exists():
            try:
                os.rename(staging / "models", old_models)   # the swap failed: the downloads go back first
            except OSError:
                log.error("the restore failed and %s could not be put back; it is in %s", old_models, staging)
                raise
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("restored %s into %s (%d files)", backup, target, len(files))
    return RestoreReport(str(target), str(backup), len(files), size, time.monotonic() - started, has_data,
                         str(manifest.get("app_version")), str(manifest.get("created")),
                         dict(manifest.get("counts") or {}), rebuild)


# -- move ----------------------------------------------------------------------------------------------------------

def move_library(library: Path | str, new: Path | str, *, delete_old: bool = False, allow_open: bool = False,
                 make_default: bool | None = None, progress: ProgressFn | None = None) -> MoveReport:
    """Move the library folder `library` to `new`: copy everything (the catalog through the backup API while
    other writers wait), compare every copied file with the original, then switch the default library pointer.

    `make_default`: point the default library at `new` (default: when `library` is the default library now).
    The old folder is removed only with `delete_old`, after the copy was verified and if nothing opened it
    meanwhile. `allow_open`: the caller (the desktop app) has the library open itself and switches over next."""
    started = time.monotonic()
    src = LibraryPaths(Path(library).expanduser().absolute())
    dst = Path(new).expanduser().absolute()
    if not src.db.is_file():
        raise BackupError(f"there is no library at {src.root} (no {DB_NAME})")
    if _real(dst) == _real(src.root):
        raise BackupError(f"the library is at {dst} already")
    if _is_within(_real(dst), _real(src.root)) or _is_within(_real(src.root), _real(dst)):
        raise BackupError(f"{dst} and the library {src.root} must not be inside one another")
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise BackupError(f"{dst} exists and is not an empty folder; choose a new or empty folder")
    if not allow_open and library_in_use(src.root):
        raise BackupError(f"the library at {src.root} is open (in MyVLM Desktop or a myvlm command); "
                          "close it first, then move it")
    if make_default is None:
        make_default = _real(src.root) == _real(default_library_path())
    dst.parent.mkdir(parents=True, exist_ok=True)
    staging = dst.parent / f".{dst.name}.moving-{_token()}"
    staging.mkdir()
    lock = _connect(src.db)
    copied: dict[str, tuple[str, int]] = {}
    try:
        lock.execute("BEGIN IMMEDIATE")   # other writers wait (their busy timeout) until the copy is done
        report(progress, "catalog", 0, 1)
        snapshot_catalog(src.db, staging / DB_NAME)
        files = [p for p in _walk_files(src.root) if p.relative_to(src.root).parts[0] not in {DB_NAME, *DB_SIDE_FILES}]
        total = len(files)
        for i, p in enumerate(files, 1):
            rel = p.relative_to(src.root)
            try:
                copied[rel.as_posix()] = _copy_hashed(p, staging / rel, strict=rel.parts[0] != "logs")
            except FileNotFoundError:
                pass   # gone since the listing (a preview the cache evicted): nothing to move
            report(progress, "files", i, total)
        links = _symlinks(src.root)   # e.g. models/ kept on another disk: the link moves, not what it points to
        for rel, target in links.items():
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(target, staging / rel)
        for d in (src.thumbs, src.previews, src.models, src.concepts, src.faces, src.logs):
            if not (staging / d.name).is_symlink():
                (staging / d.name).mkdir(exist_ok=True)
        # verify: what is on the new disk now, read back, against the originals
        for i, (rel, (digest, size)) in enumerate(sorted(copied.items()), 1):
            if sha256_file(staging / rel) != (digest, size):
                raise BackupError(f"{rel} was not copied intact to {dst}; the library was not moved")
            if not rel.startswith("logs/") and sha256_file(src.root / rel) != (digest, size):  # logs grow: fine
                raise BackupError(f"{rel} differs between the library and its copy; the library was not moved")
            report(progress, "verify", i, total)
        conn = _connect(staging / DB_NAME)
        try:
            check = conn.execute("PRAGMA integrity_check").fetchone()[0]
            src_counts = _counts(lock)
            new_counts = _counts(conn)
            conn.execute("PRAGMA journal_mode = WAL")   # as the app keeps it
        finally:
            conn.close()
        if check != "ok" or src_counts != new_counts:
            raise BackupError(f"the copied catalog does not match the library ({check}); the library was not moved")
        _relocate_examples(staging / DB_NAME, str(src.root))
        if dst.exists():
            dst.rmdir()
        os.rename(staging, dst)
        _fsync_dir(dst.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        if lock.in_transaction:
            lock.execute("ROLLBACK")
        lock.close()
    pointer = str(record_library_move(src.root, dst, make_default=bool(make_default)))
    deleted, kept_reason = False, None
    if delete_old:
        if not allow_open and library_in_use(src.root):
            kept_reason = "something opened the old library during the move; remove it yourself when it is closed"
        else:
            shutil.rmtree(src.root)
            deleted = True
    size = sum(s for _, s in copied.values()) + (dst / DB_NAME).stat().st_size
    log.info("moved library %s to %s (%d files)", src.root, dst, len(copied) + 1)
    return MoveReport(str(src.root), str(dst), len(copied) + 1, size, time.monotonic() - started,
                      bool(make_default), pointer, deleted, kept_reason)


__all__ = ["BackupError", "BackupReport", "Cancelled", "MoveReport", "RestoreReport", "backup_library",
           "follow_moves", "library_in_use", "library_is_empty", "move_library", "restore_library",
           "snapshot_catalog", "verify_backup"]
