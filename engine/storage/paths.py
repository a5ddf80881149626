"""File names as the OS sees them: exact bytes in the catalog, readable text for people.

POSIX file names are bytes and need not be UTF-8. The catalog keys every file by its exact bytes
(`path_bytes`) and keeps a display string beside it, so a name like b"caf\\xe9.jpg" is found again exactly.
"""

from __future__ import annotations

import os
from pathlib import Path

PathLike = str | bytes | os.PathLike


def to_bytes(path: PathLike) -> bytes:
    return os.fsencode(path)


def to_fs(path_bytes: bytes) -> str:
    """The str the OS functions accept for these bytes (surrogate-escaped where not UTF-8)."""
    return os.fsdecode(path_bytes)


def display(path: PathLike) -> str:
    """Readable, UTF-8-safe text for logs, JSON and the GUI (undecodable bytes become U+FFFD)."""
    return to_bytes(path).decode("utf-8", errors="replace")


def normalize(path: PathLike) -> bytes:
    """Absolute, normalised path bytes without resolving symlinks (a symlinked album stays where the user put it)."""
    return os.path.abspath(os.path.expanduser(to_bytes(path)))


def subtree_range(folder: bytes) -> tuple[bytes, bytes]:
    """[lo, hi) byte range of every path strictly inside `folder`, for indexed BLOB range queries.

    '/' is 0x2F and '0' is 0x30, so folder + b'0' is the first key past every folder + b'/...' key.
    """
    folder = folder.rstrip(b"/") or b"/"
    prefix = folder if folder == b"/" else folder + b"/"
    return prefix, prefix[:-1] + b"0"


def is_within(path: bytes, folder: bytes) -> bool:
    folder = folder.rstrip(b"/")
    return path == folder or path.startswith(folder + b"/")


def as_path(path_bytes: bytes) -> Path:
    return Path(to_fs(path_bytes))
