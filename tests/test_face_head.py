"""The MyVLM person head on real faces (dlib), through the real pipeline.

(a) face_recognition's portraits: the head of the named Obama group fires on Obama's photos, not on Biden's, and in
    a two-person photo it matches Obama's face, not Biden's.
(b) the KPhotoAlbum demo album with hand-labelled faces (tests/data/kphotoalbum_faces.json): a head built from
    Jesper's confirmed faces in a few photos finds him in the rest of the album and not in photos without him.

Pipeline runs are shared by module-scoped fixtures (dlib HOG on CPU: a few seconds per album).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from engine.domain.concepts.face_head import (
    REFERENCES,
    build_person_head,
    build_person_head_from_images,
    load_faces_by_photo,
    one_face_per_image,
    person_head_signals,
    select_references,
)
from engine.domain.concepts.registry import PERSON, ConceptError, ConceptRegistry, Head
from engine.library import Library
from engine.pipeline.faces import iou

ROOT = Path(__file__).resolve().parent.parent
LABELS = ROOT / "tests" / "data" / "kphotoalbum_faces.json"
PORTRAITS = ("obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg")


def _open(path: Path) -> Image.Image:
    return ImageOps.exif_transpose(Image.open(path)).convert("RGB")


def side_by_side(left: Path, right: Path, height: int = 900) -> Image.Image:
    """Two portraits pasted into one photo, both scaled to `height`."""
    a, b = _open(left), _open(right)
    a = a.resize((round(a.width * height / a.height), height), Image.Resampling.LANCZOS)
    b = b.resize((round(b.width * height / b.height), height), Image.Resampling.LANCZOS)
    out = Image.new("RGB", (a.width + b.width, height), (128, 128, 128))
    out.paste(a, (0, 0))
    out.paste(b, (a.width, 0))
    return out


def _photo_ids(lib: Library) -> dict[str, int]:
    """Album photos by path relative to their watched folder ('CategoryImages/People-Jesper.jpg')."""
    out = {}
    for p in lib.photos():
        folder = lib.catalog.folder(p.folder_id)
        out[str(Path(p.path).relative_to(folder.path))] = p.id
    return out


# ----------------------------------------------------------------------------------------------------------------------
# (a) face_recognition portraits
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def obama_lib(test_data: Path, tmp_path_factory: pytest.TempPathFactory):
    """The four portraits indexed; the Obama group named (confirmed); obama3's face split off (held out)."""
    tmp = tmp_path_factory.mktemp("obama")
    album = tmp / "album"
    album.mkdir()
    for name in PORTRAITS:
        shutil.copy(test_data / "face_recognition" / name, album / name)
    lib = Library(tmp / "library")
    lib.options["face_backend"] = "dlib"
    lib.add_folder(album)
    lib.scan()
    lib.process()
    people = lib.people()
    ids = _photo_ids(lib)
    face = {n: people.faces_in_photo(ids[n]) for n in PORTRAITS}
    assert all(len(f) == 1 for f in face.values())
    pid = face["obama.jpg"][0]["person_id"]
    assert pid is not None and face["obama2.jpg"][0]["person_id"] == pid
    pid = people.name(pid, "Barack Obama")
    if face["obama3.jpg"][0]["person_id"] == pid:  # held out: not a reference
        people.split(pid, [face["obama3.jpg"][0]["id"]])
    yield lib, album, pid, {n: f[0]["id"] for n, f in face.items()}
    lib.close()


def test_obama_head_fires_on_obama_not_biden(obama_lib):
    lib, _album, pid, face_ids = obama_lib
    backend = lib.face_backend()
    head, metrics = build_person_head(lib.catalog, pid, backend)
    assert head.kind == PERSON and head.space == backend.key == "dlib-resnet-v1"
    assert head.threshold == backend.thresholds.concept_distance
    assert head.tensors[REFERENCES].shape == (2, 128)  # obama.jpg and obama2.jpg: one per photo
    assert sorted(metrics["reference_face_ids"]) == sorted([face_ids["obama.jpg"], face_ids["obama2.jpg"]])

    # stored and reloaded through the registry, as the app does
    registry = ConceptRegistry(lib.catalog)
    concept = registry.add_person(pid)
    concept = registry.save_head(concept.id, head, metrics)
    assert concept.head_state == "ready" and concept.head_space == backend.key
    head = registry.head(concept.id)
    assert head is not None and head.threshold == pytest.approx(backend.thresholds.concept_distance)

    ids = _photo_ids(lib)
    signals = person_head_signals(head, load_faces_by_photo(lib.catalog, backend.key, ids.values()))
    dist = {n: 1 - signals[ids[n]][0] for n in PORTRAITS}
    print("\nObama head (dlib), distance of each photo's best face:",
          {n: round(d, 4) for n, d in dist.items()}, "threshold", round(head.threshold, 4))
    for n in ("obama.jpg", "obama2.jpg", "obama3.jpg"):
        _, fired, fid = signals[ids[n]]
        assert fired and fid == face_ids[n], n
    assert dist["obama.jpg"] < 1e-5 and dist["obama2.jpg"] < 1e-5  # references themselves
    assert 0.01 < dist["obama3.jpg"] < head.threshold  # held out: a real match, not a copy
    _, fired, fid = signals[ids["biden.jpg"]]
    assert not fired and fid == face_ids["biden.jpg"]
    assert dist["biden.jpg"] > 1.3 * head.threshold  # clearly apart, not at the edge


def test_two_person_photo_fires_on_obamas_face(obama_lib):
    lib, album, pid, _ = obama_lib
    backend = lib.face_backend()
    head, _ = build_person_head(lib.catalog, pid, backend)
    side_by_side(album / "obama2.jpg", album / "biden.jpg").save(album / "together.jpg", quality=92)
    try:
        lib.scan()
        lib.process()
        photo = _photo_ids(lib)["together.jpg"]
        faces = sorted(lib.people().faces_in_photo(photo), key=lambda f: f["x"])
        assert len(faces) == 2  # Obama left, Biden right
        obama_face, biden_face = faces[0]["id"], faces[1]["id"]
        by_photo = load_faces_by_photo(lib.catalog, backend.key, [photo])
        score, fired, fid = person_head_signals(head, by_photo)[photo]
        assert fired and fid == obama_face
        # each face on its own: Biden's face alone does not fire, Obama's alone does
        alone = {pid_: [f for f in fs if f[0] == biden_face] for pid_, fs in by_photo.items()}
        assert person_head_signals(head, alone)[photo][1:] == (False, biden_face)
        alone = {pid_: [f for f in fs if f[0] == obama_face] for pid_, fs in by_photo.items()}
        assert person_head_signals(head, alone)[photo][1:] == (True, obama_face)
        print(f"\ntwo-person photo: Obama's face at distance {1 - score:.4f}")
    finally:
        (album / "together.jpg").unlink()
        lib.scan()


def test_head_from_images_keeps_the_face_that_matches(obama_lib, tmp_path: Path):
    """The paper's rule for training images: in a multi-face image only the face that matches the single-face
    images counts."""
    lib, album, _, _ = obama_lib
    backend = lib.face_backend()
    together = np.asarray(side_by_side(album / "biden.jpg", album / "obama2.jpg"))  # Obama on the right this time
    head, metrics = build_person_head_from_images(backend, [album / "obama.jpg", together, album / "obama3.jpg"])
    assert metrics["faces_per_image"] == [1, 2, 1]
    assert metrics["kept_face_index"][0] == 0 and metrics["kept_face_index"][2] == 0
    faces = [f for f in backend.detect(together) if backend.thresholds.keep(f)]
    kept = faces[metrics["kept_face_index"][1]]
    assert kept.bbox[0] > together.shape[1] / 2  # the right-hand face: Obama's
    # the head built this way fires on Obama's library photos and not on Biden's
    ids = _photo_ids(lib)
    signals = person_head_signals(head, load_faces_by_photo(lib.catalog, backend.key, ids.values()))
    assert [signals[ids[n]][1] for n in PORTRAITS] == [True, True, True, False]
    with pytest.raises(ConceptError, match="no face found"):
        build_person_head_from_images(backend, [np.full((200, 200, 3), 127, np.uint8)])


def test_clear_errors(obama_lib):
    lib, _, pid, face_ids = obama_lib
    backend = lib.face_backend()
    people = lib.people()
    # a named person with no confirmed face
    other = people.split(pid, [face_ids["obama2.jpg"]])
    try:
        people.name(other, "Nobody Yet")
        lib.catalog.conn.execute("UPDATE faces SET state = 'suggested' WHERE person_id = ?", [other])
        with pytest.raises(ConceptError, match="confirm some faces of Nobody Yet first"):
            build_person_head(lib.catalog, other, backend)
        # confirmed faces, but embedded by another backend only
        lib.catalog.conn.execute("UPDATE faces SET state = 'confirmed', backend = 'insightface:buffalo_l' "
                                 "WHERE person_id = ?", [other])
        with pytest.raises(ConceptError, match="re-run the faces stage"):
            build_person_head(lib.catalog, other, backend)
    finally:
        lib.catalog.conn.execute("UPDATE faces SET backend = ? WHERE person_id = ?", [backend.key, other])
        people.move_faces([face_ids["obama2.jpg"]], pid)
    with pytest.raises(ConceptError, match="no person"):
        build_person_head(lib.catalog, 999_999, backend)


def test_reference_selection_and_signals_on_synthetic_vectors():
    rng = np.random.default_rng(1)
    centre = rng.normal(size=32)
    looks = [centre + rng.normal(scale=0.6, size=32) for _ in range(3)]  # three looks of one person
    vecs = np.stack([lk + rng.normal(scale=0.05, size=32) for lk in looks for _ in range(4)])
    vecs = np.vstack([vecs, vecs[:2]])  # duplicate photos
    chosen = select_references(vecs, max_refs=3)
    assert len(chosen) == 3 and len({c // 4 for c in chosen}) == 3  # one of each look
    assert select_references(vecs[:1].repeat(4, axis=0), 5) == [0]  # duplicates never added twice
    # multi-face image: keeps the face nearest the single-face images
    other = rng.normal(size=32)
    kept = one_face_per_image([vecs[:1], np.stack([other, vecs[5]]), np.zeros((0, 32)), vecs[6:7]])
    assert kept == [0, 1, None, 0]
    # signals: vectorised result equals the face-by-face loop
    refs = vecs[chosen] / np.linalg.norm(vecs[chosen], axis=1, keepdims=True)
    head = Head(PERSON, "test", 0.3, {REFERENCES: refs})
    faces = {p: [(100 * p + i, rng.normal(size=32) if i else vecs[p % 12] + rng.normal(scale=0.3, size=32))
                 for i in range(p % 4)] for p in range(40)}
    got = person_head_signals(head, faces)
    for p, fs in faces.items():
        if not fs:
            assert got[p] == (0.0, False, None)
            continue
        d = [float((1 - (np.asarray(e) / np.linalg.norm(e)) @ refs.T).min()) for _, e in fs]
        i = int(np.argmin(d))
        assert got[p][2] == fs[i][0] and got[p][0] == pytest.approx(1 - d[i], abs=1e-5)
        assert got[p][1] == (d[i] <= 0.3)
    with pytest.raises(ConceptError, match="another backend"):
        person_head_signals(head, {1: [(1, np.ones(16))]})


# ----------------------------------------------------------------------------------------------------------------------
# (b) KPhotoAlbum: Jesper
# ----------------------------------------------------------------------------------------------------------------------

# Jesper's confirmed faces that define the head: a close portrait, a knitted hat outdoors, a bar with a friend, and
# his youth (1988-1990). The other photos are the test.
JESPER_REFERENCE_PHOTOS = ("jesper_2.jpg", "grand_canyon_2.jpg", "bar55_2.jpg", "new_wave_2.jpg")


def _labels() -> dict:
    assert LABELS.exists(), f"{LABELS} (hand labels of the album's faces, committed with the tests) is missing"
    return json.loads(LABELS.read_text())["photos"]


@pytest.fixture(scope="module")
def kpa_lib(test_data: Path, tmp_path_factory: pytest.TempPathFactory):
    """The KPhotoAlbum demo album indexed with dlib, photos stored sideways turned first (index.xml's angle),
    and every detected face matched to its hand label (IoU > 0.5)."""
    labels = _labels()
    lib = Library(tmp_path_factory.mktemp("kpa") / "library")
    lib.options["face_backend"] = "dlib"
    lib.add_folder(test_data / "kphotoalbum")
    lib.scan()
    ids = _photo_ids(lib)
    for name, info in labels.items():
        if info.get("angle") and name in ids:
            lib.rotate(ids[name], info["angle"])
    lib.process()
    label_of: dict[int, str] = {}  # face id -> label
    unlabelled = []
    for name, info in labels.items():
        if name not in ids:
            continue
        expected = info.get("faces_turned") if info.get("angle") else info["faces"]
        for f in lib.people().faces_in_photo(ids[name]):
            box = (f["x"], f["y"], f["w"], f["h"])
            match = [lb["label"] for lb in expected or [] if iou(box, tuple(lb["box"])) > 0.5]
            if match:
                label_of[f["id"]] = match[0]
            else:
                unlabelled.append((name, box))
    yield lib, labels, ids, label_of, unlabelled
    lib.close()


def test_jesper_head_finds_jesper(kpa_lib):
    lib, labels, ids, label_of, unlabelled = kpa_lib
    assert not unlabelled, f"detections the labels file does not know (detector changed?): {unlabelled}"
    people = lib.people()
    backend = lib.face_backend()
    jesper_faces = {fid for fid, lb in label_of.items() if lb == "Jesper"}
    face_photo = {r["id"]: r["photo_id"] for r in lib.catalog.query("SELECT id, photo_id FROM faces")}
    ref_faces = [fid for fid in jesper_faces if face_photo[fid] in {ids[n] for n in JESPER_REFERENCE_PHOTOS}]
    assert len(ref_faces) == len(JESPER_REFERENCE_PHOTOS)

    # make them a named, confirmed person: split one off whatever group it is in (or start a group), move the rest
    first = lib.catalog.scalar("SELECT person_id FROM faces WHERE id = ?", [ref_faces[0]])
    if first is not None:
        pid = people.split(first, [ref_faces[0]])
    else:  # the face is in no group yet: a group of its own
        pid = _new_person(lib)
        people.move_faces([ref_faces[0]], pid)
    pid = people.name(pid, "Jesper")
    people.move_faces(ref_faces[1:], pid)
    confirmed = {r["id"] for r in lib.catalog.query(
        "SELECT id FROM faces WHERE person_id = ? AND state = 'confirmed'", [pid])}
    assert confirmed == set(ref_faces)

    head, metrics = build_person_head(lib.catalog, pid, backend)
    assert len(head.tensors[REFERENCES]) == 4 and metrics["references"] == 4

    signals = person_head_signals(head, load_faces_by_photo(lib.catalog, backend.key, ids.values()))
    # ground truth per photo: Jesper's face is there and detected (the head can only see detected faces)
    sources = {n: info["source"] for n, info in labels.items() if "source" in info}
    ref_photos = set(JESPER_REFERENCE_PHOTOS) | {n for n, s in sources.items() if s in JESPER_REFERENCE_PHOTOS}
    tp = fp = fn = tn = 0
    listed = found = 0  # index.xml's view: photos that list Jesper, whether or not his face was detected
    his_dist, other_dist = [], []
    rows = []
    for name, info in sorted(labels.items()):
        if name not in ids or name in ref_photos:
            continue
        score, fired, fid = signals[ids[name]]
        faces = info.get("faces_turned") if info.get("angle") else info["faces"]
        has_him = any(lb["label"] == "Jesper" for lb in faces or [])
        if fired and has_him:
            assert fid in jesper_faces, f"{name}: fired on face {fid} ({label_of.get(fid)}), not on Jesper's"
        tp += fired and has_him
        fp += fired and not has_him
        fn += has_him and not fired
        tn += not fired and not has_him
        listed += "Jesper" in info["people"]
        found += fired and "Jesper" in info["people"]
        (his_dist if has_him else other_dist).append(1 - score)
        rows.append(f"  {name:40s} jesper={'yes' if has_him else 'no ':3s} dist={1 - score:.3f} "
                    f"{'FIRED on ' + str(label_of.get(fid)) if fired else ''}")
    precision = tp / max(tp + fp, 1)
    recall = tp / max(tp + fn, 1)
    print(f"\nJesper head (dlib, {metrics['references']} refs, threshold {head.threshold:.4f}) on the other photos:")
    print("\n".join(rows))
    print(f"  precision {precision:.2f} ({tp}/{tp + fp}), recall {recall:.2f} ({tp}/{tp + fn}) over photos where his "
          f"face is detected; {found}/{listed} of the photos index.xml lists him in; true negatives {tn}; "
          f"his farthest {max(his_dist):.3f} vs nearest other {min(other_dist):.3f}")
    # Measured (dlib HOG + ResNet, concept_distance 0.085, and 0.0856 before calibration): precision 1.00 (8/8),
    # recall 1.00 (8/8), 8/9 of index.xml's (pool.jpg: his face is in profile and not detected); his farthest photo
    # 0.070 (grand_canyon_1, a small face), nearest other 0.097 (a stranger in pool.jpg's background). The bounds
    # leave room for a recalibrated threshold.
    assert tp + fn >= 8 and tn >= 20
    assert precision >= 0.85, "fires on photos without Jesper"
    assert recall >= 0.75, "misses Jesper's photos"
    assert max(his_dist) < min(other_dist), "some stranger looks more like the head than Jesper himself"


def _new_person(lib: Library) -> int:
    from engine.storage.catalog import now

    with lib.catalog.write():
        return int(lib.catalog.conn.execute(
            "INSERT INTO people(name, hidden, created_at, updated_at) VALUES (NULL, 0, ?, ?)", [now(), now()]).lastrowid)
