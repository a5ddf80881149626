"""Library settings, declared once: key, type, default, help and validation.

The CLI (`myvlm settings`), the app's Settings dialog and the engine's readers all use these declarations, so a
setting has one default and one check wherever it is read or written. Values live in the catalog's `settings`
table as JSON (engine.storage.catalog.Catalog.get_setting / set_setting); the engine's own bookkeeping keys kept in that
table (e.g. the clustering marker) are not settings and are not declared here.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from typing import Any, Protocol

from engine.errors import InvalidInput


class SettingsStore(Protocol):
    def get_setting(self, key: str, default: Any = None) -> Any: ...
    def set_setting(self, key: str, value: Any) -> None: ...


@dataclass(frozen=True)
class Setting:
    key: str
    type: type | tuple[type, ...]
    default: Any
    help: str
    # "module:function" that raises a UserError for a value it refuses (resolved when used, so that this low-level
    # module imports none of the model code)
    validator: str | None = None
    label: str = ""   # what the Settings dialog calls it where it has no widget of its own (else the key)

    def check(self, value: Any) -> Any:
        """`value` as stored, or InvalidInput with a sentence saying what the setting takes."""
        if value is None:
            return None
        if self.type is bool and not isinstance(value, bool):
            raise InvalidInput(f"{self.key} takes true or false, not {value!r}")
        if self.type is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise InvalidInput(f"{self.key} takes a whole number, not {value!r}")
        if not isinstance(value, self.type):
            raise InvalidInput(f"{self.key} takes {self.help}, not {value!r}")
        if self.validator:
            module, func = self.validator.split(":")
            getattr(importlib.import_module(module), func)(value)
        return value


SETTINGS: dict[str, Setting] = {s.key: s for s in (
    Setting("face_backend", str, "auto", "auto, dlib, dlib-cnn, insightface, insightface:PACK or a pack folder"),
    Setting("clip_model", str, "ViT-B-32", "ViT-B-32 (default) or DFN5B-CLIP-ViT-H-14-378"),
    Setting("clip_weights", str, None, "a local open_clip weights file (default: the Hugging Face cache)",
            label="CLIP weights file"),
    Setting("vlm", str, None, "a VLM key (`myvlm models list`; default: the one `myvlm doctor` recommends for this "
                              "computer), a tiny-* preset or a checkpoint folder",
            validator="engine.models.vlm.specs:check_vlm_setting"),
    Setting("watch_polling", bool, False, "true/false: watch folders by polling (network drives)"),
    Setting("preview_cache_bytes", int, 2 * 1024**3, "bytes of full-size previews kept on disk"),
    Setting("instant_names", bool, True, "true (default): captions use a name as soon as a face or thing is "
                                         "recognised, before training; false: only trained concepts are named"),
    Setting("search_clip_floor", (int, float, dict), None,
            "CLIP similarity under which search ignores looks: a number, or {model: number}",
            label="Search: least look similarity"),
)}


def setting(key: str) -> Setting:
    try:
        return SETTINGS[key]
    except KeyError:
        raise InvalidInput(f"unknown setting {key!r}; known: {', '.join(SETTINGS)}") from None


def read(store: SettingsStore, key: str) -> Any:
    """The stored value, or the declared default."""
    value = store.get_setting(key)
    return setting(key).default if value is None else value


def write(store: SettingsStore, key: str, value: Any) -> Any:
    """Check `value` against the declaration and store it; returns what was stored."""
    value = setting(key).check(value)
    store.set_setting(key, value)
    return value


def parse(key: str, text: str) -> Any:
    """A value typed on the command line: JSON when it parses ("true", "3", "{...}"), else the text itself."""
    setting(key)
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


__all__ = ["Setting", "SETTINGS", "setting", "read", "write", "parse"]
