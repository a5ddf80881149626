"""Clustering and the naming workflow on synthetic identity embeddings (fast, exact ground truth).

Real faces through the real dlib models are tested in test_faces_real.py; here the embeddings are drawn around one
random centre per identity, so every rule (found, join, defer, one face per person per photo, the user's word is
law) can be checked exactly.
"""

from __future__ import annotations

import numpy as np
import pytest

from engine.domain.face_clustering import FaceClusterer
from engine.domain.people import People, PeopleError
from engine.models.faces.backends import FaceThresholds
from engine.storage.catalog import now
from engine.storage.vectors import to_blob

DIM = 64
BACKEND = "test-space"
TH = FaceThresholds(cluster_distance=0.35, suggest_distance=0.5, concept_distance=0.45, min_face_px=20,
                    found_min_px=40, min_score=0.0, found_min_score=0.0)


class World:
    """Photos and faces written straight into a real catalog."""

    def __init__(self, library, seed: int = 0):
        self.lib = library
        self.cat = library.catalog
        self.rng = np.random.default_rng(seed)
        self.centres: dict[str, np.ndarray] = {}
        self.truth: dict[int, str] = {}
        ts = now()
        with self.cat.write():
            self.folder = self.cat.conn.execute(
                "INSERT INTO folders(path, path_bytes, status, added_at) VALUES ('/album', ?, 'online', ?)",
                [b"/album", ts]).lastrowid
        self.n_photos = 0

    def photo(self) -> int:
        self.n_photos += 1
        ts = now()
        with self.cat.write():
            return int(self.cat.conn.execute(
                "INSERT INTO photos(folder_id, path, path_bytes, name, content_hash, status, added_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, 'ok', ?, ?)",
                [self.folder, f"/album/{self.n_photos}.jpg", f"/album/{self.n_photos}.jpg".encode(),
                 f"{self.n_photos}.jpg", f"h{self.n_photos}", ts, ts]).lastrowid)

    def face(self, who: str, photo: int | None = None, size: float = 80, noise: float = 0.05) -> int:
        if who not in self.centres:
            c = self.rng.normal(size=DIM)
            self.centres[who] = c / np.linalg.norm(c)
        v = self.centres[who] + self.rng.normal(scale=noise, size=DIM)
        v /= np.linalg.norm(v)
        photo = photo or self.photo()
        ts = now()
        with self.cat.write():
            fid = int(self.cat.conn.execute(
                "INSERT INTO faces(photo_id, backend, x, y, w, h, score, quality, embedding, state, created_at, "
                "updated_at) VALUES (?, ?, 10, 10, ?, ?, 0.9, ?, ?, 'unknown', ?, ?)",
                [photo, BACKEND, size, size, int(size >= TH.found_min_px), to_blob(v.astype(np.float32)), ts,
                 ts]).lastrowid)
        self.truth[fid] = who
        return fid

    def face_at(self, vec: np.ndarray, who: str, size: float = 80, photo: int | None = None) -> int:
        """A face with exactly this embedding (normalised)."""
        v = (vec / np.linalg.norm(vec)).astype(np.float32)
        ts = now()
        with self.cat.write():
            fid = int(self.cat.conn.execute(
                "INSERT INTO faces(photo_id, backend, x, y, w, h, score, quality, embedding, state, created_at, "
                "updated_at) VALUES (?, ?, 10, 10, ?, ?, 0.9, ?, ?, 'unknown', ?, ?)",
                [photo or self.photo(), BACKEND, size, size, int(size >= TH.found_min_px), to_blob(v), ts,
                 ts]).lastrowid)
        self.truth[fid] = who
        return fid

    def cluster(self):
        return FaceClusterer(self.cat, BACKEND, DIM, TH).run()

    def recluster(self):
        return FaceClusterer(self.cat, BACKEND, DIM, TH).recluster()

    def person_of(self, fid: int) -> int | None:
        return self.cat.scalar("SELECT person_id FROM faces WHERE id = ?", [fid])

    def state_of(self, fid: int) -> str:
        return self.cat.scalar("SELECT state FROM faces WHERE id = ?", [fid])

    def groups(self) -> dict[int, set[str]]:
        out: dict[int, set[str]] = {}
        for r in self.cat.query("SELECT id, person_id FROM faces WHERE person_id IS NOT NULL"):
            out.setdefault(r["person_id"], set()).add(self.truth[r["id"]])
        return out


@pytest.fixture
def world(library):
    return World(library)


def test_three_photos_make_a_person_and_singletons_wait(world: World):
    for who in ("alex", "bella", "sam"):
        for _ in range(5):
            world.face(who)
    lone = world.face("stranger")
    report = world.cluster()
    groups = world.groups()
    assert sorted(map(sorted, groups.values())) == [["alex"], ["bella"], ["sam"]]  # pure, one group each
    assert report.founded_people == 3 and report.deferred == 1
    assert world.person_of(lone) is None
    # two more photos of the stranger: now three, so a person is founded
    world.face("stranger")
    world.face("stranger")
    world.cluster()
    assert world.person_of(lone) is not None and len(world.groups()) == 4


def test_small_faces_join_but_never_found(world: World):
    small = [world.face("kid", size=25) for _ in range(4)]
    world.cluster()
    assert all(world.person_of(f) is None for f in small)  # too small to found a person
    big = world.face("kid", size=90)
    world.face("kid", size=90)
    world.face("kid", size=90)
    world.cluster()
    pid = world.person_of(big)
    assert pid is not None and all(world.person_of(f) == pid for f in small)


def test_at_most_one_face_per_person_per_photo(world: World):
    for _ in range(4):
        world.face("twin")
    shared = world.photo()
    a = world.face("twin", photo=shared)
    b = world.face("twin", photo=shared, noise=0.03)
    world.cluster()
    assert world.person_of(a) is None or world.person_of(b) is None or world.person_of(a) != world.person_of(b)


def test_naming_confirms_and_new_faces_are_suggested(world: World):
    faces = [world.face("alex") for _ in range(4)]
    world.cluster()
    people = People(world.cat)
    pid = world.person_of(faces[0])
    assert people.name(pid, "  Alex  ") == pid
    assert {world.state_of(f) for f in faces} == {"confirmed"}
    assert people.person(pid)["name"] == "Alex"
    newcomer = world.face("alex")
    world.cluster()
    assert world.person_of(newcomer) == pid and world.state_of(newcomer) == "suggested"
    people.confirm(newcomer)
    assert world.state_of(newcomer) == "confirmed"
    # automatic runs never change confirmed faces, even a full re-cluster
    world.recluster()
    assert all(world.person_of(f) == pid for f in faces + [newcomer])


def test_typing_an_existing_name_merges(world: World):
    a = [world.face("alex") for _ in range(3)]
    b = [world.face("alex") for _ in range(3)]
    people = People(world.cat)
    world.cluster()
    first = world.person_of(a[0])
    people.name(first, "Alex")
    # the user splits some faces off, then names the new group "alex": it merges back
    new = people.split(first, b[:2])
    assert people.name(new, "alex") == first
    assert {world.person_of(f) for f in a + b[:2]} == {first}
    with pytest.raises(PeopleError):
        people.person(new)


def test_reject_is_remembered_through_recluster(world: World):
    faces = [world.face("alex") for _ in range(5)]
    world.cluster()
    people = People(world.cat)
    pid = world.person_of(faces[0])
    people.name(pid, "Alex")
    people.reject(faces[4], pid)
    assert world.person_of(faces[4]) is None and world.state_of(faces[4]) == "rejected"
    world.cluster()
    assert world.person_of(faces[4]) != pid
    world.recluster()
    assert world.person_of(faces[4]) != pid
    assert all(world.person_of(f) == pid for f in faces[:4])


def test_merge_move_hide_forget(world: World):
    a = [world.face("alex") for _ in range(3)]
    b = [world.face("bella") for _ in range(3)]
    strangers = [world.face(f"s{i}") for i in range(2) for _ in range(3)]
    world.cluster()
    people = People(world.cat)
    pa, pb = world.person_of(a[0]), world.person_of(b[0])
    people.name(pa, "Alex")
    people.name(pb, "Bella")
    # move one of Bella's faces to Alex (the user knows better): confirmed there
    people.move_faces([b[2]], pa)
    assert world.person_of(b[2]) == pa and world.state_of(b[2]) == "confirmed"
    # merge: Bella into Alex
    people.merge(pa, [pb])
    assert {world.person_of(f) for f in a + b} == {pa}
    # hide all small unnamed groups at once (the strangers): they are hidden, not deleted
    hidden = people.hide_small(3)
    assert len(hidden) == 2 and all(people.person(h)["hidden"] for h in hidden)
    assert [p["name"] for p in people.people()] == ["Alex"]
    assert len(people.people(include_hidden=True)) == 3
    # a new face of a hidden stranger joins the hidden group (stays out of sight)
    world.face("s0")
    world.cluster()
    assert sum(p["face_count"] for p in people.people(include_hidden=True) if p["hidden"]) == 7
    # forget: name and face data gone
    n = people.forget(pa)
    assert n == 6
    assert world.cat.scalar("SELECT COUNT(*) FROM faces WHERE embedding IS NULL AND state = 'ignored'") == 6
    assert people.find("Alex") is None
    world.recluster()
    assert all(world.person_of(f) is None for f in a + b)
    assert strangers


def test_suggestions_for_unnamed_group(world: World):
    faces = [world.face("alex") for _ in range(6)]
    other = [world.face("bella") for _ in range(3)]
    world.cluster()
    people = People(world.cat)
    alex = world.person_of(faces[0])
    people.name(alex, "Alex")
    group = people.split(alex, faces[3:])  # an unnamed group that is really Alex
    bella = world.person_of(other[0])
    sugg = people.suggestions(group, TH.suggest_distance)
    assert [s.name for s in sugg] == ["Alex"] and sugg[0].person_id == alex and sugg[0].similarity > 0.8
    assert people.suggestions(bella, TH.suggest_distance) == []  # nobody like Bella is named
    people.reject(faces[3], alex)  # "not Alex" for one of the group's faces: not suggested again
    assert people.suggestions(group, TH.suggest_distance) == []


def test_clear_errors(world: World):
    people = People(world.cat)
    with pytest.raises(PeopleError, match="no person with id 99"):
        people.name(99, "Alex")
    f = world.face("x")
    with pytest.raises(PeopleError, match="belongs to nobody"):
        people.confirm(f)
    world.face("x")
    world.face("x")
    world.cluster()
    with pytest.raises(PeopleError, match="cannot be empty"):
        people.name(world.person_of(f), "   ")


def test_create_person_from_faces(world: World):
    faces = [world.face("alex") for _ in range(2)]
    people = People(world.cat)
    pid = people.create("Alex", faces)
    assert {world.person_of(f) for f in faces} == {pid} and {world.state_of(f) for f in faces} == {"confirmed"}
    again = people.create("alex", [world.face("alex")])  # an existing name merges
    assert again == pid
    with pytest.raises(PeopleError, match="at least one face"):
        people.create("Nobody", [])


def test_person_concept_signals_follow_the_users_word(world: World):
    """The head is the paper's (nearest reference within the distance), but the user's word wins."""
    from engine.domain.concepts.detect import ConceptDetector
    from engine.domain.concepts.registry import ConceptRegistry, Head

    alex_faces = [world.face("alex") for _ in range(3)]
    people = People(world.cat)
    alex = people.create("Alex", alex_faces)
    lookalike = world.face("alex")  # looks like Alex...
    other = people.create("Sam", [lookalike])  # ...but the user says it is Sam
    rejected = world.face("alex")
    people.reject(rejected, alex)
    far = world.face("stranger")
    confirmed_far = world.face("stranger")
    people.move_faces([confirmed_far], alex)  # the user says this odd-looking face is Alex
    reg = ConceptRegistry(world.cat)
    concept = reg.add_person(alex)
    refs = np.stack([world.centres["alex"]]).astype(np.float32)
    reg.save_head(concept.id, Head("person", BACKEND, TH.concept_distance, {"references": refs}))
    ConceptDetector(world.cat).run([concept.id])
    fired = {r["face_id"] for r in world.cat.query(
        "SELECT face_id FROM concept_signals WHERE concept_id = ? AND fired = 1", [concept.id])}
    assert set(alex_faces) <= fired and confirmed_far in fired
    assert lookalike not in fired and rejected not in fired and far not in fired
    assert other != alex


def test_a_face_between_two_automatic_groups_links_them(world: World):
    """Density-based: two groups of one person seen from two sides merge when a face links them (never named ones)."""
    rng = np.random.default_rng(5)
    base = rng.normal(size=DIM)
    base /= np.linalg.norm(base)
    side = rng.normal(size=DIM)
    side -= (side @ base) * base
    side /= np.linalg.norm(side)
    angle = np.arccos(1 - 0.5)  # the two sides are 0.5 apart in cosine distance: far beyond the threshold (0.35)

    def at(t: float, jitter: float = 0.0) -> np.ndarray:
        v = np.cos(angle * t) * base + np.sin(angle * t) * side
        return v + rng.normal(scale=jitter, size=DIM)

    left = [world.face_at(at(0.0, 0.01), "alex") for _ in range(3)]
    right = [world.face_at(at(1.0, 0.01), "alex") for _ in range(3)]
    world.cluster()
    a, b = world.person_of(left[0]), world.person_of(right[0])
    assert a is not None and b is not None and a != b  # two groups so far
    bridge = [world.face_at(at(0.5, 0.005), "alex") for _ in range(2)]  # within the threshold of both sides
    world.cluster()
    assert len({world.person_of(f) for f in left + right + bridge}) == 1


def test_named_groups_are_never_merged_automatically(world: World):
    rng = np.random.default_rng(6)
    base = rng.normal(size=DIM)
    base /= np.linalg.norm(base)
    side = rng.normal(size=DIM)
    side -= (side @ base) * base
    side /= np.linalg.norm(side)  # base and base + 1.5 side are 0.45 apart; base + 0.75 side within 0.2 of both
    left = [world.face_at(base + 0.01 * rng.normal(size=DIM), "x") for _ in range(3)]
    right = [world.face_at(base + 1.5 * side + 0.01 * rng.normal(size=DIM), "y") for _ in range(3)]
    world.cluster()
    people = People(world.cat)
    a, b = world.person_of(left[0]), world.person_of(right[0])
    assert a != b
    people.name(a, "Ann")
    people.name(b, "Bea")
    world.face_at(base + 0.75 * side, "between")
    world.face_at(base + 0.75 * side, "between")
    world.cluster()
    assert people.person(a)["name"] == "Ann" and people.person(b)["name"] == "Bea"
    assert {world.person_of(f) for f in left} == {a} and {world.person_of(f) for f in right} == {b}


def test_incremental_runs_only_look_at_what_changed(world: World):
    for who in ("alex", "bella"):
        for _ in range(4):
            world.face(who)
    lone = world.face("stranger")
    first = world.cluster()
    assert first.founded_people == 2 and first.deferred == 1
    again = world.cluster()
    assert (again.joined, again.founded_people, again.deferred) == (0, 0, 0)  # nothing new: nothing retried
    world.face("stranger")
    world.face("stranger")
    third = world.cluster()  # the newcomers unlock the waiting face: a third person
    assert third.founded_people == 1 and world.person_of(lone) is not None


def _at_distance(centre: np.ndarray, distance: float, rng: np.random.Generator) -> np.ndarray:
    """A unit vector exactly `distance` (cosine) from the unit vector `centre`."""
    u = rng.normal(size=centre.shape)
    u -= (u @ centre) * centre
    u /= np.linalg.norm(u)
    cos = 1.0 - distance
    return cos * centre + np.sqrt(1.0 - cos**2) * u


def test_naming_confirms_the_group_as_shown_not_faces_placed_since(world: World):
    faces = [world.face("alex") for _ in range(4)]
    world.cluster()
    people = People(world.cat)
    pid = world.person_of(faces[0])
    shown = [f["id"] for f in people.faces_of(pid)]  # what the People page showed
    late = world.face("alex")  # an index run places another face in the group while the user types the name
    world.cluster()
    assert world.person_of(late) == pid
    people.name(pid, "Alex", face_ids=shown)
    assert {world.state_of(f) for f in faces} == {"confirmed"}
    assert world.state_of(late) == "suggested"  # never looked at: waits for the user


def test_renaming_confirms_nothing(world: World):
    faces = [world.face("alex") for _ in range(4)]
    world.cluster()
    people = People(world.cat)
    pid = world.person_of(faces[0])
    people.name(pid, "Alex")  # the command line: the group as it stands (as `myvlm people` printed it)
    assert {world.state_of(f) for f in faces} == {"confirmed"}
    stranger = world.face_at(world.centres["alex"] + world.rng.normal(scale=0.06, size=DIM), "stranger")
    world.cluster()
    assert world.person_of(stranger) == pid and world.state_of(stranger) == "suggested"
    assert people.rename(pid, "Alex B.") == pid
    assert people.person(pid)["name"] == "Alex B." and world.state_of(stranger) == "suggested"
    # so a re-cluster may still take it out; the user's confirmed faces stay
    with world.cat.write():
        world.cat.conn.execute("INSERT INTO face_rejections(face_id, person_id, created_at) VALUES (?, ?, ?)",
                               [stranger, pid, now()])
    world.recluster()
    assert world.person_of(stranger) != pid and all(world.person_of(f) == pid for f in faces)


def test_merging_a_group_into_a_named_person_confirms_the_group_only(world: World):
    a = [world.face("alex") for _ in range(3)]
    world.cluster()
    people = People(world.cat)
    alex = world.person_of(a[0])
    people.name(alex, "Alex")
    later = world.face("alex")
    world.cluster()
    assert world.person_of(later) == alex and world.state_of(later) == "suggested"
    group = [world.face("alex2") for _ in range(3)]
    world.cluster()
    g = world.person_of(group[0])
    assert g not in (None, alex)
    assert people.name(g, "alex") == alex  # "Is this Alex?" Yes
    assert {world.state_of(f) for f in group} == {"confirmed"} and world.state_of(later) == "suggested"


def _named_and_lookalike(world: World, distance: float, shared_photos: bool) -> tuple[int, int]:
    """Alex (named, 4 faces) and an unnamed group of 3 faces whose centroid is about `distance` from Alex's."""
    people = People(world.cat)
    alex_faces = [world.face("alex", noise=0.01) for _ in range(4)]
    world.cluster()
    alex = world.person_of(alex_faces[0])
    people.name(alex, "Alex")
    centre = _at_distance(world.centres["alex"], distance, world.rng)
    photos = [world.cat.scalar("SELECT photo_id FROM faces WHERE id = ?", [f]) for f in alex_faces[:3]]
    group = [world.face_at(centre + world.rng.normal(scale=0.005, size=DIM), "other",
                           photo=photos[i] if shared_photos else None) for i in range(3)]
    world.cluster()
    g = world.person_of(group[0])
    assert g not in (None, alex)
    return alex, g


def test_never_suggests_someone_who_shares_a_photo_with_the_group(world: World):
    alex, g = _named_and_lookalike(world, 0.4, shared_photos=True)
    people = People(world.cat)
    assert people.suggestions(g, TH.suggest_distance) == []  # the one standing next to Alex is not Alex


def test_suggests_a_lookalike_in_other_photos(world: World):
    alex, g = _named_and_lookalike(world, 0.4, shared_photos=False)
    sugg = People(world.cat).suggestions(g, TH.suggest_distance)
    assert [(s.person_id, s.name) for s in sugg] == [(alex, "Alex")]


def test_one_person_is_offered_for_one_group_at_a_time(world: World):
    people = People(world.cat)
    alex_faces = [world.face("alex", noise=0.01) for _ in range(4)]
    world.cluster()
    alex = world.person_of(alex_faces[0])
    people.name(alex, "Alex")
    groups = []
    for distance in (0.38, 0.42, 0.46):  # three groups near Alex (within 0.5), none within clustering reach (0.35)
        centre = _at_distance(world.centres["alex"], distance, world.rng)
        fs = [world.face_at(centre + world.rng.normal(scale=0.005, size=DIM), f"g{distance}") for _ in range(3)]
        world.cluster()
        groups.append(world.person_of(fs[0]))
    assert len(set(groups)) == 3 and alex not in groups
    offers = people.suggestions_by_group(TH.suggest_distance)
    assert {g: s.person_id for g, s in offers.items()} == {groups[0]: alex}  # the closest group only
    world.lib.reject_suggestion(groups[0], alex)  # "No": the next closest gets its turn
    offers = people.suggestions_by_group(TH.suggest_distance)
    assert {g: s.person_id for g, s in offers.items()} == {groups[1]: alex}


def test_small_faces_join_only_closer_than_big_ones(world: World):
    strict = FaceThresholds(**{**{k: getattr(TH, k) for k in FaceThresholds.__dataclass_fields__},
                               "small_cluster_distance": 0.2})
    faces = [world.face("alex", noise=0.01) for _ in range(4)]
    FaceClusterer(world.cat, BACKEND, DIM, strict).run()
    pid = world.person_of(faces[0])
    centre = world.centres["alex"]
    small_far = world.face_at(_at_distance(centre, 0.28, world.rng), "stranger", size=25)  # within 0.35, not 0.2
    big_far = world.face_at(_at_distance(centre, 0.28, world.rng), "alex", size=90)
    small_near = world.face_at(_at_distance(centre, 0.12, world.rng), "alex", size=25)
    FaceClusterer(world.cat, BACKEND, DIM, strict).run()
    assert world.person_of(small_far) is None
    assert world.person_of(big_far) == pid and world.person_of(small_near) == pid
    # without the stricter rule the small face joins at the plain cluster distance
    FaceClusterer(world.cat, BACKEND, DIM, TH).recluster()
    assert world.person_of(small_far) == pid
