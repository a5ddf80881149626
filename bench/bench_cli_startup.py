#!/usr/bin/env python3
"""Benchmark: how long the light `myvlm` commands take, the code before the lazy imports against the code now.

Issue 16 (item 6): `myvlm --version` took 3.6 s and `status` 4.3 s on an idle machine, nearly all of it importing
torch (and, to ask whether weights are here, huggingface_hub's download code) that these commands never use.

  before   the engine as it was at a git revision (default: the commit before the lazy imports), extracted with
           `git archive` into a temporary folder and run from there
  after    the engine in this working tree

Both run the same commands, in fresh interpreters, on their own copy of one small library (the demo photos,
thumbnails and faces indexed by the `before` code; `after` migrates its copy on a warm-up run). Bytecode is cached
in a temporary folder and every command runs once before timing, as on an installed app. Each command is run
`--repeat` times, alternating before and after; the table has the median wall time, the median CPU time (user +
system of the child, which a busy machine inflates less than wall time) and the ratio. The load average is printed
with the table: on a shared machine, compare the CPU columns.

    .venv/bin/python bench/bench_cli_startup.py                 # the 27 demo photos, 7 runs per command
    .venv/bin/python bench/bench_cli_startup.py --quick         # 6 photos, 3 runs
    .venv/bin/python bench/bench_cli_startup.py --before REV    # compare with another revision
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / ".cache" / "test-data" / "kphotoalbum"
BEFORE_LAZY_IMPORTS = "0748040~1"   # the commit before "CLI start-up: ... no longer import torch"


def extract_engine(revision: str, into: Path) -> Path:
    """The `engine` package as it was at `revision`, in a folder of its own (the working tree is not touched)."""
    data = subprocess.run(["git", "archive", revision, "engine"], cwd=ROOT, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(into, filter="data")
    return into


def child_env(pycache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPATH")}
    env["PYTHONPYCACHEPREFIX"] = str(pycache)   # compiled once, as an installed app's .pyc files are
    env["HF_HUB_OFFLINE"] = "1"
    return env


def run_cli(code_dir: Path, library: Path, args: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds, stdout) of `python -m myvlm_cli --library LIB ARGS` run with code_dir's engine
    (`-m engine.cli` for a revision from before the command line left the engine)."""
    cli = "myvlm_cli" if (code_dir / "myvlm_cli").is_dir() else "engine.cli"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", cli, "--library", str(library), *args], cwd=code_dir,
                         env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if res.returncode != 0:
        raise RuntimeError(f"myvlm {' '.join(args)} in {code_dir} failed ({res.returncode}):\n{res.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, res.stdout


def make_library(code_dir: Path, album: Path, library: Path, env: dict[str, str]) -> None:
    run_cli(code_dir, library, ["index", str(album), "--stage", "thumbnail", "--stage", "faces", "--no-progress"],
            env)


def commands(person_id: int | None) -> list[list[str]]:
    out = [["--version"], ["status"], ["people"]]
    if person_id is not None:
        out.append(["name", str(person_id), "Anne Helene"])
    out += [["search", "Anne Helene"], ["search", "beach"]]
    return out


def first_person(code_dir: Path, library: Path, env: dict[str, str]) -> int | None:
    people = json.loads(run_cli(code_dir, library, ["people", "--json"], env)[2])
    return people[0]["id"] if people else None


def measure(sides: dict[str, tuple[Path, Path]], cmds: list[list[str]], repeat: int,
            env: dict[str, str]) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """{command: {side: [(wall, cpu), ...]}}, the sides alternating so that load changes hit both alike."""
    out: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for args in cmds:
        key = " ".join(args)
        out[key] = {side: [] for side in sides}
        for code, lib in sides.values():   # warm-up: bytecode, file cache, the after side's migration
            run_cli(code, lib, args, env)
        for _ in range(repeat):
            for side, (code, lib) in sides.items():
                wall, cpu, _ = run_cli(code, lib, args, env)
                out[key][side].append((wall, cpu))
    return out


def report(results: dict[str, dict[str, list[tuple[float, float]]]], load_before: tuple, load_after: tuple,
           photos: int, before_rev: str) -> str:
    lines = [f"{photos} photos indexed (thumbnails, faces); before = engine at {before_rev}, after = this tree; "
             f"{os.cpu_count()} CPUs, load average {load_before[0]:.2f} before, {load_after[0]:.2f} after", "",
             "| command | before wall s | after wall s | wall ratio | before CPU s | after CPU s | CPU ratio |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for cmd, sides in results.items():
        bw, aw = (statistics.median(w for w, _ in sides[s]) for s in ("before", "after"))
        bc, ac = (statistics.median(c for _, c in sides[s]) for s in ("before", "after"))
        lines.append(f"| `myvlm {cmd}` | {bw:.2f} | {aw:.2f} | {bw / aw:.1f}x | {bc:.2f} | {ac:.2f} | "
                     f"{bc / ac:.1f}x |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--before", default=BEFORE_LAZY_IMPORTS, help="git revision of the `before` engine")
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--quick", action="store_true", help="6 photos, 3 runs per command")
    args = p.parse_args()
    repeat = 3 if args.quick else args.repeat
    with tempfile.TemporaryDirectory(prefix="myvlm-bench-cli-") as tmp_name:
        tmp = Path(tmp_name)
        env = child_env(tmp / "pycache")
        before_code = extract_engine(args.before, tmp / "before")
        album = tmp / "album"
        album.mkdir()
        photos = sorted(DEMO.glob("*.jpg"))[: 6 if args.quick else None]
        for photo in photos:
            shutil.copy(photo, album / photo.name)
        make_library(before_code, album, tmp / "lib-before", env)
        shutil.copytree(tmp / "lib-before", tmp / "lib-after")
        sides = {"before": (before_code, tmp / "lib-before"), "after": (ROOT, tmp / "lib-after")}
        run_cli(ROOT, tmp / "lib-after", ["status"], env)   # the after side migrates its copy of the library here
        person = first_person(ROOT, tmp / "lib-after", env)
        load_before = os.getloadavg()
        results = measure(sides, commands(person), repeat, env)
        load_after = os.getloadavg()
    print(report(results, load_before, load_after, len(photos), args.before))
    return 0


if __name__ == "__main__":
    sys.exit(main())
