"""Work-arounds for bugs of the Qt bindings, in one place.

PySide6 6.12.0 returns None from every void C++ method (and from `QModelIndex.data()` for an empty value), and
True from every `Signal.emit()`, without taking a reference to it. On Python 3.12+ None and the booleans are
immortal and nothing happens; on Python 3.11 each call lowers their reference count by one, and a few thousand
calls later (one repaint of the photo grid makes hundreds) the interpreter aborts with "Fatal Python error:
none_dealloc" (or bool_dealloc). PySide6 6.11 does not have the bug. Until the project's dependencies exclude
6.12.0, `install_none_refcount_guard()` detects the bug and keeps those counts far from zero by holding spare
references (8 bytes per leaked call); where the bug is absent it does nothing.
"""

from __future__ import annotations

import itertools
import logging
import sys
from typing import Any

from PySide6 import __version__ as PYSIDE_VERSION
from PySide6.QtCore import (
    QCoreApplication,
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    QPoint,
    QRect,
    QTimer,
    Signal,
)

log = logging.getLogger(__name__)

SAFE_REFS = 500_000        # top up when a reference count falls below this...
TOP_UP_TO = 1_000_000      # ...back to this
CHECK_INTERVAL_MS = 1000   # far more often than half a million leaked calls could happen
_GUARDED = (None, True, False)

_ballast: list[object] = []
_timer: QTimer | None = None


def item_data(index: QModelIndex | QPersistentModelIndex, role: int) -> Any:
    """`index.data(role)` for our own (Python) models, calling the model's `data()` directly: no QVariant round
    trip, so no leaked None (see above), and faster in a delegate that paints thousands of cells."""
    model = index.model()
    if model is None or not index.isValid():
        return None
    return model.data(index, role)


class _Probe(QObject):
    signal = Signal()


def bindings_leak_references() -> bool:
    """Whether these bindings drop references to None (void calls) or True (emit); measured, then given back."""
    if sys.version_info >= (3, 12):
        return False  # None and the booleans are immortal there: a dropped reference cannot hurt
    rect, point, probe = QRect(), QPoint(), _Probe()
    before = [sys.getrefcount(x) for x in _GUARDED]
    for _ in range(64):
        rect.moveCenter(point)
        probe.signal.emit()
    lost = [b - sys.getrefcount(x) for b, x in zip(before, _GUARDED, strict=True)]
    for obj, n in zip(_GUARDED, lost, strict=True):
        if n > 0:
            _ballast.extend(itertools.repeat(obj, n))
    return max(lost) >= 32


def _top_up() -> None:
    for obj in _GUARDED:
        n = sys.getrefcount(obj)
        if n < SAFE_REFS:
            _ballast.extend(itertools.repeat(obj, TOP_UP_TO - n))


def install_none_refcount_guard() -> bool:
    """Start the guard once per process when the bug is present (needs a QCoreApplication). True if active."""
    global _timer
    if _timer is not None:
        return True
    app = QCoreApplication.instance()
    if app is None or not bindings_leak_references():
        return False
    log.warning("PySide6 %s leaks references to None/True on Python %d.%d; compensating (PySide6 6.11 has no such bug)",
                PYSIDE_VERSION, *sys.version_info[:2])
    _top_up()
    _timer = QTimer(app)
    _timer.setInterval(CHECK_INTERVAL_MS)
    _timer.timeout.connect(_top_up)
    _timer.start()
    return True
