#!/usr/bin/env python3
"""Screenshots of the desktop app's main views, rendered offscreen into docs/screenshots/.

    .venv/bin/python scripts/screenshots.py [--out docs/screenshots] [--album PATH] [--size 1920x1080]

The library is built in a temporary folder from the KPhotoAlbum demo album (fetched by
scripts/fetch_test_data.py): thumbnails and faces (dlib) are indexed, the two face groups dlib finds are named as
the album's own index.xml names them (Jesper, Anne Helene), the album's descriptions become the user's captions,
and Spiff (a dog) is taught as a thing from two photos. CLIP runs with random weights (real weights cannot be
downloaded here), so the thing's scores are not meaningful; the captioner is the tiny random-weight test preset,
used only for the training screenshot (its loss curve is real; its text is noise).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from PySide6.QtCore import QSettings, Qt
from PySide6.QtWidgets import QApplication

SIZE = (1280, 800)  # the README's screenshots; --size renders others (e.g. 1920x1080) to check the layout


def window_size(text: str) -> tuple[int, int]:
    """"1920x1080" -> (1920, 1080)."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size like 1280x800: {text}") from None
    return width, height


def build_library(album: Path, lib_dir: Path) -> dict[str, int]:
    from engine.library import Library

    lib = Library(lib_dir)
    lib.catalog.set_setting("face_backend", "dlib")
    lib.catalog.set_setting("clip_weights", "random")
    lib.add_folder(album)
    lib.scan()
    ids = {Path(p.path).relative_to(album).as_posix(): p.id for p in lib.photos()}
    labels = ROOT / "tests" / "data" / "kphotoalbum_faces.json"
    if labels.exists():  # the sideways photos turned upright, as a user would (Rotate; the files stay as they are)
        for name, info in json.loads(labels.read_text())["photos"].items():
            if info.get("angle") and name in ids:
                lib.rotate(ids[name], info["angle"])
    lib.process(stages=("thumbnail", "faces", "clip", "concepts"))
    people = lib.people()
    groups = people.people(named=False)
    # name the groups as the album's index.xml tags their photos
    root = ET.parse(album / "index.xml").getroot()
    tagged = {img.get("file"): {v.get("value") for o in img.iter("option") if o.get("name") == "People"
                                for v in o.iter("value")} for img in root.iter("image")}
    named = {}
    for g in groups:
        votes: dict[str, int] = {}
        for f in people.faces_of(g["id"]):
            name = Path(f["photo_path"]).relative_to(album).as_posix()
            for who in tagged.get(name, ()):
                votes[who] = votes.get(who, 0) + 1
        if votes:
            best = max(votes, key=votes.get)
            if best not in named:
                named[best] = people.name(g["id"], best)
    # a few of Jesper's faces split off: "Is this Jesper?" on the People page
    if "Jesper" in named:
        faces = [f["id"] for f in people.faces_of(named["Jesper"])]
        if len(faces) > 4:
            people.split(named["Jesper"], faces[-2:])
    store = lib.captions()
    for img in root.iter("image"):
        if img.get("description") and img.get("file") in ids:
            store.put_user_caption(ids[img.get("file")], img.get("description"))
    reg = lib.concepts()
    spiff = reg.add_object("Spiff", [ids["spiff.jpg"], ids["spiff_2.jpg"], ids["CategoryImages/People-Spiff.jpg"]])
    lib.train_concept_head(spiff.id)
    for pid in named.values():
        reg.add_person(pid)
        lib.train_concept_head(reg.for_person(pid).id)
    lib.close()
    return ids


def center(window, photo_id: int) -> None:
    from PySide6.QtWidgets import QAbstractItemView

    window.select_photo(photo_id)
    index = window.grid_model.index(window.grid_model.row_of(photo_id))
    window.grid_view.scrollTo(index, QAbstractItemView.ScrollHint.PositionAtCenter)


def settle(app: QApplication, seconds: float = 0.6) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.02)


def wait(app: QApplication, cond, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        app.processEvents()
        if cond():
            return
        time.sleep(0.02)
    raise TimeoutError("the app did not get there in time")


def load_visible(app: QApplication, window) -> None:
    """Ask for every thumbnail on screen and wait for them (what painting does, then some)."""
    model = window.grid_model
    for r in range(min(model.rowCount(), 80)):
        model.data(model.index(r), Qt.ItemDataRole.DecorationRole)
    wait(app, lambda: window.loader.pending_count() == 0, 30)
    settle(app, 0.8)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    p.add_argument("--album", type=Path, default=ROOT / ".cache" / "test-data" / "kphotoalbum")
    p.add_argument("--size", type=window_size, default=SIZE, help="the window's size, e.g. 1920x1080")
    p.add_argument("--library", type=Path, help="build the demo library here and keep it; reuse it if it is there "
                   "(quicker when rendering again)")
    args = p.parse_args()
    if not (args.album / "index.xml").exists():
        print(f"no album at {args.album}: run scripts/fetch_test_data.py first", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="myvlm-shots-"))
    try:
        return shoot(args.album, work, args.out, args.size, args.library)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def demo_photo_ids(album: Path, lib_dir: Path) -> dict[str, int]:
    """The photo ids of a demo library built before, by their path in the album."""
    from engine.library import Library

    with Library(lib_dir) as lib:
        return {Path(p.path).relative_to(album).as_posix(): p.id for p in lib.photos()}


def shoot(album: Path, work: Path, out: Path, size: tuple[int, int] = SIZE, keep: Path | None = None) -> int:
    from myvlm_desktop import app as app_module

    lib_dir = keep or work / "library"
    if keep is not None and (keep / "library.db").exists():
        ids = demo_photo_ids(album, lib_dir)
    else:
        print("building the demo library…", file=sys.stderr)
        ids = build_library(album, lib_dir)
    app_module.set_application_names()
    QSettings.setPath(QSettings.Format.NativeFormat, QSettings.Scope.UserScope, str(work / "config"))
    app = QApplication.instance() or QApplication([])
    app_module.configure_application(app, "light")
    from myvlm_desktop.main_window import MainWindow
    from myvlm_desktop.sidebar import CONCEPT, PEOPLE, PERSON, THINGS

    window = MainWindow(lib_dir, auto_index=False, watch=False, options={"vlm": "tiny-blip2"})
    window.resize(*size)
    window.show()
    window.splitter.setSizes([220, size[0] - 590, 370])
    settle(app)
    shots: list[str] = []

    def save(name: str, widget=None) -> None:
        path = out / f"{name}.png"
        (widget or window).grab().save(str(path))
        shots.append(str(path))
        print(f"wrote {path}", file=sys.stderr)

    # 1. the library: months, faces named in the detail pane, the user's caption
    center(window, ids["qt-logo.jpg"])
    load_visible(app, window)
    wait(app, lambda: window.detail.canvas.has_image(), 20)
    settle(app)
    save("main-window")

    # 2. people: named people, and groups to name with "Is this …?"
    window.navigate(PEOPLE, None)
    wait(app, lambda: window.people_page.data is not None, 30)
    wait(app, lambda: window.face_loader.pending_count() == 0, 20)
    settle(app, 1.0)
    save("people")

    # 3. a person's page
    jesper = window.library.people().find("Jesper")
    if jesper is not None:
        window.navigate(PERSON, jesper["id"])
        load_visible(app, window)
        wait(app, lambda: window.face_loader.pending_count() == 0, 20)
        settle(app)
        save("person")

    # 4. search with names understood
    window.navigate(PEOPLE, None)
    query = "jespr tattoo"  # a typo in a name, and a word of a caption
    window.search_edit.setText(query)
    window.search_flow.on_enter()
    wait(app, lambda: window.search.last is not None and window.search.last.text == query, 30)
    load_visible(app, window)
    if window.grid_model.rowCount():
        window.select_photo(window.grid_model.photo(0).id)
        wait(app, lambda: window.detail.canvas.has_image(), 20)
    settle(app)
    save("search")

    # 5. things, and a thing's page with how well it is recognised
    window.navigate(THINGS, None)
    wait(app, lambda: window.things_page.data is not None, 60)
    settle(app, 1.0)
    load_visible(app, window)
    save("things")
    spiff = window.library.concepts().get("Spiff")
    window.navigate(CONCEPT, spiff.id)
    load_visible(app, window)
    save("thing")

    # 6. naming a thing from the selected photos
    from myvlm_desktop.things_page import NameThingDialog

    name_dlg = NameThingDialog(3, window._names, window)
    name_dlg.show()
    settle(app)
    save("name-thing", name_dlg)
    name_dlg.close()

    # 7. teaching the captioner: targets reviewed, a short real training run, the loss plot
    from myvlm_desktop.training import TeachDialog

    dlg: TeachDialog = window.things.teach(concept_id=spiff.id)
    wait(app, lambda: dlg.page == TeachDialog.REVIEW, 180)
    settle(app)
    save("teach-review", dlg)
    dlg.steps.setValue(60)
    dlg.start_training()
    wait(app, lambda: dlg.outcome is not None, 300)
    settle(app)
    save("teach-training", dlg)
    dlg.close()

    # 8. settings: models present and missing, with what to do
    settings = window.open_settings()
    wait(app, lambda: settings.data is not None, 60)
    settings.tabs.setCurrentIndex(1)
    settings.resize(settings.width(), 600)  # as wide as its models table needs
    settle(app)
    save("settings", settings)
    settings.tabs.setCurrentIndex(2)   # General: every declared setting, the advanced ones typed as `myvlm settings`
    settle(app)
    save("settings-general", settings)
    settings.reject()

    # 9. dark
    window.set_theme("dark")
    window.navigate("library", None)
    center(window, ids["anne_helene.jpg"])
    load_visible(app, window)
    wait(app, lambda: window.detail.canvas.has_image(), 20)
    settle(app)
    save("dark")
    window.set_theme("light")

    # 10. full view
    window.select_photo(ids["bar55_2.jpg"])
    window.full.open()
    wait(app, lambda: window.full_view.canvas.has_image(), 20)
    settle(app)
    save("full-view")
    window.full.close()
    window.close()
    print("\n".join(shots))
    return 0


if __name__ == "__main__":
    sys.exit(main())
