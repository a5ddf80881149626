"""Instant names (issue 17 item 4): a named face gives captions and answers with the name before any training, and
the trained concept's caption replaces them.

Real photos, the real dlib faces and clustering, the real pipeline and the tiny random-weight VLMs. Random weights
do not say a name by themselves, so where a test needs the model to write a given sentence, the one seam is
`scripted`: the loaded wrapper's `_generate` (the architecture's decoding step) returns that sentence, after the
prompt, the pixels and everything around them went through the real code. Prompts are read at that same seam.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from engine.domain.captions import render_with
from engine.domain.personalize import instant
from engine.domain.personalize.instant import Scene, Seen, replace_class_word
from engine.domain.personalize.service import shared_wrapper
from engine.library import Library

STAGES = ("thumbnail", "faces", "concepts", "captions")   # CLIP is not needed: no thing is taught here
SAID = "a man standing in front of a flag"


def _render(template: str | None) -> str | None:
    return None if template is None else render_with(template, {2: ("object", "Bella")}, {1: "Alex"})


ALEX = Seen("person", "Alex", "{{person:1}}", None, "on the left")
BELLA = Seen("object", "Bella", "{{concept:2}}", 2, None, None)


@pytest.mark.parametrize("caption, seen, faces, expected", [
    ("a man throwing a ball", [ALEX], 1, "Alex throwing a ball"),
    ("A young man sitting on a bench", [ALEX], 1, "Alex sitting on a bench"),
    ("a man's hat on a table", [ALEX], 1, "Alex's hat on a table"),
    ("the dog lying on a couch", [BELLA], 0, "Bella lying on a couch"),
    ("a man walking a dog in the park", [ALEX, BELLA], 1, "Alex walking Bella in the park"),
    # refused: two people in the photo, two of them in the caption, a plural, no class word, two things named
    ("a man throwing a ball", [ALEX], 2, None),
    ("a man and a woman on a beach", [ALEX], 1, None),
    ("two men playing football", [ALEX], 1, None),
    ("a beach at sunset", [ALEX], 1, None),
    ("two dogs lying on a couch", [BELLA], 0, None),
    ("a dog playing with a ball", [BELLA], 0, None),
])
def test_blip2_replaces_the_class_word_only_where_it_can_be_right(caption, seen, faces, expected):
    assert _render(replace_class_word(caption, Scene(1, seen, faces))) == expected


def scripted(wrapper, text: str, prompts: list[str], named: str | None = None, run_model: bool = False) -> None:
    """The test seam: the wrapper's decoding step records its prompts and returns `text` for every image (`named`
    where the prompt names Alex, as an instruction-following model would). `run_model`: the real tiny model
    decodes the same prompts first (its random words are then replaced)."""
    def generate(pixels, batch_prompts, settings):
        assert pixels.shape[0] == len(batch_prompts)   # the real preprocessing made one view per photo
        prompts.extend(batch_prompts)
        if run_model:
            assert len(type(wrapper)._generate(wrapper, pixels, list(batch_prompts), settings)) == len(batch_prompts)
        return [named if named and "is Alex." in p else text for p in batch_prompts]

    wrapper._generate = generate


def real(wrapper) -> None:
    wrapper.__dict__.pop("_generate", None)


@pytest.fixture(scope="module")
def album(tmp_path_factory, test_data: Path) -> dict:
    """Obama three times and Biden once (face_recognition's test photos), plus Obama on the left and on the right
    of a wide canvas; indexed through faces, concepts and captions with tiny BLIP-2 before anyone is named."""
    root = tmp_path_factory.mktemp("instant")
    folder = root / "album"
    folder.mkdir()
    src = test_data / "face_recognition"
    for name in ("obama.jpg", "obama2.jpg", "biden.jpg"):
        shutil.copy2(src / name, folder / name)
    face = Image.open(src / "obama.jpg").convert("RGB")
    for name, x in (("left.jpg", 0), ("right.jpg", face.width * 2)):
        canvas = Image.new("RGB", (face.width * 3, face.height), (200, 200, 200))
        canvas.paste(face, (x, 0))
        canvas.save(folder / name, quality=92)
    lib = Library(root / "library")
    lib.options["face_backend"] = "dlib"
    lib.catalog.set_setting("vlm", "tiny-blip2")
    lib.add_folder(folder)
    lib.scan()
    wrapper = shared_wrapper("tiny-blip2", lib.paths.models)
    prompts: list[str] = []
    scripted(wrapper, SAID, prompts)
    report = lib.process(stages=STAGES)
    ids = {n: lib.catalog.photo_by_path(folder / n).id for n in ("obama.jpg", "obama2.jpg", "biden.jpg", "left.jpg",
                                                                 "right.jpg")}
    yield {"lib": lib, "ids": ids, "wrapper": wrapper, "first": report, "folder": folder}
    real(wrapper)
    lib.close()


def _person_of(lib: Library, photo_id: int) -> int:
    rows = lib.people().faces_in_photo(photo_id)
    assert len(rows) == 1 and rows[0]["person_id"] is not None, rows
    return rows[0]["person_id"]


def _alex(lib: Library, ids: dict) -> int:
    """Obama's group, named Alex (the first test names it; this lets any test run on its own too)."""
    obama = _person_of(lib, ids["obama.jpg"])
    if lib.people().person(obama)["name"] is None:
        lib.people().name(obama, "Alex")
        lib.process(stages=STAGES)
    return obama


def _row(lib: Library, photo_id: int, kind: str) -> dict | None:
    return next((c for c in lib.captions().captions(photo_id) if c["kind"] == kind), None)


def test_naming_a_face_group_names_its_photos_before_any_training(album):
    lib, ids = album["lib"], album["ids"]
    assert album["first"].stages["captions"].processed == 5
    assert all(_row(lib, i, "personalised") is None for i in ids.values())   # nobody is named yet
    obama = _person_of(lib, ids["obama.jpg"])
    assert {_person_of(lib, ids[n]) for n in ("obama2.jpg", "left.jpg", "right.jpg")} == {obama}
    lib.people().name(obama, "Alex")
    again = lib.process(stages=STAGES)
    assert again.stages["captions"].processed == 4          # just Obama's photos; Biden's caption stays
    for name in ("obama.jpg", "obama2.jpg", "left.jpg", "right.jpg"):
        row = _row(lib, ids[name], "personalised")
        assert row is not None and row["instant"], name
        assert row["text"] == "Alex standing in front of a flag"
        assert lib.captions().caption(ids[name]) == "Alex standing in front of a flag"
        assert _row(lib, ids[name], "original")["text"] == SAID
    assert _row(lib, ids["biden.jpg"], "personalised") is None
    hits = [h.photo_id for h in lib.search("Alex flag").results]
    assert set(hits) >= {ids["left.jpg"], ids["right.jpg"]} and ids["biden.jpg"] not in hits


def test_chat_captioners_are_told_who_is_where(album):
    """The prompt reaching the tiny SmolVLM names Alex with the side of the photo his face box is on."""
    lib, ids = album["lib"], album["ids"]
    _alex(lib, ids)
    pers = lib.personalizer("tiny-smolvlm")
    prompts: list[str] = []
    scripted(pers.wrapper, SAID, prompts, named="Alex is giving a speech", run_model=True)
    try:
        left = pers.caption(ids["left.jpg"])
        right = pers.caption(ids["right.jpg"])
        plain = pers.caption(ids["biden.jpg"])
        answer = pers.ask(ids["right.jpg"], "What is Alex doing?")
    finally:
        real(pers.wrapper)
    assert "The man on the left is Alex." in prompts[1] and "on the right" not in prompts[1]
    assert "The man on the right is Alex." in prompts[3] and "on the left" not in prompts[3]
    assert prompts[1].endswith("Please caption this image.")
    assert left.instant and left.template.startswith("{{person:") and lib.captions().render(left.template) == \
        "Alex is giving a speech"
    assert right.instant and not plain.instant and "Alex" not in prompts[4]
    assert answer.instant and answer.prompt == "The man on the right is Alex. What is Alex doing?"
    lib.captions().put_answer(ids["right.jpg"], "What is Alex doing?", answer.template, model=answer.model,
                              instant=answer.instant)
    assert lib.captions().answers(ids["right.jpg"])[0]["instant"]


def test_a_model_that_ignores_the_names_gives_no_instant_caption(album):
    lib, ids = album["lib"], album["ids"]
    _alex(lib, ids)
    pers = lib.personalizer("tiny-llava")
    prompts: list[str] = []
    scripted(pers.wrapper, SAID, prompts)                   # told who is where, it still writes no name
    try:
        g = pers.caption(ids["left.jpg"])
    finally:
        real(pers.wrapper)
    assert "The man on the left is Alex." in prompts[1]
    assert not g.instant and g.text == SAID and g.template == SAID


def test_rename_rerenders_and_the_users_caption_is_never_overwritten(album):
    lib, ids = album["lib"], album["ids"]
    people, store = lib.people(), lib.captions()
    obama = _alex(lib, ids)
    store.put_user_caption(ids["obama2.jpg"], "Our president at the podium")
    people.rename(obama, "Sam")
    assert lib.process(stages=STAGES).stages["captions"].processed == 0     # a rename needs no model
    assert store.caption(ids["left.jpg"]) == "Sam standing in front of a flag"
    assert store.caption(ids["obama2.jpg"]) == "Our president at the podium"
    assert {ids["left.jpg"], ids["right.jpg"]} <= {h.photo_id for h in lib.search("Sam flag").results}
    people.rename(obama, "Alex")


def test_the_info_pane_marks_a_caption_named_from_recognition(album, qtbot):
    from myvlm_desktop.detail import INSTANT_NOTE, DetailPane

    lib, ids = album["lib"], album["ids"]
    _alex(lib, ids)
    pane = DetailPane(None, lib.paths)
    qtbot.addWidget(pane)
    pane.set_texts(lib.captions().captions(ids["left.jpg"]), [])
    assert pane.caption_note.text() == INSTANT_NOTE and "Teach the Captioner" in pane.caption_note.toolTip()
    assert pane.caption_edit.toPlainText() == "Alex standing in front of a flag"
    pane.set_texts(lib.captions().captions(ids["biden.jpg"]), [])
    assert pane.caption_note.text() == "Written by the model" and not pane.caption_note.toolTip()


def test_the_trained_embedding_replaces_the_instant_caption(album):
    from engine.domain.personalize.training import TrainingConfig

    lib, ids = album["lib"], album["ids"]
    obama = _alex(lib, ids)
    assert _row(lib, ids["left.jpg"], "personalised")["instant"]
    concept = lib.person_concept(obama)
    pers = lib.personalizer()
    pers.train([concept.id], config=TrainingConfig(steps=2, batch_size=1))
    lib.process(stages=STAGES)
    fired = set(lib.concepts().photos_with(concept.id))
    assert {ids["obama.jpg"], ids["left.jpg"], ids["right.jpg"]} <= fired
    for pid in fired:
        row = _row(lib, pid, "personalised")
        assert row is not None and not row["instant"] and concept.id in row["concepts"]   # the token's caption
    assert not any(c["instant"] for pid in ids.values() for c in lib.captions().captions(pid))
    assert lib.captions().caption(ids["obama2.jpg"]) == "Our president at the podium"


def test_the_setting_turns_instant_names_off(album):
    lib, ids = album["lib"], album["ids"]
    _alex(lib, ids)
    pers = lib.personalizer("tiny-smolvlm")     # no embedding on this VLM: Alex would be named from recognition
    prompts: list[str] = []
    scripted(pers.wrapper, SAID, prompts, named="Alex is giving a speech")
    try:
        assert pers.caption(ids["left.jpg"]).instant
        lib.catalog.set_setting("instant_names", False)
        g = pers.caption(ids["left.jpg"])
    finally:
        lib.catalog.set_setting("instant_names", True)
        real(pers.wrapper)
    assert not g.instant and json.loads(json.dumps(g.to_json()))["instant"] is False
    assert not any("is Alex" in p for p in prompts[2:])


def test_settings_dialog_turns_instant_names_off(album, qtbot):
    from myvlm_desktop.settings_dialog import SettingsDialog, save_settings
    from myvlm_desktop.tasks import EngineThread

    lib = album["lib"]
    engine = EngineThread(lib.paths.root)
    try:
        dlg = SettingsDialog(engine, None)
        qtbot.addWidget(dlg)
        qtbot.waitUntil(lambda: dlg.data is not None, timeout=60_000)
        assert dlg.instant_names.isChecked() and dlg.changes() == {}
        dlg.instant_names.setChecked(False)
        assert dlg.changes() == {"instant_names": False}
        save_settings(lib, dlg.changes(), [])
        assert not instant.enabled(lib.catalog)
    finally:
        lib.catalog.set_setting("instant_names", True)
        assert engine.shutdown()


def test_forgetting_a_person_leaves_someone_in_their_instant_texts(album):
    """Last: it forgets Alex. A forgotten person's name must not survive in any caption or answer."""
    from engine.domain.captions import person_placeholder

    lib, ids = album["lib"], album["ids"]
    obama = _alex(lib, ids)
    store = lib.captions()
    store.put_answer(ids["left.jpg"], "Who is this?", f"{person_placeholder(obama)} at a press conference",
                     model="tiny-smolvlm", instant=True)
    assert store.answers(ids["left.jpg"])[-1]["answer"] == "Alex at a press conference"
    lib.people().forget(obama)
    assert store.answers(ids["left.jpg"])[-1]["answer"] == "someone at a press conference"
    assert not lib.catalog.scalar("SELECT count(*) FROM qa WHERE answer LIKE '%{{person:%'")
