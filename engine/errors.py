"""The engine's one error contract: what a front door may show the user as it is.

Every error the engine raises on purpose derives from `UserError`, and its message is a sentence written for the
person at the keyboard. The CLI prints `myvlm: <message>`, the app shows it in a dialog; anything else is a bug,
logged with its traceback and shown as a short "something went wrong". A cancel is the user's own choice, so it is
a `Cancelled`, which front doors report quietly (no error dialog, CLI exit status 130).
"""

from __future__ import annotations

import threading


class UserError(Exception):
    """An error whose message is for the user (the front doors show `str(exc)` as it is)."""


class NotFound(UserError, LookupError):
    """A photo, person, concept or folder the user named is not in the library."""


class InvalidInput(UserError, ValueError):
    """A value the user gave is not one the library can take (a setting, a name, a number)."""


class Cancelled(UserError):
    """The user stopped a long operation (its `threading.Event` was set). Nothing half-done is kept."""


def raise_if_cancelled(cancel: threading.Event | None, what: str = "stopped") -> None:
    """The one way a long operation checks its cancel event."""
    if cancel is not None and cancel.is_set():
        raise Cancelled(what)


__all__ = ["UserError", "NotFound", "InvalidInput", "Cancelled", "raise_if_cancelled"]
