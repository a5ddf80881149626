"""One app per library: a second start on the same library hands its arguments to the first and quits.

The first instance listens on a local socket named after the library (QLocalServer); a second one connects, sends
one JSON line ({"raise": true, "album": PATH or null}) and exits. A listener left behind by a crash is removed.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Signal
from PySide6.QtNetwork import QLocalServer, QLocalSocket

log = logging.getLogger(__name__)

CONNECT_MS = 500


def server_name(library_root: Path) -> str:
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001
        user = "user"
    digest = hashlib.sha1(f"{user}:{Path(library_root).expanduser().absolute()}".encode()).hexdigest()[:16]
    return f"myvlm-desktop-{digest}"


def send_to_running(library_root: Path, message: dict[str, Any]) -> bool:
    """True when an instance already runs on this library (it got the message)."""
    sock = QLocalSocket()
    sock.connectToServer(server_name(library_root))
    if not sock.waitForConnected(CONNECT_MS):
        return False
    sock.write((json.dumps(message) + "\n").encode())
    sock.flush()
    sock.waitForBytesWritten(CONNECT_MS)
    sock.waitForReadyRead(CONNECT_MS)  # the first instance answers "ok"
    sock.disconnectFromServer()
    return True


class InstanceServer(QObject):
    """Listens for later starts on the same library; `messageReceived(dict)` on the GUI thread."""

    messageReceived = Signal(dict)

    def __init__(self, library_root: Path, parent: QObject | None = None):
        super().__init__(parent)
        self.name = server_name(library_root)
        self.server = QLocalServer(self)
        self.server.setSocketOptions(QLocalServer.SocketOption.UserAccessOption)
        self.server.newConnection.connect(self._on_connection)

    def listen(self) -> bool:
        if self.server.listen(self.name):
            return True
        QLocalServer.removeServer(self.name)  # left behind by a crash
        ok = self.server.listen(self.name)
        if not ok:
            log.warning("single-instance listener failed: %s", self.server.errorString())
        return ok

    def close(self) -> None:
        self.server.close()

    def _on_connection(self) -> None:
        while self.server.hasPendingConnections():
            sock = self.server.nextPendingConnection()
            sock.readyRead.connect(lambda s=sock: self._read(s))
            sock.disconnected.connect(sock.deleteLater)

    def _read(self, sock: QLocalSocket) -> None:
        while sock.canReadLine():
            line = bytes(sock.readLine().data()).decode(errors="replace").strip()
            try:
                msg = json.loads(line) if line else {}
            except json.JSONDecodeError:
                msg = {}
            sock.write(b"ok\n")
            sock.flush()
            self.messageReceived.emit(msg if isinstance(msg, dict) else {})
