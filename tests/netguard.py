"""A network guard for the privacy tests: every way Python code opens a connection or looks up a host name is
recorded (with who asked) and refused, as on a machine with no network at all.

`install(record)` patches the socket module in this process and returns an undo function. `install_from_env()` is
what the `sitecustomize.py` the tests put on PYTHONPATH calls in every subprocess: it appends one JSON line per
attempt to the file named by $MYVLM_NETGUARD_LOG, plus one "installed" line per process, so a test can tell that
the guard really ran in each process it started.

What is covered: socket.socket.connect / connect_ex / sendto / sendmsg (TCP, UDP, any family but local Unix
sockets, which are recorded too but let through: they never leave the machine), socket.create_connection and the
name lookups (getaddrinfo, gethostbyname, gethostbyname_ex, gethostbyaddr) that precede any connection. Every HTTP
client in the dependency tree (urllib, http.client, urllib3/requests, httpx/httpcore, asyncio) goes through these.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import threading
import traceback
from collections.abc import Callable
from typing import Any

ENV_LOG = "MYVLM_NETGUARD_LOG"
LOCAL_FAMILIES = {getattr(socket, "AF_UNIX", None)} - {None}

Record = Callable[[dict[str, Any]], None]


def _where(depth: int = 40) -> str:
    """The frames outside this module, innermost first: who tried to connect, and on whose behalf."""
    frames = [f for f in traceback.extract_stack()[:-2] if not f.filename.endswith("netguard.py")]
    return " <- ".join(f"{os.path.basename(f.filename)}:{f.lineno} {f.name}" for f in reversed(frames[-depth:]))


def _blocked(what: str) -> OSError:
    return OSError(errno.ENETUNREACH, f"network blocked by the privacy test ({what})")


def install(record: Record) -> Callable[[], None]:
    """Patch this process's socket module; returns the undo."""
    originals: dict[tuple[Any, str], Any] = {}

    def patch(owner: Any, name: str, make: Callable[[Any], Any]) -> None:
        original = getattr(owner, name)
        originals[(owner, name)] = original
        setattr(owner, name, make(original))

    def attempt(call: str, target: Any, family: Any = None) -> None:
        record({"event": "attempt", "pid": os.getpid(), "call": call, "target": repr(target)[:200],
                "family": str(family), "thread": threading.current_thread().name, "where": _where()})

    def sock_method(call: str, address_index: int) -> Callable[[Any], Any]:
        def make(original: Any) -> Any:
            def guarded(self: socket.socket, *args: Any, **kwargs: Any) -> Any:
                if address_index < 0:
                    address = args[address_index] if args else None
                else:
                    address = args[address_index] if len(args) > address_index else None
                if self.family in LOCAL_FAMILIES:
                    record({"event": "local", "pid": os.getpid(), "call": call, "target": repr(address)[:200],
                            "where": _where()})
                    return original(self, *args, **kwargs)
                attempt(f"socket.{call}", address, self.family)
                raise _blocked(f"{call} {address!r}")
            return guarded
        return make

    def module_function(call: str) -> Callable[[Any], Any]:
        def make(original: Any) -> Any:
            def guarded(*args: Any, **kwargs: Any) -> Any:
                target = args[0] if args else kwargs
                attempt(f"socket.{call}", target)
                raise _blocked(f"{call} {target!r}") if call != "getaddrinfo" else socket.gaierror(
                    socket.EAI_NONAME, f"name lookup blocked by the privacy test ({target!r})")
            return guarded
        return make

    patch(socket.socket, "connect", sock_method("connect", 0))
    patch(socket.socket, "connect_ex", sock_method("connect_ex", 0))
    patch(socket.socket, "sendto", sock_method("sendto", -1))   # sendto(data[, flags], address)
    if hasattr(socket.socket, "sendmsg"):
        patch(socket.socket, "sendmsg", sock_method("sendmsg", 3))
    for name in ("create_connection", "getaddrinfo", "gethostbyname", "gethostbyname_ex", "gethostbyaddr"):
        patch(socket, name, module_function(name))

    def undo() -> None:
        for (owner, name), original in originals.items():
            setattr(owner, name, original)

    return undo


def install_from_env() -> None:
    """For sitecustomize.py: log attempts to $MYVLM_NETGUARD_LOG (JSON lines)."""
    path = os.environ.get(ENV_LOG)
    if not path:
        return
    lock = threading.Lock()

    def record(entry: dict[str, Any]) -> None:
        with lock, open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry) + "\n")

    install(record)
    record({"event": "installed", "pid": os.getpid()})


def read_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    try:
        with open(path, encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]
    except FileNotFoundError:
        return []
