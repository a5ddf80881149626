"""`myvlm check`: is the library whole? (SQLite's checks plus the catalog's invariants: Library.check)."""

from __future__ import annotations

import argparse
import json
import sys


def cmd_check(args: argparse.Namespace, lib) -> int:
    rep = lib.check(files=not args.no_files, clean=args.clean)
    if args.json:
        json.dump(rep.to_json(), sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        print(f"Library {lib.paths.root}: {'whole' if rep.ok else 'PROBLEMS FOUND'}")
        if rep.sqlite != ["ok"]:
            print("SQLite integrity check:")
            for line in rep.sqlite[:50]:
                print(f"  {line}")
        for r in rep.repaired:
            print(f"  repaired: {r}")
        for p in rep.problems:
            print(f"  problem: {p}")
        for n in rep.notes:
            print(f"  note: {n}")
    return 0 if rep.ok else 1


def register(sub) -> None:
    s = sub.add_parser("check", help="check the library is whole (database, search index, thumbnails); "
                                     "exit status 1 when it is not")
    s.add_argument("--clean", action="store_true",
                   help="remove temporary files left by interrupted writes (older than a minute), and repair what "
                        "two indexing runs at once left in older versions (faces stored twice, their groups), "
                        "keeping every name and confirmation")
    s.add_argument("--no-files", action="store_true", help="check the database only, not the thumbnail files")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_check)
