"""Scanning: reconcile the catalog with what is on disk, recognising moves, duplicates, edits and deletions.

A photo record belongs to a path. Its content hash lets a rescan tell a move or rename (the path vanished, the
same bytes appeared elsewhere: the record follows, keeping everything derived from it) from a duplicate (same
bytes at two live paths: two records, models run once) and from an edit in place (same path, new bytes:
re-processed). A missing file is marked gone, never deleted; a missing folder root is offline, never gone.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat as stat_mod
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from engine.ingest import images
from engine.progress import ProgressFn, report
from engine.storage import catalog as C
from engine.storage import paths as P
from engine.storage.catalog import Catalog, Folder

log = logging.getLogger(__name__)

HASH_CHUNK = 1 << 20
WRITE_CHUNK = 2000
HASH_BATCH = 64  # rows per write transaction: keeps the write lock short for other processes


def content_hash(path: str) -> str:
    """BLAKE2b-128 of the whole file: identifies content across renames, moves and copies."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class FoundFile:
    path: bytes
    size: int
    mtime_ns: int
    kind: str


@dataclass
class ScanIssue:
    path: bytes
    message: str


@dataclass
class ScanReport:
    folders: int = 0
    seen: int = 0
    new: int = 0
    changed: int = 0
    moved: int = 0
    duplicates: int = 0
    gone: int = 0
    revived: int = 0
    unsupported: int = 0
    errors: int = 0
    hashed: int = 0
    offline: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def merge(self, other: ScanReport) -> None:
        for name in ("folders", "seen", "new", "changed", "moved", "duplicates", "gone", "revived", "unsupported",
                     "errors", "hashed"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.offline += other.offline

    @property
    def touched(self) -> bool:
        return bool(self.new or self.changed or self.moved or self.gone or self.revived)

    def to_json(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def walk(root: bytes, skip: Iterable[bytes] = (), cancel: threading.Event | None = None,
         ) -> tuple[list[FoundFile], list[ScanIssue]]:
    """Every photo-like file under `root` (hidden entries skipped), following folder links without looping."""
    skip = {s.rstrip(b"/") for s in skip}
    found: list[FoundFile] = []
    issues: list[ScanIssue] = []
    try:
        st = os.stat(root)
    except FileNotFoundError:
        return found, issues  # a sub-folder deleted since the hint: everything that was in it is gone
    except OSError as exc:
        return found, [ScanIssue(root, f"cannot read folder: {exc.strerror or exc}")]
    visited = {(st.st_dev, st.st_ino)}
    stack: list[tuple[bytes, frozenset]] = [(root, frozenset(visited))]
    while stack:
        if cancel is not None and cancel.is_set():
            break
        folder, ancestors = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except PermissionError as exc:
            issues.append(ScanIssue(folder, f"permission denied: cannot list this folder ({exc.strerror})"))
            continue
        except FileNotFoundError:
            continue  # vanished while we walked: the next scan sees it gone
        except OSError as exc:
            issues.append(ScanIssue(folder, f"cannot list this folder: {exc.strerror or exc}"))
            continue
        for entry in entries:
            name = entry.name
            if name.startswith(b"."):
                continue
            path = entry.path
            try:
                is_dir = entry.is_dir()  # follows links
            except OSError:
                is_dir = False
            if is_dir:
                if path in skip:
                    continue
                try:
                    dst = entry.stat()
                except OSError as exc:
                    issues.append(ScanIssue(path, f"cannot read folder: {exc.strerror or exc}"))
                    continue
                key = (dst.st_dev, dst.st_ino)
                if key in ancestors:
                    issues.append(ScanIssue(
                        path, "symbolic link loop: this folder link points back to one of its own parent folders; skipped"))
                    continue
                if key in visited:
                    continue  # the same folder reached through another link: scanned once
                visited.add(key)
                stack.append((path, ancestors | {key}))
                continue
            kind, _reason = images.classify(name)
            if kind is None:
                continue
            try:
                fst = entry.stat()
            except FileNotFoundError:
                if entry.is_symlink():
                    issues.append(ScanIssue(path, "broken symbolic link: its target does not exist"))
                continue
            except OSError as exc:
                if exc.errno == 40:  # ELOOP: a file link that points at itself
                    issues.append(ScanIssue(path, "symbolic link loop: this link points to itself"))
                else:
                    issues.append(ScanIssue(path, f"cannot read file information: {exc.strerror or exc}"))
                continue
            if not stat_mod.S_ISREG(fst.st_mode):
                continue  # fifo, socket, device: never open these
            found.append(FoundFile(path, fst.st_size, fst.st_mtime_ns, kind))
    return found, issues


class Scanner:
    """Brings a catalog in line with the disk. One scanner per writer thread."""

    def __init__(self, catalog: Catalog, *, hash_workers: int | None = None,
                 progress: ProgressFn | None = None,
                 cancel: threading.Event | None = None):
        self.catalog = catalog
        self.hash_workers = hash_workers or min(4, (os.cpu_count() or 2))
        self.progress = progress
        self.cancel = cancel or threading.Event()

    # -- entry points -----------------------------------------------------------------------------------------------

    def scan_all(self) -> ScanReport:
        total = ScanReport()
        start = time.perf_counter()
        for folder in self.catalog.folders():
            if self.cancel.is_set():
                break
            total.merge(self.scan_folder(folder))
        total.seconds = time.perf_counter() - start
        return total

    def scan_paths(self, targets: Iterable[P.PathLike]) -> ScanReport:
        """Rescan only these sub-folders (the watcher's hints); nested targets are folded into their parents."""
        total = ScanReport()
        start = time.perf_counter()
        folders = self.catalog.folders()
        norm: set[bytes] = set()
        for t in {P.normalize(t) for t in targets}:
            owner = next((f for f in folders if P.is_within(t, f.path_bytes)), None)
            if owner is None:
                # above the watched folders (e.g. a parent of a root): stands for the roots inside it
                norm |= {f.path_bytes for f in folders if P.is_within(f.path_bytes, t)}
            elif not _hidden_below(t, owner.path_bytes):
                norm.add(t)  # hidden folders are skipped by full scans, so partial scans skip them too
        minimal: list[bytes] = []
        for t in sorted(norm):
            if not any(P.is_within(t, m) for m in minimal):
                minimal.append(t)
        by_folder: dict[int, tuple[Folder, list[bytes]]] = {}
        for t in minimal:
            folder = next((f for f in folders if P.is_within(t, f.path_bytes)), None)
            if folder is None:
                continue
            by_folder.setdefault(folder.id, (folder, []))[1].append(t)
        for folder, subs in by_folder.values():
            total.merge(self.scan_folder(folder, subs))
        total.seconds = time.perf_counter() - start
        return total

    # -- the work ---------------------------------------------------------------------------------------------------

    def _root_offline(self, folder: Folder) -> str | None:
        root = folder.fs_path
        if not os.path.isdir(root):
            return "folder not found: drive unplugged or share not mounted? Its photos are kept and shown as offline"
        try:
            with os.scandir(root) as it:
                empty = next(iter(it), None) is None
        except OSError as exc:
            return f"cannot open folder: {exc.strerror or exc}"
        if empty and self.catalog.scalar(
            "SELECT 1 FROM photos WHERE folder_id = ? AND status NOT IN ('gone') LIMIT 1", [folder.id]
        ):
            return "folder is empty but held photos: an unmounted share or drive? Its photos are kept as offline"
        return None

    def scan_folder(self, folder: Folder, subpaths: list[bytes] | None = None) -> ScanReport:
        report = ScanReport(folders=1)
        offline_reason = self._root_offline(folder)
        if offline_reason:
            if folder.status != C.FOLDER_OFFLINE:
                log.warning("folder %s is offline: %s", folder.path, offline_reason)
            self.catalog.set_folder_state(folder.id, C.FOLDER_OFFLINE, offline_reason)
            report.offline.append(folder.path)
            return report
        if folder.status != C.FOLDER_ONLINE:
            log.info("folder %s is back online", folder.path)
        targets = subpaths or [folder.path_bytes]
        skip = [P.normalize(self.catalog.paths.root)]
        for target in targets:
            if self.cancel.is_set():
                break
            self._scan_target(folder, target, skip, report)
        self.catalog.set_folder_state(folder.id, C.FOLDER_ONLINE, None, scanned=not self.cancel.is_set())
        return report

    def _known(self, target: bytes) -> dict[bytes, dict]:
        lo, hi = P.subtree_range(target)
        rows = self.catalog.query(
            """SELECT id, path_bytes, size, mtime_ns, content_hash, status, kind, last_error FROM photos
               WHERE (path_bytes >= ? AND path_bytes < ?) OR path_bytes = ?""",
            [lo, hi, target],
        )
        return {r["path_bytes"]: dict(r) for r in rows}

    def _emit(self, done: int, total: int, current: bytes) -> None:
        report(self.progress, "scan", done, total, P.display(current))

    def _hash_many(self, files: list[FoundFile]) -> dict[bytes, str | Exception]:
        """Hash files in parallel (hashlib releases the GIL); per-file errors are returned, not raised."""
        out: dict[bytes, str | Exception] = {}
        if not files:
            return out

        def batch(chunk: list[FoundFile]) -> list[tuple[bytes, str | Exception]]:
            out_chunk: list[tuple[bytes, str | Exception]] = []
            for f in chunk:
                if self.cancel.is_set():
                    break
                try:
                    out_chunk.append((f.path, content_hash(P.to_fs(f.path))))
                except Exception as exc:  # noqa: BLE001 - recorded per file
                    out_chunk.append((f.path, exc))
            return out_chunk

        # Batches, not one task per file: for small files the task overhead would cost more than the hashing.
        chunks = [files[i : i + HASH_BATCH] for i in range(0, len(files), HASH_BATCH)]
        pool = ThreadPoolExecutor(self.hash_workers, thread_name_prefix="hash")
        try:
            for results in pool.map(batch, chunks):
                for path, result in results:
                    out[path] = result
                self._emit(len(out), len(files), results[-1][0] if results else b"")
                if self.cancel.is_set():
                    break
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # a cancel does not wait for the queued files
        return out

    def _scan_target(self, folder: Folder, target: bytes, skip: list[bytes], report: ScanReport) -> None:
        cat = self.catalog
        found_list, issues = walk(target, skip, self.cancel)
        if self.cancel.is_set():
            return  # a partial walk must not mark the rest as gone
        found = {f.path: f for f in found_list}
        known = self._known(target)
        report.seen += len(found)

        new = [f for p, f in found.items() if p not in known]
        changed: list[FoundFile] = []
        revived: list[tuple[dict, FoundFile]] = []
        for p, f in found.items():
            row = known.get(p)
            if row is None:
                continue
            stale = row["size"] != f.size or row["mtime_ns"] != f.mtime_ns or (
                row["kind"] == "image" and row["content_hash"] is None)
            if stale:
                changed.append(f)
            elif row["status"] == C.GONE:
                revived.append((row, f))
        missing = {p: r for p, r in known.items() if p not in found and r["status"] != C.GONE}
        issue_paths = {i.path for i in issues}
        for p in list(missing):
            if p in issue_paths:
                missing.pop(p)

        to_hash = [f for f in new + changed if f.kind == "image"]
        hashes = self._hash_many(to_hash)
        if self.cancel.is_set():
            return
        report.hashed += len(to_hash)
        ts = C.now()

        def write_chunks(items: list, fn: Callable) -> None:
            for i in range(0, len(items), WRITE_CHUNK):
                with cat.write():
                    for item in items[i : i + WRITE_CHUNK]:
                        fn(item)

        # Files changed in place (or that failed to hash before): re-process when the bytes really changed.
        def apply_changed(f: FoundFile) -> None:
            row = known[f.path]
            h = hashes.get(f.path)
            if isinstance(h, FileNotFoundError):
                return  # vanished after the walk: left for the next scan
            if isinstance(h, Exception):
                cat.conn.execute(
                    "UPDATE photos SET status = 'error', last_error = ?, size = ?, mtime_ns = ?, updated_at = ? WHERE id = ?",
                    [_hash_error(h), f.size, f.mtime_ns, ts, row["id"]])
                report.errors += 1
                return
            if h is not None and h == row["content_hash"]:
                cat.conn.execute(
                    "UPDATE photos SET size = ?, mtime_ns = ?, updated_at = ?, gone_at = NULL, status = "
                    f"{_REVIVED_STATUS} WHERE id = ?", [f.size, f.mtime_ns, ts, row["id"]])
                return
            cat.conn.execute(
                """UPDATE photos SET content_hash = ?, size = ?, mtime_ns = ?, status = ?, last_error = NULL,
                   width = NULL, height = NULL, orientation = NULL, format = NULL, date_taken = NULL,
                   date_source = NULL, gone_at = NULL, updated_at = ? WHERE id = ?""",
                [h, f.size, f.mtime_ns, C.PENDING if f.kind == "image" else C.UNSUPPORTED, ts, row["id"]])
            cat.conn.execute("DELETE FROM stage_status WHERE photo_id = ?", [row["id"]])
            report.changed += 1

        write_chunks(changed, apply_changed)

        def apply_revived(item: tuple[dict, FoundFile]) -> None:
            row, _f = item
            cat.conn.execute(f"UPDATE photos SET status = {_REVIVED_STATUS}, gone_at = NULL, updated_at = ? WHERE id = ?",
                             [ts, row["id"]])
            report.revived += 1

        write_chunks(revived, apply_revived)

        # New paths: a move or rename of a record whose old path is gone, else a new record (maybe a duplicate).
        def apply_new(f: FoundFile) -> None:
            h = hashes.get(f.path)
            if isinstance(h, FileNotFoundError):
                return
            if cat.scalar("SELECT 1 FROM photos WHERE path_bytes = ?", [f.path]):
                return  # another scan (another process on this library) recorded it since this one looked
            base = {"folder_id": folder.id, "path": P.display(f.path), "path_bytes": f.path,
                    "name": P.display(os.path.basename(f.path)), "kind": f.kind, "size": f.size,
                    "mtime_ns": f.mtime_ns, "added_at": ts, "updated_at": ts}
            if f.kind != "image":
                _insert_photo(cat, {**base, "status": C.UNSUPPORTED})
                report.unsupported += 1
                return
            if isinstance(h, Exception):
                _insert_photo(cat, {**base, "status": C.ERROR, "last_error": _hash_error(h)})
                report.errors += 1
                return
            origin = self._move_origin(h, missing)
            if origin is not None:
                cat.conn.execute(
                    f"""UPDATE photos SET folder_id = ?, path = ?, path_bytes = ?, name = ?, size = ?, mtime_ns = ?,
                        gone_at = NULL, status = {_REVIVED_STATUS}, updated_at = ? WHERE id = ?""",
                    [folder.id, base["path"], f.path, base["name"], f.size, f.mtime_ns, ts, origin])
                report.moved += 1
                return
            if cat.scalar("SELECT 1 FROM photos WHERE content_hash = ? AND status != 'gone' LIMIT 1", [h]):
                report.duplicates += 1
            _insert_photo(cat, {**base, "content_hash": h, "status": C.PENDING})
            report.new += 1

        write_chunks(new, apply_new)

        # Scan problems (loops, broken links, unreadable folders) are per-path errors the user can see.
        def apply_issue(issue: ScanIssue) -> None:
            row = known.get(issue.path) or _row_by_path(cat, issue.path)  # maybe recorded meanwhile by another scan
            if row is not None:
                cat.conn.execute("UPDATE photos SET status = 'error', last_error = ?, updated_at = ? WHERE id = ?",
                                 [issue.message, ts, row["id"]])
            else:
                _insert_photo(cat, {"folder_id": folder.id, "path": P.display(issue.path),
                                         "path_bytes": issue.path, "name": P.display(os.path.basename(issue.path)),
                                         "kind": "other", "status": C.ERROR, "last_error": issue.message,
                                         "added_at": ts, "updated_at": ts})
            report.errors += 1

        write_chunks(issues, apply_issue)

        # Whatever was not found (and did not move) is gone; problems that went away are simply forgotten.
        def apply_missing(row: dict) -> None:
            if row["kind"] == "other":
                cat.conn.execute("DELETE FROM photos WHERE id = ?", [row["id"]])
                return
            cat.conn.execute("UPDATE photos SET status = 'gone', gone_at = ?, updated_at = ? WHERE id = ?",
                             [ts, ts, row["id"]])
            report.gone += 1

        write_chunks(list(missing.values()), apply_missing)

    def _move_origin(self, content_hash_: str, missing: dict[bytes, dict]) -> int | None:
        """The record this content moved from: one whose path is missing now (this scan, earlier, or elsewhere)."""
        for p, row in list(missing.items()):
            if row["content_hash"] == content_hash_ and row["kind"] == "image":
                missing.pop(p)
                return row["id"]
        for r in self.catalog.query(
            "SELECT id, path_bytes, status FROM photos WHERE content_hash = ? AND kind = 'image' ORDER BY status = 'gone' DESC, id",
            [content_hash_],
        ):
            if r["status"] == C.GONE or not os.path.lexists(P.to_fs(r["path_bytes"])):
                folder = self.catalog.folder_for(r["path_bytes"])
                if r["status"] != C.GONE and folder is not None and folder.status == C.FOLDER_OFFLINE:
                    continue  # its drive is just unplugged: a copy, not a move
                return r["id"]
        return None


# A record that comes back keeps what it had: ok when it was decoded, error when decoding failed, else pending.
_REVIVED_STATUS = "(CASE WHEN width IS NOT NULL THEN 'ok' WHEN last_error IS NOT NULL THEN 'error' ELSE 'pending' END)"


_INSERT_COLUMNS = ("folder_id", "path", "path_bytes", "name", "kind", "size", "mtime_ns", "added_at", "updated_at",
                   "content_hash", "status", "last_error")
_INSERT_SQL = f"INSERT INTO photos({', '.join(_INSERT_COLUMNS)}) VALUES ({', '.join('?' * len(_INSERT_COLUMNS))})"


def _row_by_path(cat: Catalog, path: bytes) -> dict | None:
    rows = cat.query("SELECT id FROM photos WHERE path_bytes = ?", [path])
    return dict(rows[0]) if rows else None


def _insert_photo(cat: Catalog, row: dict) -> None:
    """One prepared statement (scans insert up to hundreds of thousands of rows)."""
    cat.conn.execute(_INSERT_SQL, [row.get(c) for c in _INSERT_COLUMNS])


def _hidden_below(path: bytes, root: bytes) -> bool:
    rel = path[len(root.rstrip(b"/")):].strip(b"/")
    return any(part.startswith(b".") for part in rel.split(b"/") if part)


def _hash_error(exc: Exception) -> str:
    if isinstance(exc, PermissionError):
        return "permission denied: the file cannot be read (check its permissions)"
    if isinstance(exc, IsADirectoryError):
        return "not a file"
    if isinstance(exc, OSError):
        return f"cannot read the file: {exc.strerror or exc}"
    return f"cannot read the file: {exc}"
