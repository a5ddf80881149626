"""`myvlm`: the headless command line. Everything the GUI does, for scripts and tests.

`--json` output shapes are stable and documented in docs/cli-json.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TextIO

from . import __version__
from .library import default_pictures_path
from .pipeline import ALL, ERRORS, MISSING

if TYPE_CHECKING:   # the engine's API (stages, models) is imported by main(), once the command is known
    from .api import Library
    from .pipeline import ProgressEvent


def _print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):   # closed, or not a real stream
        return False


def rate_text(done: int, seconds: float, unit: str = "photo") -> str:
    """"4.2 photo/s" over the whole run so far, or "" when there is nothing to say (no time measured yet)."""
    if done <= 0 or seconds <= 0:
        return ""
    return f"{done / seconds:.1f} {unit}/s"


class IndexProgress:
    """What `myvlm index` says on stderr while it works. On a terminal: one tqdm bar per stage. Anywhere else (a
    pipe, a log file, CI): plain lines, a stage's start, a line every `interval_s` and its end, so no escape codes or
    half-drawn bars end up glued to the messages. Rates are counted from when a stage starts (the scan: from when
    the scan starts, not from its first burst of hashed files), on `clock`."""

    def __init__(self, enabled: bool, stream: TextIO | None = None, *, terminal: bool | None = None,
                 clock: Callable[[], float] = time.monotonic, interval_s: float = 30.0):
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.terminal = enabled and (_is_terminal(self.stream) if terminal is None else terminal)
        self.clock = clock
        self.interval_s = interval_s
        self.bars: dict[str, Any] = {}
        self.started: dict[str, float] = {}
        self.last_line: dict[str, float] = {}

    def begin(self, stage: str) -> None:
        """The stage's clock starts now (called before the scan: its first progress event comes late)."""
        self.started.setdefault(stage, self.clock())

    def _line(self, text: str) -> None:
        if self.enabled:
            print(text, file=self.stream, flush=True)

    def _rate(self, stage: str, done: int) -> str:
        return rate_text(done, self.clock() - self.started.get(stage, self.clock()),
                         "file" if stage == "scan" else "photo")

    def _bar(self, stage: str, total: int) -> Any:
        from tqdm import tqdm   # only on a terminal

        bar = self.bars.get(stage)
        if bar is None:
            bar = tqdm(total=total, desc=f"{stage:>9}", file=self.stream, dynamic_ncols=True, leave=True,
                       bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")
            self.bars[stage] = bar
        elif bar.total != total:
            bar.total = total
        return bar

    def _show(self, stage: str, done: int, total: int, errors: int = 0, final: str = "") -> None:
        self.begin(stage)
        extra = ", ".join(x for x in (self._rate(stage, done), f"{errors} errors" if errors else "") if x)
        if self.terminal:
            bar = self._bar(stage, total)
            bar.n = done
            bar.set_postfix_str(extra, refresh=False)
            bar.refresh()
            if final:
                bar.close()
            return
        now = self.clock()
        if final:
            seconds = now - self.started[stage]
            self._line(f"{stage}: {final} {done}/{total} in {seconds:.1f} s" + (f" ({extra})" if extra else ""))
        elif stage not in self.last_line:
            self._line(f"{stage}: {total} to do")
        elif now - self.last_line[stage] >= self.interval_s:
            self._line(f"{stage}: {done}/{total}" + (f" ({extra})" if extra else ""))
        else:
            return
        self.last_line[stage] = now

    def scan(self, stage: str, done: int, total: int, current: str) -> None:
        if self.terminal:   # plain output has the scan's summary line after it
            self._show("scan", done, total)

    def pipeline(self, ev: ProgressEvent) -> None:
        if ev.state == "unavailable":
            self._line(f"{ev.stage}: skipped, cannot run here — {ev.current}")
            return
        if ev.total == 0:
            return   # nothing to do for this stage
        final = {"finished": "done", "cancelled": "stopped at"}.get(ev.state, "")
        self._show(ev.stage, ev.done, ev.total, ev.errors, final)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()


def _install_interrupt(lib: Library) -> threading.Event:
    """First Ctrl-C: finish the photos in flight and stop cleanly (work resumes next time). Second: abort."""
    stopped = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        if stopped.is_set():
            raise KeyboardInterrupt
        stopped.set()
        print("\nstopping after the photos in progress… (Ctrl-C again to abort)", file=sys.stderr)
        lib.cancel()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stopped


# -- commands -----------------------------------------------------------------------------------------------------

def cmd_index(args: argparse.Namespace, lib: Library) -> int:
    from .api import FolderNotFound

    targets = list(args.paths)
    if not targets and not lib.folders():
        pictures = default_pictures_path()
        if not pictures.is_dir():
            print(f"No photo folder given and no Pictures folder at {pictures}. "
                  "Run `myvlm index PATH` (or `make run ALBUM=PATH`).", file=sys.stderr)
            if args.json:
                _print_json({"scan": None, "pipeline": None, "status": lib.status()})
            else:
                _print_status(lib.status())
            return 0
        targets = [str(pictures)]
    for t in targets:
        try:
            folder = lib.add_folder(t)
        except (FolderNotFound, ValueError) as exc:
            print(f"myvlm: {exc}", file=sys.stderr)
            return 2
        if not args.json:
            print(f"watching {folder.path}", file=sys.stderr)
    stopped = _install_interrupt(lib)
    bars = IndexProgress(enabled=not args.no_progress)
    try:
        bars.begin("scan")
        scan = lib.scan(progress=bars.scan)
        bars.close()
        if not args.json:
            rate = rate_text(scan.seen, scan.seconds, "file")
            print(f"scanned {scan.seen} files in {scan.seconds:.1f}s{f' ({rate})' if rate else ''}: {scan.new} new, {scan.changed} changed, "
                  f"{scan.moved} moved, {scan.gone} gone, {scan.duplicates} duplicates, {scan.unsupported} unsupported, "
                  f"{scan.errors} errors" + (f"; offline: {', '.join(scan.offline)}" if scan.offline else ""),
                  file=sys.stderr)
        report = lib.process(mode=args.mode, stages=args.stages, progress=bars.pipeline) if not stopped.is_set() else None
    finally:
        bars.close()
    status = lib.status()
    if args.json:
        _print_json({"scan": scan.to_json(), "pipeline": report.to_json() if report else None, "status": status})
    else:
        _print_status(status)
    return 130 if stopped.is_set() else 0


def cmd_watch(args: argparse.Namespace, lib: Library) -> int:
    from .api import FolderNotFound
    from .watch import FolderWatcher

    for t in args.paths:
        try:
            lib.add_folder(t)
        except (FolderNotFound, ValueError) as exc:
            print(f"myvlm: {exc}", file=sys.stderr)
            return 2
    if not lib.folders():
        print("myvlm: no folders to watch; give one: myvlm watch PATH", file=sys.stderr)
        return 2
    if args.polling is not None:
        lib.catalog.set_setting("watch_polling", bool(args.polling))
    done = threading.Event()

    def on_update(update: Any) -> None:
        s = update.scan
        what = "start-up reconcile" if update.startup else ", ".join(update.folders)
        line = (f"[{what}] {s.new} new, {s.changed} changed, {s.moved} moved, {s.gone} gone, {s.errors} errors")
        if args.json:
            print(json.dumps({"folders": update.folders, "startup": update.startup, "scan": s.to_json(),
                              "pipeline": update.pipeline.to_json() if update.pipeline else None}), flush=True)
        else:
            print(line, file=sys.stderr, flush=True)

    watcher = FolderWatcher(lib.paths.root, poll_interval=args.interval,
                            on_update=on_update)

    def handler(signum: int, frame: Any) -> None:
        done.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    watcher.start(wait_ready=False)
    if not args.json:
        print(f"watching {len(lib.folders())} folder(s); Ctrl-C to stop", file=sys.stderr)
    while not done.wait(0.5):
        if watcher.error is not None:
            print(f"myvlm: watcher stopped: {watcher.error}", file=sys.stderr)
            watcher.stop()
            return 1
    watcher.stop()
    return 0


def _print_status(st: dict[str, Any]) -> None:
    p = st["photos"]
    print(f"Library: {st['library']}")
    for f in st["folders"]:
        extra = f"  ({f['error']})" if f["error"] else ""
        print(f"  folder {f['path']}: {f['status']}, {f['photos']} photos{extra}")
    print(f"Photos: {p['total']} total — {p['ok']} ready, {p['pending']} pending, {p['error']} with errors, "
          f"{p['unsupported']} unsupported, {p['offline']} offline, {p['gone']} gone")
    for name, s in st["stages"].items():
        if s.get("unavailable"):
            print(f"  stage {name}: not available here, {s['pending']} photos waiting — {s['unavailable']}")
        else:
            blocked = f", {s['blocked']} blocked by an earlier error (see Problems)" if s.get("blocked") else ""
            print(f"  stage {name}: {s['done']} done, {s['pending']} pending, {s['errors']} errors{blocked}")
    print(status_verdict(st))
    pe = st.get("people")
    if pe and pe["faces"]:
        hint = " — name them: myvlm people" if pe["unnamed"] else ""
        print(f"People: {pe['faces']} faces; {pe['named']} named, {pe['unnamed']} groups waiting for a name"
              f"{', ' + str(pe['hidden']) + ' hidden' if pe['hidden'] else ''}{hint}")
    if st.get("concepts"):
        print("Concepts: " + ", ".join(f"{n} {k}{'s' if n != 1 else ''}" for k, n in sorted(st["concepts"].items())))
    errors = st["errors"]
    if errors:
        print(f"Problems ({len(errors)}):")
        for e in errors[:20]:
            print(f"  {e['path']}: {e['error']}")
        if len(errors) > 20:
            print(f"  … and {len(errors) - 20} more: myvlm photos --errors")


def status_verdict(st: dict[str, Any]) -> str:
    """One sentence: is the library up to date? Never "up to date" while a stage cannot run or work is left."""
    stages = st["stages"]
    cannot = [name for name, s in stages.items() if s.get("unavailable")]
    pending = max((s["pending"] for name, s in stages.items() if name not in cannot), default=0)
    problems = st["photos"]["error"]
    if cannot:
        return (f"Not up to date: {', '.join(cannot)} cannot run here (why and how to fix: above)"
                + (f"; {pending} photos still to process: myvlm index" if pending else "") + ".")
    if pending:
        return f"Not up to date: {pending} photos still to process: myvlm index."
    if problems:
        return f"Up to date, except {problems} file(s) that cannot be read (Problems, below)."
    return "Up to date."


def cmd_status(args: argparse.Namespace, lib: Library) -> int:
    st = lib.status()
    if args.json:
        _print_json(st)
    else:
        _print_status(st)
    return 0


def cmd_photos(args: argparse.Namespace, lib: Library) -> int:
    photos = lib.photos(status=args.status, errors_only=args.errors, order=args.order, limit=args.limit)
    if args.json:
        _print_json([p.to_json() for p in photos])
        return 0
    for p in photos:
        size = f"{p.width}×{p.height}" if p.width else "-"
        extra = f"  ! {p.last_error}" if p.last_error else ""
        print(f"{p.id:>7}  {p.effective_status:<11} {size:>11}  {p.date_taken or '-':<19}  {p.path}{extra}")
    return 0


def cmd_folders(args: argparse.Namespace, lib: Library) -> int:
    if args.remove is not None:
        n = lib.catalog.remove_folder(args.remove)
        print(f"stopped watching folder {args.remove}; forgot {n} photos (the files themselves are untouched)",
              file=sys.stderr)
    folders = lib.status()["folders"]
    if args.json:
        _print_json(folders)
    else:
        for f in folders:
            print(f"{f['id']:>4}  {f['status']:<8} {f['photos']:>7} photos  {f['path']}")
    return 0


def cmd_purge(args: argparse.Namespace, lib: Library) -> int:
    n = lib.catalog.purge_gone()
    if args.json:
        _print_json({"purged": n})
    else:
        print(f"forgot {n} photo(s) whose files are gone")
    return 0


def cmd_rotate(args: argparse.Namespace, lib: Library) -> int:
    photo = lib.catalog.photo(args.photo_id)
    if photo is None:
        print(f"myvlm: no photo with id {args.photo_id}", file=sys.stderr)
        return 2
    lib.rotate(photo.id, args.degrees)
    print(f"{photo.path}: shown rotated {(photo.user_rotation + args.degrees) % 360}° (the file is not modified)")
    return 0


# -- people ----------------------------------------------------------------------------------------------------------

def _face_json(f: dict[str, Any]) -> dict[str, Any]:
    return {"id": f["id"], "photo": f.get("photo_path"), "bbox": [round(f["x"], 1), round(f["y"], 1),
            round(f["w"], 1), round(f["h"], 1)], "score": round(f["score"], 4), "state": f["state"]}


def cmd_people(args: argparse.Namespace, lib: Library) -> int:
    people = lib.people()
    named = True if args.named else (False if args.unnamed else None)
    rows = people.people(include_hidden=args.all, named=named)
    offers = people.suggestions_by_group(lib.face_backend().thresholds.suggest_distance)
    out = []
    for p in rows:
        faces = [_face_json(f) for f in people.faces_of(p["id"])]
        sugg = [{"id": s.person_id, "name": s.name, "similarity": round(s.similarity, 4)}
                for s in ([offers[p["id"]]] if p["id"] in offers else [])]
        out.append({"id": p["id"], "name": p["name"], "hidden": bool(p["hidden"]), "faces": faces,
                    "suggestions": sugg})
    if args.json:
        _print_json(out)
        return 0
    if not out:
        print("no people yet: index photos with faces first (myvlm index PATH)")
    for p in out:
        label = p["name"] or "unnamed"
        extra = " (hidden)" if p["hidden"] else ""
        confirmed = sum(f["state"] == "confirmed" for f in p["faces"])
        print(f"{p['id']:>5}  {label:<24} {len(p['faces']):>4} faces ({confirmed} confirmed){extra}")
        for s in p["suggestions"]:
            print(f"         Is this {s['name']}? (person {s['id']}, similarity {s['similarity']:.2f})"
                  f"  → myvlm name {p['id']} \"{s['name']}\"")
    return 0


def _people_action(fn):
    """Run a naming action; a PeopleError is a clear message and exit code 2."""
    from .people import PeopleError

    def run(args: argparse.Namespace, lib: Library) -> int:
        try:
            msg = fn(args, lib.people())
        except PeopleError as exc:
            print(f"myvlm: {exc}", file=sys.stderr)
            return 2
        if msg:
            print(msg)
        return 0
    return run


@_people_action
def cmd_name(args, people):
    pid = people.name(args.person_id, args.name)
    return f"person {pid} is {args.name}" + (f" (merged into existing person {pid})" if pid != args.person_id else "")


@_people_action
def cmd_merge(args, people):
    people.merge(args.target, args.sources)
    return f"merged {', '.join(map(str, args.sources))} into {args.target}"


@_people_action
def cmd_move(args, people):
    people.move_faces(args.face_ids, args.to)
    return f"moved {len(args.face_ids)} face(s) to person {args.to}"


@_people_action
def cmd_split(args, people):
    return f"new person {people.split(args.person_id, args.face_ids)}"


@_people_action
def cmd_reject(args, people):
    people.reject(args.face_id, args.person_id)
    return f"face {args.face_id} is not person {args.person_id}; it will not be suggested for them again"


@_people_action
def cmd_confirm(args, people):
    people.confirm(args.face_id)
    return f"face {args.face_id} confirmed"


@_people_action
def cmd_hide(args, people):
    if args.small is not None:
        hidden = people.hide_small(args.small)
        return f"hid {len(hidden)} unnamed group(s) of at most {args.small} faces"
    if args.person_id is None:
        from .people import PeopleError

        raise PeopleError("give a person id, or --small N")
    people.hide(args.person_id, not args.unhide)
    return f"person {args.person_id} {'shown' if args.unhide else 'hidden'}"


@_people_action
def cmd_forget(args, people):
    n = people.forget(args.person_id)
    return f"forgot person {args.person_id} and {n} face(s) of theirs"


def cmd_faces(args: argparse.Namespace, lib: Library) -> int:
    photo = lib.catalog.photo(int(args.photo)) if args.photo.isdigit() else lib.catalog.photo_by_path(args.photo)
    if photo is None:
        print(f"myvlm: no photo {args.photo!r} in the catalog", file=sys.stderr)
        return 2
    faces = lib.people().faces_in_photo(photo.id)
    if args.json:
        _print_json([{**_face_json({**f, "photo_path": photo.path}), "person_id": f["person_id"],
                      "person": f["person_name"]} for f in faces])
        return 0
    print(f"{photo.path}: {len(faces)} face(s)")
    for f in faces:
        who = f["person_name"] or (f"unnamed person {f['person_id']}" if f["person_id"] else "nobody")
        print(f"  face {f['id']}: {who} [{f['state']}] at x={f['x']:.0f} y={f['y']:.0f} {f['w']:.0f}×{f['h']:.0f}")
    return 0


def cmd_recluster(args: argparse.Namespace, lib: Library) -> int:
    from .faces.clustering import FaceClusterer

    backend = lib.face_backend()
    report = FaceClusterer(lib.catalog, backend.key, backend.embedding_dim, backend.thresholds).recluster()
    if args.json:
        _print_json(report.to_json())
    else:
        print(f"re-clustered: {report.founded_people} groups founded, {report.joined} faces joined, "
              f"{report.deferred} waiting; confirmed faces, names and rejections kept")
    return 0


# -- concepts --------------------------------------------------------------------------------------------------------

def _photo_arg(lib: Library, text: str):
    photo = lib.catalog.photo(int(text)) if text.isdigit() else lib.catalog.photo_by_path(text)
    if photo is None:
        raise ValueError(f"no photo {text!r} in the catalog (give a photo id or the path of an indexed photo)")
    return photo


def _train_and_report(args: argparse.Namespace, lib: Library, concept, create=None) -> int:
    """Train a concept's head and say how it went; `create(train)`, when given, makes the concept with `train`
    (add-object: nothing is left behind when the head cannot be trained)."""
    from tqdm import tqdm

    bar = tqdm(total=None, desc="training", unit="step", file=sys.stderr, leave=False,
               disable=args.json or not _is_terminal(sys.stderr))   # a bar only where it can be drawn

    def progress(step: int, total: int, loss: float | None = None, **_: Any) -> None:
        bar.total = total
        bar.n = step
        if loss is not None:
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        bar.refresh()

    def train(concept_id: int):
        return lib.train_concept_head(concept_id, progress=progress, negatives_folder=getattr(args, "negatives", None))

    try:
        concept = create(train) if create is not None else train(concept.id)
    finally:
        bar.close()
    if args.json:
        _print_json(concept.to_json())
    else:
        m = concept.metrics or {}
        found = len(lib.concepts().photos_with(concept.id))
        quality = ""
        if m.get("precision") is not None and m.get("recall") is not None:
            quality = f"; held-out precision {m['precision']:.2f}, recall {m['recall']:.2f} ({m.get('method', '')})"
        print(f"{concept.name} ({concept.kind}, identifier {concept.identifier!r}): head ready{quality}; "
              f"found in {found} photo(s)")
    return 0


def _why_no_suggestions(encoder: Any) -> str:
    """Suggestions come from CLIP embeddings: without its weights there are none to look at, which is not the same
    as "nothing recurring"."""
    missing = encoder.missing_reason()
    if missing:
        return f"no suggestions: finding recurring things needs CLIP, which cannot run here — {missing}"
    return "nothing recurring to suggest yet"


def cmd_concept(args: argparse.Namespace, lib: Library) -> int:
    from .concepts.registry import ConceptError
    from .faces.backends import FaceBackendError
    from .model_manager import ModelError  # and model_files.ModelLoadError: a CLIP file that does not load

    reg = lib.concepts()
    try:
        if args.action == "add-object":
            photos = [_photo_arg(lib, p).id for p in args.photos]
            return _train_and_report(args, lib, None, create=lambda train: reg.add_object_trained(
                args.name, photos, train, identifier=args.identifier))
        if args.action == "add-person":
            concept = reg.add_person(args.person_id, identifier=args.identifier)
            return _train_and_report(args, lib, concept)
        if args.action == "train":
            return _train_and_report(args, lib, reg.get(args.concept))
        if args.action == "list":
            concepts = reg.list()
            if args.json:
                _print_json([{**c.to_json(), "photos": len(reg.photos_with(c.id)),
                              "examples": len(reg.examples(c.id))} for c in concepts])
            elif not concepts:
                print("no concepts yet: myvlm concept add-object NAME PHOTO... or add-person PERSON_ID")
            for c in concepts if not args.json else []:
                print(f"{c.id:>4}  {c.name:<20} {c.kind:<7} identifier={c.identifier!r:<10} head={c.head_state:<9} "
                      f"embedding={c.embedding_state:<9} "
                      f"in {len(reg.photos_with(c.id))} photos")
            return 0
        if args.action == "detect":
            from .concepts.detect import ConceptDetector

            photo = _photo_arg(lib, args.photo)
            concepts, signals, _ = ConceptDetector(lib.catalog).compute(photo_ids=[photo.id])
            names = {c.id: c for c in concepts}
            out = [{"concept_id": s.concept_id, "name": names[s.concept_id].name, "kind": names[s.concept_id].kind,
                    "score": round(s.score, 4), "fired": s.fired, "face_id": s.face_id}
                   for s in sorted(signals, key=lambda s: -s.score)]
            if args.json:
                _print_json(out)
            else:
                print(f"{photo.path}:")
                for o in out:
                    face = f" (face {o['face_id']})" if o["face_id"] else ""
                    print(f"  {'✓' if o['fired'] else ' '} {o['name']}: {o['score']:.2f}{face}")
                if not out:
                    print("  no concept here")
            return 0
        if args.action == "import":
            from .concepts.research import import_research_concept

            concept = import_research_concept(reg, Path(args.folder), name=args.name)
            print(f"imported {concept.name} ({len(reg.examples(concept.id))} images)")
            return 0
        if args.action == "suggest":
            from .concepts.suggest import suggest_things

            enc = lib.clip_encoder()
            found = suggest_things(lib.catalog, enc.key, enc.dim)
            if args.json:
                _print_json([s.to_json() for s in found])
            else:
                for s in found:
                    rep = lib.catalog.photo(s.representative)
                    print(f"{len(s.photo_ids)} photos of this over {s.days} days — name it? e.g. {rep.path if rep else '?'}"
                          f"\n    myvlm concept add-object NAME {' '.join(map(str, s.photo_ids[:4]))}")
                if not found:
                    print(_why_no_suggestions(enc))
            return 0
        if args.action == "remove":
            reg.remove(reg.get(args.concept).id)
            return 0
    except (ConceptError, FaceBackendError, ModelError, ValueError) as exc:
        print(f"myvlm: {exc}", file=sys.stderr)
        return 2
    return 2


# -- search and captions (issue 7) -------------------------------------------------------------------------------

def cmd_search(args: argparse.Namespace, lib: Library) -> int:
    resp = lib.search(args.query, limit=args.limit)
    for note in resp.notes:
        print(f"note: {note}", file=sys.stderr)
    if args.json:
        _print_json([r.to_json() for r in resp.results])
        return 0
    if not resp.results:
        print("no photo matches", file=sys.stderr)
    for r in resp.results:
        print(f"{r.score:.4f}  {r.path}" + (f"\n        “{r.caption}”" if r.caption else "") + f"\n        why: {r.why}")
    return 0


def cmd_caption_edit(args: argparse.Namespace, lib: Library) -> int:
    try:
        photo = _photo_arg(lib, args.photo)
    except ValueError as exc:
        print(f"myvlm: {exc}", file=sys.stderr)
        return 2
    store = lib.captions()
    store.put_user_caption(photo.id, args.text)
    caption = store.caption(photo.id)
    if args.json:
        _print_json({"id": photo.id, "photo": photo.path, "caption": caption})
    else:
        print(f"{photo.path}: {caption}" if caption else f"{photo.path}: no caption")
    return 0


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
        from .personalize.vlm import VlmError, resolve_spec

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
    from .doctor import report

    rep = report(lib.paths if lib else None)
    if args.json:
        _print_json(rep)
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


# -- parser ------------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="myvlm", description="MyVLM Desktop from the command line.")
    p.add_argument("--version", action="version", version=f"myvlm {__version__}")
    p.add_argument("--library", metavar="PATH", help="library folder (default: $MYVLM_LIBRARY or the user data folder)")
    p.add_argument("-v", "--verbose", action="store_true", help="log to stderr too")
    p.add_argument("--face-backend", metavar="NAME",
                   help="face backend for this run: auto (default), dlib, dlib-cnn, insightface[:PACK] or a pack folder")
    p.add_argument("--vlm", dest="global_vlm", metavar="NAME",
                   help="vision-language model for this run: blip2, llava, smolvlm-256m... (default: the library's "
                        "setting, else what `myvlm doctor` recommends here), a tiny-* preset or a checkpoint folder")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("index", help="add folders and run every stage to completion")
    s.add_argument("paths", nargs="*", metavar="PATH", help="photo folders (default: the watched ones, else Pictures)")
    s.add_argument("--mode", choices=[MISSING, ALL, ERRORS], default=MISSING,
                   help="missing: only what is not done yet (default); all: redo everything; errors: retry failures")
    s.add_argument("--stage", dest="stages", action="append", metavar="NAME", help="run only this stage (repeatable)")
    s.add_argument("--no-progress", action="store_true", help="no progress bars")
    s.add_argument("--json", action="store_true", help="print a JSON report on stdout")
    s.set_defaults(func=cmd_index)

    s = sub.add_parser("watch", help="follow folders as files come and go, until Ctrl-C")
    s.add_argument("paths", nargs="*", metavar="PATH")
    s.add_argument("--polling", action=argparse.BooleanOptionalAction, default=None,
                   help="poll instead of OS events (network shares); remembered for this library")
    s.add_argument("--interval", type=float, default=2.0, help="polling interval in seconds")
    s.add_argument("--json", action="store_true", help="one JSON line per update on stdout")
    s.set_defaults(func=cmd_watch)

    s = sub.add_parser("status", help="what the library holds and what is left to do")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_status)

    s = sub.add_parser("photos", help="list photos")
    s.add_argument("--status", choices=["pending", "ok", "error", "unsupported", "gone", "offline"])
    s.add_argument("--errors", action="store_true", help="only photos with a problem")
    s.add_argument("--order", choices=["path", "date", "id"], default="path")
    s.add_argument("--limit", type=int)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_photos)

    s = sub.add_parser("folders", help="list watched folders")
    s.add_argument("--remove", type=int, metavar="ID", help="stop watching a folder (files are untouched)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_folders)

    s = sub.add_parser("purge", help="forget photos whose files are gone")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_purge)

    s = sub.add_parser("rotate", help="show a photo rotated (clockwise degrees; the file is never modified)")
    s.add_argument("photo_id", type=int)
    s.add_argument("degrees", type=int, choices=[90, 180, 270, -90])
    s.set_defaults(func=cmd_rotate)

    s = sub.add_parser("people", help="people and unnamed face groups, with 'Is this …?' suggestions")
    s.add_argument("--json", action="store_true")
    s.add_argument("--all", action="store_true", help="include hidden groups")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--named", action="store_true")
    g.add_argument("--unnamed", action="store_true")
    s.set_defaults(func=cmd_people)

    for cmd, help_ in (("name", "name a person or group (an existing name merges)"), ("rename", "rename a person")):
        s = sub.add_parser(cmd, help=help_)
        s.add_argument("person_id", type=int)
        s.add_argument("name")
        s.set_defaults(func=cmd_name)

    s = sub.add_parser("merge", help="merge people into the first one")
    s.add_argument("target", type=int)
    s.add_argument("sources", type=int, nargs="+")
    s.set_defaults(func=cmd_merge)

    s = sub.add_parser("move", help="these faces are that person")
    s.add_argument("face_ids", type=int, nargs="+")
    s.add_argument("--to", type=int, required=True, metavar="PERSON_ID")
    s.set_defaults(func=cmd_move)

    s = sub.add_parser("split", help="move some faces of a person into a new group")
    s.add_argument("person_id", type=int)
    s.add_argument("face_ids", type=int, nargs="+")
    s.set_defaults(func=cmd_split)

    s = sub.add_parser("reject", help="this face is not this person (remembered)")
    s.add_argument("face_id", type=int)
    s.add_argument("person_id", type=int)
    s.set_defaults(func=cmd_reject)

    s = sub.add_parser("confirm", help="yes, this face is its person")
    s.add_argument("face_id", type=int)
    s.set_defaults(func=cmd_confirm)

    s = sub.add_parser("hide", help="hide a group of strangers (or all small unnamed groups)")
    s.add_argument("person_id", type=int, nargs="?")
    s.add_argument("--small", type=int, metavar="N", help="hide every unnamed group of at most N faces")
    s.add_argument("--unhide", action="store_true")
    s.set_defaults(func=cmd_hide)

    s = sub.add_parser("forget", help="delete a person's name and face data (privacy)")
    s.add_argument("person_id", type=int)
    s.set_defaults(func=cmd_forget)

    s = sub.add_parser("faces", help="faces found in a photo")
    s.add_argument("photo", help="photo id or path")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_faces)

    s = sub.add_parser("recluster", help="group faces again from scratch (keeps confirmed faces, names, rejections)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_recluster)

    s = sub.add_parser("concept", help="people, pets and things the app recognises by name")
    csub = s.add_subparsers(dest="action", required=True, metavar="ACTION")
    c = csub.add_parser("add-object", help="a pet or a thing, from a few photos of it (trains its head)")
    c.add_argument("name")
    c.add_argument("photos", nargs="+", metavar="PHOTO", help="photo ids or paths (4 is a good number)")
    c.add_argument("--identifier", help="the word used in prompts (default: a rare token such as sks)")
    c.add_argument("--negatives", metavar="FOLDER", help="extra photos that are NOT it")
    c = csub.add_parser("add-person", help="a named person (their confirmed faces define the head)")
    c.add_argument("person_id", type=int)
    c.add_argument("--identifier", help="the word used in prompts (default: the name)")
    c = csub.add_parser("train", help="retrain a concept's head")
    c.add_argument("concept", help="concept id or name")
    c.add_argument("--negatives", metavar="FOLDER")
    c = csub.add_parser("list", help="all concepts and their state")
    c = csub.add_parser("detect", help="which concepts a photo shows")
    c.add_argument("photo", help="photo id or path")
    c = csub.add_parser("import", help="import a concept in the MyVLM research layout (images + captions.json)")
    c.add_argument("folder")
    c.add_argument("--name")
    c = csub.add_parser("suggest", help="recurring things worth naming")
    c = csub.add_parser("remove", help="delete a concept (the photos are untouched)")
    c.add_argument("concept")
    for c in csub.choices.values():
        c.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_concept)

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

    from .cli_personalize import register as register_personalize

    register_personalize(sub)

    from .cli_check import register as register_check

    register_check(sub)

    from .cli_backup import register as register_backup

    register_backup(sub)

    from .cli_models import register as register_models

    register_models(sub)

    s = sub.add_parser("settings", help="show or change a library setting")
    s.add_argument("key", nargs="?")
    s.add_argument("value", nargs="?")
    s.set_defaults(func=cmd_settings)

    s = sub.add_parser("doctor", help="versions, device, and which models are present or missing")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_doctor)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.verbose:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logging.getLogger("engine").addHandler(handler)
        logging.getLogger("engine").setLevel(logging.INFO)
    from .api import Library
    from .catalog import DiskFull

    try:
        lib = Library(args.library)
    except Exception as exc:  # noqa: BLE001 - the message is for the user
        if args.command == "doctor":
            return cmd_doctor(args, None)
        print(f"myvlm: cannot open the library: {exc}", file=sys.stderr)
        return 1
    if args.face_backend:
        lib.options["face_backend"] = args.face_backend
    if args.global_vlm:
        lib.options["vlm"] = args.global_vlm
    with lib:
        try:
            return int(args.func(args, lib) or 0)
        except BrokenPipeError:  # `myvlm photos | head` is fine
            sys.stderr.close()
            return 0
        except DiskFull as exc:  # the message says what could not be written and what to do
            print(f"myvlm: {exc}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main())
