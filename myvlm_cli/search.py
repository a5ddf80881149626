"""`myvlm search` and `caption-edit`: finding photos by names, words and looks, and writing a caption yourself."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from .common import print_json

if TYPE_CHECKING:
    from engine.library import Library


def cmd_search(args: argparse.Namespace, lib: Library) -> int:
    resp = lib.search(args.query, limit=args.limit)
    for note in resp.notes:
        print(f"note: {note}", file=sys.stderr)
    if args.json:
        print_json([r.to_json() for r in resp.results])
        return 0
    if not resp.results:
        print("no photo matches", file=sys.stderr)
    for r in resp.results:
        print(f"{r.score:.4f}  {r.path}" + (f"\n        “{r.caption}”" if r.caption else "") + f"\n        why: {r.why}")
    return 0


def cmd_caption_edit(args: argparse.Namespace, lib: Library) -> int:
    from engine.read_models import photo_caption

    photo = lib.find_photo(args.photo)
    lib.save_caption(photo.id, args.text)
    caption = photo_caption(lib, photo.id)
    if args.json:
        print_json({"id": photo.id, "photo": photo.path, "caption": caption})
    else:
        print(f"{photo.path}: {caption}" if caption else f"{photo.path}: no caption")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("search", help="find photos: names, words and looks (\"Alex at the beach\", person:Alex in:2019)")
    s.add_argument("query")
    s.add_argument("--limit", type=int, default=50)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_search)

    s = sub.add_parser("caption-edit", help="write a photo's caption yourself (it wins over generated ones; \"\" undoes)")
    s.add_argument("photo", help="photo id or path")
    s.add_argument("text")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_caption_edit)
