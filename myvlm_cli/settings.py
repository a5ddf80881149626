"""`myvlm settings` and `doctor`: the library's settings, and what this computer has (versions, device, models)."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from .common import print_json

if TYPE_CHECKING:
    from engine.library import Library


def cmd_settings(args: argparse.Namespace, lib: Library) -> int:
    """Each setting is declared once (engine.settings: type, default, help, validation); a value is stored through
    Library.set_setting, which refuses a wrong one (InvalidInput: `myvlm: <message>`, exit status 2) and applies
    what changing it implies (a new vlm makes the concepts trained on another stale)."""
    from engine import settings

    if args.key is None:
        values = lib.settings()
        for key, s in settings.SETTINGS.items():
            print(f"{key} = {json.dumps(values[key])}    ({s.help})")
        return 0
    if args.value is None:
        settings.setting(args.key)   # an unknown key is refused with the known ones
        print(json.dumps(lib.settings()[args.key]))
        return 0
    done = lib.set_setting(args.key, settings.parse(args.key, args.value))
    print(f"{args.key} = {json.dumps(done['value'])}")
    if done["stale_concepts"]:
        print(f"{done['stale_concepts']} concept(s) were trained on another VLM: retrain them with `myvlm train NAME`")
    return 0


def cmd_doctor(args: argparse.Namespace, lib: Library | None) -> int:
    from engine.library import doctor_report

    rep = doctor_report(lib.paths if lib else None)
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
