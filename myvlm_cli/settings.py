"""`myvlm settings` and `doctor`: the library's settings, and what this computer has (versions, device, models)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from .common import print_json

if TYPE_CHECKING:
    from engine.api import Library


SETTINGS_HELP = {"face_backend": "auto, dlib, dlib-cnn, insightface, insightface:PACK or a pack folder",
                 "clip_model": "ViT-B-32 (default) or DFN5B-CLIP-ViT-H-14-378",
                 "clip_weights": "a local open_clip weights file (default: the Hugging Face cache)",
                 "vlm": "a VLM key (`myvlm models list`; default: the one `myvlm doctor` recommends for this "
                        "computer), a tiny-* preset or a checkpoint folder",
                 "watch_polling": "true/false", "preview_cache_bytes": "bytes",
                 "instant_names": "true (default): captions use a name as soon as a face or thing is recognised, "
                                  "before training; false: only trained concepts are named",
                 "search_clip_floor": "CLIP similarity under which search ignores looks: a number, or {model: number}"}


def cmd_settings(args: argparse.Namespace, lib: Library) -> int:
    if args.key is None:
        for key, help_ in SETTINGS_HELP.items():
            print(f"{key} = {json.dumps(lib.catalog.get_setting(key))}    ({help_})")
        return 0
    if args.key not in SETTINGS_HELP:
        print(f"myvlm: unknown setting {args.key!r}; known: {', '.join(SETTINGS_HELP)}", file=sys.stderr)
        return 2
    if args.value is None:
        print(json.dumps(lib.catalog.get_setting(args.key)))
        return 0
    try:
        value = json.loads(args.value)
    except json.JSONDecodeError:
        value = args.value
    if args.key == "vlm":
        from engine.personalize.vlm import VlmError, resolve_spec

        try:
            resolve_spec(str(value))
        except VlmError as exc:
            print(f"myvlm: {exc}", file=sys.stderr)
            return 2
    lib.catalog.set_setting(args.key, value)
    print(f"{args.key} = {json.dumps(value)}")
    if args.key == "vlm":   # concept embeddings belong to one VLM: the others' become stale
        states = lib.personalizer().refresh_states()
        stale = sum(st == "stale" for st in states.values())
        if stale:
            print(f"{stale} concept(s) were trained on another VLM: retrain them with `myvlm train NAME`")
    return 0


def cmd_doctor(args: argparse.Namespace, lib: Library | None) -> int:
    from engine.doctor import report

    rep = report(lib.paths if lib else None)
    if args.json:
        print_json(rep)
        return 0
    print(f"MyVLM Desktop {rep['myvlm_desktop']} — Python {rep['python']}, SQLite {rep['sqlite']}")
    d = rep["device"]
    print(f"Device: {d.get('kind')} — {d.get('name')}" + (f", {d['memory_gb']} GB" if "memory_gb" in d else "")
          + (f"; RAM {d['ram_gb']} GB" if "ram_gb" in d else "") + f"; {d.get('cpu_cores')} CPU cores")
    print("Packages:")
    for name, v in rep["packages"].items():
        print(f"  {name:<24} {v or 'MISSING'}")
    print(f"Formats: HEIC {'yes' if rep['formats']['heif'] else 'no'}, AVIF {'yes' if rep['formats']['avif'] else 'no'}")
    cap = rep["captioners"]
    print(f"Hardware: {cap['hardware_text']}")
    rec = cap["recommended"]
    print(f"Recommended captioner: {rec['vlm']} ({rec['title']}) on the {rec['device']} — {rec['reason']}")
    print("Captioners on this computer (per photo · per concept of 100 steps):")
    for key, e in cap["estimates"].items():
        print(f"  {key + (' *' if key == rec['vlm'] else ''):<16} {e['text']:<28} {e['detail']}")
    m = rep["models"]
    dl = m["dlib_face"]
    print(f"Face models (dlib, CC0): {dl['state']}" + (f" — {dl['fix']}" if dl.get("fix") else f" at {dl['path']}"))
    for pack in m["insightface_packs"]:
        print(f"InsightFace {pack['name']}: {pack['state']}" + (f" — {pack['fix']}" if pack["fix"] else ""))
    for hub in m["hub"]:
        print(f"{hub['name']}: {hub['state']} ({hub['purpose']})" + (f"\n    → {hub['fix']}" if hub["fix"] else ""))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("settings", help="show or change a library setting")
    s.add_argument("key", nargs="?")
    s.add_argument("value", nargs="?")
    s.set_defaults(func=cmd_settings)

    s = sub.add_parser("doctor", help="versions, device, and which models are present or missing")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_doctor)
