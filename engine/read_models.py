"""Read models: what a view shows, read in one call and returned as plain data.

The front doors (the GUI, the CLI) never read the catalog themselves; they call these Qt-free functions with a
`Library` and show the answer. Each function is the one place its query lives, so a view's numbers and the CLI's
agree.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.storage.catalog import Photo

if TYPE_CHECKING:
    from engine.library import Library


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


def person_name(lib: Library, person_id: int) -> str | None:
    """A person's name (None: an unnamed group). Raises the engine's not-found error for no such person."""
    return lib.people().person(person_id).get("name")


def person_concept_id(lib: Library, person_id: int) -> int | None:
    """The concept that teaches the captioner a person, if they have one yet."""
    c = lib.concepts().for_person(person_id)
    return None if c is None else c.id


def about_models() -> tuple[int, list[tuple[str, str, str]]]:
    """For the About box: how many dlib face model files, and (repo, purpose, licence) of each hub model."""
    from engine.admin.doctor import DLIB_FILES, HUB_MODELS

    return len(DLIB_FILES), [tuple(m) for m in HUB_MODELS]


# -- GUI pages (B1) -------------------------------------------------------------------------------------------------

# The People page: named people, the unnamed face groups to name (largest first), and who each group may be.

CARD_FACES = 6          # face crops shown on a group's card
MAX_GROUPS_SHOWN = 60   # groups the page shows (and offers a name for)


@dataclass
class GroupInfo:
    id: int
    name: str | None
    faces: int
    photos: int
    hidden: bool
    sample_faces: list[int]
    suggestions: list[tuple[int, str, float]] = field(default_factory=list)  # (person id, name, similarity)
    face_ids: list[int] = field(default_factory=list)  # the group as shown: naming it confirms these, no others


@dataclass
class PeopleData:
    named: list[GroupInfo]
    groups: list[GroupInfo]   # unnamed, largest first
    hidden: int
    names: list[str]


def people_page(lib: Library, include_hidden: bool = False, with_suggestions: bool = True) -> PeopleData:
    """Everything the People page shows (suggestions compare face embeddings: an engine thread's work)."""
    people = lib.people()
    rows = people.people(include_hidden=include_hidden)
    photo_counts = {r["person_id"]: r["n"] for r in lib.catalog.query(
        "SELECT person_id, COUNT(DISTINCT photo_id) AS n FROM faces WHERE person_id IS NOT NULL GROUP BY person_id")}
    try:
        max_distance = lib.face_backend().thresholds.suggest_distance if with_suggestions else None
    except Exception:  # noqa: BLE001 - no backend: no suggestions, the rest works
        max_distance = None
    named, groups = [], []
    for r in rows:
        face_ids = [f["id"] for f in people.faces_of(r["id"])]
        info = GroupInfo(r["id"], r["name"], int(r["face_count"] or 0), int(photo_counts.get(r["id"], 0)),
                         bool(r["hidden"]), face_ids[:CARD_FACES], face_ids=face_ids)
        if r["name"]:
            named.append(info)
        else:
            groups.append(info)
    groups.sort(key=lambda g: (-g.faces, g.id))
    if max_distance is not None and named:
        offers = people.suggestions_by_group(max_distance)
        for g in groups[:MAX_GROUPS_SHOWN]:
            offer = offers.get(g.id)  # a group with no close named person is offered no one
            g.suggestions = [(offer.person_id, offer.name, offer.similarity)] if offer else []
    hidden = int(lib.catalog.scalar("SELECT COUNT(*) FROM people WHERE hidden = 1") or 0)
    return PeopleData(named, groups, hidden, sorted((g.name for g in named if g.name), key=str.casefold))


# The Things page: pets and objects (object concepts) and recurring things worth naming.

@dataclass
class ThingInfo:
    id: int
    name: str
    kind: str
    identifier: str
    head_state: str
    embedding_state: str
    metrics: dict[str, Any] | None
    photos: int
    examples: int
    cover: Photo | None
    error: str | None = None


@dataclass
class SuggestionInfo:
    photo_ids: list[int]
    days: int
    samples: list[Photo] = field(default_factory=list)


@dataclass
class ThingsData:
    things: list[ThingInfo]
    suggestions: list[SuggestionInfo]
    suggestions_note: str = ""   # why there are none (no CLIP weights, nothing recurring yet)


def thing_info(lib: Library, concept: Any) -> ThingInfo:
    """One concept's card: its states, how many photos it is in, and a cover (its first example, else a photo)."""
    reg = lib.concepts()
    photos = reg.photos_with(concept.id)
    examples = [e["photo_id"] for e in reg.examples(concept.id) if e.get("photo_id")]
    cover_id = examples[0] if examples else (photos[0] if photos else None)
    cover = lib.catalog.photo(cover_id) if cover_id else None
    return ThingInfo(concept.id, concept.name, concept.kind, concept.identifier, concept.head_state,
                     concept.embedding_state, concept.metrics, len(set(photos) | set(examples)), len(examples),
                     cover, concept.last_error)


def things_page(lib: Library, with_suggestions: bool = True, limit: int = 8) -> ThingsData:
    """Everything the Things page shows (suggestions compare CLIP embeddings: an engine thread's work)."""
    things = [thing_info(lib, c) for c in lib.concepts().list("object")]
    suggestions: list[SuggestionInfo] = []
    note = ""
    if with_suggestions:
        try:
            missing = lib.clip_encoder().missing_reason()
        except Exception as exc:  # noqa: BLE001 - no CLIP: no suggestions, the rest works
            missing = str(exc)
        if missing:
            note = f"Suggestions need the CLIP model: {missing}"
        else:
            for s in lib.thing_suggestions(limit=limit):
                ids = [s.representative] + [p for p in s.photo_ids if p != s.representative]
                samples = [p for p in (lib.catalog.photo(i) for i in ids[:4]) if p is not None]
                suggestions.append(SuggestionInfo(s.photo_ids, s.days, samples))
            if not suggestions:
                note = "Nothing recurring to suggest yet: suggestions come from photos that look alike, taken on " \
                       "several days."
    return ThingsData(things, suggestions, note)


# The Settings dialog: every declared library setting (engine.settings) with its value, plus what the choices need.

def settings_view(lib: Library) -> dict[str, Any]:
    """What the Settings dialog shows: the watched folders, every declared setting's value (`settings`: key ->
    the stored value, else its default; the `vlm` the one this computer would use), the captioners to choose from
    and the doctor's report (it looks at the model caches and the GPU: an engine thread's work)."""
    from engine.admin.doctor import report
    from engine.models.hardware import resolve_vlm_name
    from engine.models.vlm.specs import VLM_SPECS

    values = lib.settings()
    values["vlm"] = resolve_vlm_name(lib.catalog)   # with no setting: the captioner that fits this computer
    return {
        "folders": [{"id": f.id, "path": f.path, "status": f.status} for f in lib.folders()],
        "settings": values,
        "vlms": [(s.key, s.title, s.license, s.tiny) for s in VLM_SPECS.values()],
        "doctor": report(lib.paths),
        "library": str(lib.paths.root),
    }


# Teaching the captioner: the training targets to review, and the device it trains on.

@dataclass
class TargetRow:
    example_id: int
    label: str
    captions: list[str]
    needs_review: bool
    photo: Photo | None = None  # when the example is an album photo


@dataclass
class Prepared:
    concept_id: int
    name: str
    identifier: str
    rows: list[TargetRow]
    vlm: str
    device: str
    embedding_state: str


def device_text(device: Any, vlm: str | None = None) -> str:
    """"CPU (about 2 min a concept, measured here)": the device, and how long teaching takes on it (the same
    estimate as Settings ▸ Models)."""
    kind = getattr(device, "type", str(device))
    if kind == "cuda":
        try:
            import torch

            text = f"GPU ({torch.cuda.get_device_name(device)})"
        except Exception:  # noqa: BLE001
            text = "GPU"
    else:
        text = "Apple GPU" if kind == "mps" else "CPU"
    if vlm:
        from engine.models.vlm.estimates import HERE_LABEL, device_key, estimate, minutes_text

        e = estimate(vlm, kind, device_key(device))
        if e.concept_s is not None:
            where = "on this computer" if e.concept_source == HERE_LABEL else "on the benchmark's 2-core CPU"
            text += f" (about {minutes_text(e.concept_s)} a concept {where})"
    return text


def teaching_targets(lib: Library, concept_id: int | None = None, person_id: int | None = None,
                     regenerate: bool = False) -> Prepared:
    """Make the concept (for a person), then generate the training targets (the original VLM's captions with the
    subject's words replaced by the concept's identifier) for the user to review."""
    from engine.errors import InvalidInput

    if concept_id is None:
        if person_id is None:
            raise InvalidInput("a concept or a person is needed")
        concept_id = lib.person_concept(person_id).id
    pers = lib.personalizer()
    items = pers.prepare_targets(concept_id, regenerate=regenerate)
    reg = lib.concepts()
    concept = reg.get(concept_id)
    examples = {e["id"]: e for e in reg.examples(concept_id)}
    rows = []
    for t in items:
        ex = examples.get(t.example_id) or {}
        photo = lib.catalog.photo(ex["photo_id"]) if ex.get("photo_id") else None
        rows.append(TargetRow(t.example_id, Path(t.label).name or t.label, list(t.captions), t.needs_review, photo))
    return Prepared(concept_id, concept.name, concept.identifier, rows, pers.vlm_name,
                    device_text(pers.wrapper.device, pers.vlm_name), pers.embedding_state(concept))


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
