"""Read models: what a view shows, read in one call and returned as plain data.

The front doors (the GUI, the CLI) never read the catalog themselves; they call these Qt-free functions with a
`Library` and show the answer. Each function is the one place its query lives, so a view's numbers and the CLI's
agree.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .catalog import Photo

if TYPE_CHECKING:
    from .api import Library


# -- main window (read models) -------------------------------------------------------------------------------------


@dataclass
class CatalogView:
    """What the main window shows, read in one go (on its reader thread)."""

    status: dict[str, Any]
    photos: list[Photo]
    named: list[dict[str, Any]]       # {"id", "name", "photos", "face"} of each named, shown person
    unnamed_groups: int
    things: list[dict[str, Any]]      # {"id", "name", "photos"} of each thing


def sidebar_people(lib: Library) -> tuple[list[dict[str, Any]], int]:
    """The named people with their photo counts and the face to show for each, and how many unnamed groups."""
    cat = lib.catalog
    named = [dict(r) for r in cat.query(
        "SELECT pe.id, pe.name, COUNT(DISTINCT f.photo_id) AS photos FROM people pe "
        "LEFT JOIN faces f ON f.person_id = pe.id WHERE pe.name IS NOT NULL AND pe.hidden = 0 "
        "GROUP BY pe.id ORDER BY pe.name COLLATE NOCASE")]
    faces = {r["person_id"]: r["id"] for r in cat.query(
        "SELECT person_id, id FROM (SELECT f.person_id, f.id, ROW_NUMBER() OVER (PARTITION BY f.person_id "
        "ORDER BY f.state = 'confirmed' DESC, f.score * f.w DESC, f.id) AS n FROM faces f JOIN people pe "
        "ON pe.id = f.person_id WHERE pe.name IS NOT NULL) WHERE n = 1")}
    for p in named:
        p["face"] = faces.get(p["id"])
    unnamed = int(cat.scalar("SELECT COUNT(*) FROM people WHERE name IS NULL AND hidden = 0") or 0)
    return named, unnamed


def sidebar_things(lib: Library) -> list[dict[str, Any]]:
    """Every thing with the number of photos it was recognised in or taught from."""
    return [dict(r) for r in lib.catalog.query(
        "SELECT c.id, c.name, (SELECT COUNT(*) FROM (SELECT s.photo_id FROM concept_signals s WHERE s.concept_id = "
        "c.id AND s.fired = 1 UNION SELECT e.photo_id FROM concept_examples e WHERE e.concept_id = c.id AND "
        "e.photo_id IS NOT NULL)) AS photos FROM concepts c WHERE c.kind = 'object' ORDER BY c.name COLLATE NOCASE")]


def catalog_view(lib: Library, *, photos: bool = True) -> CatalogView:
    """Status, sidebar rows and (unless `photos` is False: the caller patches the rows that changed) every photo
    in date order."""
    named, unnamed = sidebar_people(lib)
    return CatalogView(lib.status(), lib.photos(order="date") if photos else [], named, unnamed, sidebar_things(lib))


def photos_by_id(lib: Library, ids: Iterable[int]) -> dict[int, Photo | None]:
    """These photos' rows as they are now (None: the photo is no longer in the catalog)."""
    return {i: lib.catalog.photo(i) for i in dict.fromkeys(ids)}


def date_order_key(photo: Photo) -> tuple[str, bytes]:
    """Where a photo sorts in `lib.photos(order="date")` (undated first, then by path)."""
    return (photo.date_taken or "", photo.path_bytes)


def person_photo_ids(lib: Library, person_id: int) -> set[int]:
    """The photos a person's (or an unnamed group's) faces are in."""
    return {r["photo_id"] for r in lib.catalog.query(
        "SELECT DISTINCT photo_id FROM faces WHERE person_id = ?", [person_id])}


def concept_photo_ids(lib: Library, concept_id: int) -> set[int]:
    """The photos a thing was recognised in, and those it was taught from."""
    reg = lib.concepts()
    return set(reg.photos_with(concept_id)) | {e["photo_id"] for e in reg.examples(concept_id) if e.get("photo_id")}


def person_names(lib: Library) -> list[str]:
    """Every name used for a person (hidden ones too: naming someone with it merges), for completion."""
    return [r["name"] for r in lib.catalog.query(
        "SELECT name FROM people WHERE name IS NOT NULL ORDER BY name COLLATE NOCASE")]


def thing_names(lib: Library) -> list[str]:
    return [r["name"] for r in lib.catalog.query(
        "SELECT name FROM concepts WHERE kind = 'object' ORDER BY name COLLATE NOCASE")]


def person_id_named(lib: Library, name: str) -> int | None:
    """The person with this name (any case), or None."""
    pid = lib.catalog.scalar("SELECT id FROM people WHERE name = ? COLLATE NOCASE", [name])
    return None if pid is None else int(pid)


def concept_id_named(lib: Library, name: str) -> int | None:
    """The concept (a thing, or a person's captioner concept) with this name (any case), or None."""
    cid = lib.catalog.scalar("SELECT id FROM concepts WHERE name = ? COLLATE NOCASE", [name])
    return None if cid is None else int(cid)


@dataclass
class PhotoInfo:
    """The info pane's data for one photo."""

    faces: list[dict[str, Any]]
    captions: list[dict[str, Any]]
    answers: list[dict[str, Any]]
    concepts: list[dict[str, Any]]
    caption: str
    can_locate: bool


def photo_info(lib: Library, photo_id: int) -> PhotoInfo:
    store = lib.captions()
    return PhotoInfo(lib.people().faces_in_photo(photo_id), store.captions(photo_id), store.answers(photo_id),
                     lib.concepts().signals(photo_id), store.caption(photo_id) or "", lib.can_locate())


@dataclass
class PersonPage:
    """The person header's data: the person, their faces (ignored ones left out), on how many photos, and the
    named people their faces could be moved to."""

    person: dict[str, Any]
    faces: list[dict[str, Any]]
    photos: int
    targets: list[tuple[int, str]]


def person_page(lib: Library, person_id: int) -> PersonPage | None:
    """None: no such person (forgotten, or merged into another)."""
    people = lib.people()
    try:
        person = people.person(person_id)
    except (LookupError, ValueError):  # not found (PeopleError, or engine.errors.NotFound)
        return None
    faces = [f for f in people.faces_of(person_id) if f["state"] != "ignored"]
    return PersonPage(person, faces, len({f["photo_id"] for f in faces}),
                      [(p["id"], p["name"]) for p in people.people(named=True)])


def about_models() -> tuple[int, list[tuple[str, str, str]]]:
    """For the About box: how many dlib face model files, and (repo, purpose, licence) of each hub model."""
    from .doctor import DLIB_FILES, HUB_MODELS

    return len(DLIB_FILES), [tuple(m) for m in HUB_MODELS]


# -- command line (read models) -------------------------------------------------------------------------------------

def people_list(lib: Library, *, include_hidden: bool = False, named: bool | None = None) -> list[dict[str, Any]]:
    """`myvlm people`: each person or group with all its faces (each with its photo's path) and the "Is this …?"
    offer for an unnamed group: {"id", "name", "hidden", "faces", "suggestions": [Suggestion]}."""
    people = lib.people()
    offers = people.suggestions_by_group(lib.face_backend().thresholds.suggest_distance)
    return [{"id": p["id"], "name": p["name"], "hidden": bool(p["hidden"]), "faces": people.faces_of(p["id"]),
             "suggestions": [offers[p["id"]]] if p["id"] in offers else []}
            for p in people.people(include_hidden=include_hidden, named=named)]


def faces_in_photo(lib: Library, photo_id: int) -> list[dict[str, Any]]:
    """The faces found in one photo, each with its person's id and name (None: nobody yet)."""
    return lib.people().faces_in_photo(photo_id)


def concept_list(lib: Library) -> list[dict[str, Any]]:
    """`myvlm concept list`: every concept with the number of photos it was recognised in and of its training
    photos: {"concept": Concept, "photos", "examples"}."""
    reg = lib.concepts()
    return [{"concept": c, "photos": len(reg.photos_with(c.id)), "examples": len(reg.examples(c.id))}
            for c in reg.list()]


def concept_photo_count(lib: Library, concept_id: int) -> int:
    """How many photos a concept was recognised in."""
    return len(lib.concepts().photos_with(concept_id))


def photo_caption(lib: Library, photo_id: int) -> str | None:
    """The caption a photo shows now (the user's own wins over the model's), names filled in; None: none yet."""
    return lib.captions().caption(photo_id)
