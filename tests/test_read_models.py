"""The GUI pages' read models (engine/read_models.py) and the verbs behind them, on a real catalog with a few rows:
plain data with the numbers the pages show, read without Qt."""

from __future__ import annotations

import pytest

from engine.errors import InvalidInput
from engine.read_models import PeopleData, people_page, settings_view, teaching_targets, things_page
from engine.settings import SETTINGS
from tests.test_people import World


@pytest.fixture
def world(library) -> World:
    return World(library)


def test_people_page_counts_photos_groups_and_hidden(world: World) -> None:
    lib, people = world.lib, world.lib.people()
    # Alex: 3 faces; bo: 1 face; two unnamed groups of 2 and 3 faces; a hidden one
    alex = people.create("Alex", [world.face("alex") for _ in range(3)])
    bo = people.create("bo", [world.face("bo")])
    small = people.create(None, [world.face("x"), world.face("x")])
    big = people.create(None, [world.face("y") for _ in range(3)])
    gone = people.create(None, [world.face("z")])
    people.hide(gone)

    data = people_page(lib, with_suggestions=False)
    assert isinstance(data, PeopleData)
    named = {g.name: g for g in data.named}
    assert set(named) == {"Alex", "bo"} and named["Alex"].id == alex and named["bo"].id == bo
    assert (named["Alex"].faces, named["Alex"].photos, named["bo"].photos) == (3, 3, 1)
    assert [g.id for g in data.groups] == [big, small]   # unnamed, largest first; the hidden one left out
    assert [g.faces for g in data.groups] == [3, 2] and not any(g.suggestions for g in data.groups)
    assert data.groups[0].face_ids == [f["id"] for f in people.faces_of(big)]
    assert data.hidden == 1 and data.names == ["Alex", "bo"]   # any case, sorted as a person reads them
    with_hidden = people_page(lib, include_hidden=True, with_suggestions=False)
    assert gone in [g.id for g in with_hidden.groups] and next(g for g in with_hidden.groups if g.id == gone).hidden


def test_things_page_cards_and_library_photo_lookup(world: World) -> None:
    lib = world.lib
    photos = [world.photo() for _ in range(4)]
    bella = lib.concepts().add_object("Bella", photos[1:3])
    data = things_page(lib, with_suggestions=False)
    assert data.suggestions == [] and data.suggestions_note == ""
    (card,) = data.things
    assert (card.id, card.name, card.kind, card.head_state) == (bella.id, "Bella", "object", "untrained")
    assert (card.photos, card.examples) == (2, 2)
    assert card.cover is not None and card.cover.id == photos[1]   # its first example
    assert lib.photo(photos[0]).path.endswith("1.jpg") and lib.photo(10_000) is None


def test_settings_view_shows_every_declared_setting(world: World) -> None:
    lib = world.lib
    view = settings_view(lib)
    values = view["settings"]
    assert set(values) == set(SETTINGS)
    for key, decl in SETTINGS.items():
        if key != "vlm":
            assert values[key] == decl.default, key
    assert values["vlm"] in {key for key, *_ in view["vlms"]}   # with no setting: the one this computer would use
    assert view["folders"] == [{"id": world.folder, "path": "/album", "status": "online"}]
    assert view["library"] == str(lib.paths.root)
    lib.set_setting("watch_polling", True)
    lib.set_setting("search_clip_floor", {"ViT-B-32": 0.2})
    values = settings_view(lib)["settings"]
    assert values["watch_polling"] is True and values["search_clip_floor"] == {"ViT-B-32": 0.2}


def test_save_settings_checks_everything_before_storing_anything(world: World) -> None:
    from myvlm_desktop.settings_dialog import save_settings

    lib = world.lib
    with pytest.raises(InvalidInput):
        save_settings(lib, {"watch_polling": True, "preview_cache_bytes": "lots"}, [])
    assert lib.settings()["watch_polling"] is False   # the good value was not stored either
    world.photo()
    assert save_settings(lib, {"watch_polling": True}, [world.folder]) == {"removed_photos": 1}
    assert lib.settings()["watch_polling"] is True
    assert lib.folders() == [] and lib.photos() == []


def test_teaching_needs_a_concept_or_a_person(library) -> None:
    with pytest.raises(InvalidInput, match="a concept or a person"):
        teaching_targets(library)


def test_settings_dialog_has_a_field_for_every_declared_setting(world: World, qtbot) -> None:
    """The dialog's fields, defaults and help come from engine.settings: one field per declared setting, its help
    as the tooltip; an Advanced field typed as `myvlm settings` takes it becomes a change of that setting."""
    from myvlm_desktop.settings_dialog import SettingsDialog, save_settings
    from myvlm_desktop.tasks import EngineThread

    lib = world.lib
    lib.set_setting("face_backend", "insightface:antelopev2")   # a pack the combo box does not list
    engine = EngineThread(lib.paths.root)
    try:
        dlg = SettingsDialog(engine, None)
        qtbot.addWidget(dlg)
        qtbot.waitUntil(lambda: dlg.data is not None, timeout=60_000)
        assert set(dlg.fields) == set(SETTINGS)
        assert all(dlg.fields[key].toolTip() == decl.help for key, decl in SETTINGS.items())
        form = dlg.fields["clip_weights"].parentWidget().layout()   # an Advanced field is labelled in words
        assert form.labelForField(dlg.fields["clip_weights"]).text() == SETTINGS["clip_weights"].label != ""
        assert dlg.changes() == {}   # nothing typed: nothing changes (the unlisted face pack is kept, not replaced)
        assert dlg.face_backend.currentData() == "insightface:antelopev2"
        dlg.fields["search_clip_floor"].setText('{"ViT-B-32": 0.25}')
        dlg.fields["clip_weights"].setText("/models/clip.bin")
        assert dlg.changes() == {"search_clip_floor": {"ViT-B-32": 0.25}, "clip_weights": "/models/clip.bin"}
        save_settings(lib, dlg.changes(), [])
        assert lib.settings()["search_clip_floor"] == {"ViT-B-32": 0.25}
        dlg.fields["search_clip_floor"].setText("lots")
        with pytest.raises(InvalidInput):
            save_settings(lib, dlg.changes(), [])
    finally:
        assert engine.shutdown()
