"""Suggestions of recurring things to name, on synthetic CLIP embeddings with real catalog rows."""

from __future__ import annotations

import numpy as np

from engine.domain.concepts.registry import ConceptRegistry
from engine.domain.concepts.suggest import suggest_things
from engine.storage.catalog import now
from engine.storage.vectors import to_blob

DIM = 32
SPACE = "test-clip"


def _world(library):
    cat = library.catalog
    rng = np.random.default_rng(1)
    ts = now()
    with cat.write():
        folder = cat.conn.execute("INSERT INTO folders(path, path_bytes, status, added_at) VALUES ('/a', ?, 'online', ?)",
                                  [b"/a", ts]).lastrowid
    groups: dict[str, list[int]] = {}

    def add(group: str, n: int, days: int, face: bool = False) -> None:
        centre = rng.normal(size=DIM)
        centre /= np.linalg.norm(centre)
        with cat.write():
            for i in range(n):
                name = f"{group}{i}.jpg"
                pid = cat.conn.execute(
                    "INSERT INTO photos(folder_id, path, path_bytes, name, content_hash, status, width, height, "
                    "date_taken, added_at, updated_at) VALUES (?, ?, ?, ?, ?, 'ok', 1000, 800, ?, ?, ?)",
                    [folder, f"/a/{name}", f"/a/{name}".encode(), name, name, f"2024-05-{1 + i % days:02d}T10:00:00",
                     ts, ts]).lastrowid
                v = centre + rng.normal(scale=0.05, size=DIM)
                cat.conn.execute("INSERT INTO clip_embeddings(photo_id, model, embedding) VALUES (?, ?, ?)",
                                 [pid, SPACE, to_blob((v / np.linalg.norm(v)).astype(np.float32))])
                if face:
                    cat.conn.execute(
                        "INSERT INTO faces(photo_id, backend, x, y, w, h, score, embedding, state, created_at, "
                        "updated_at) VALUES (?, 'b', 100, 100, 300, 300, 0.9, ?, 'unknown', ?, ?)",
                        [pid, to_blob(np.ones(4, np.float32)), ts, ts])
                groups.setdefault(group, []).append(pid)

    add("dog", 8, days=4)
    add("burst", 6, days=1)
    add("portrait", 6, days=3, face=True)
    add("mug", 7, days=3)
    add("vase", 5, days=2)
    for i in range(10):
        add(f"single{i}-", 1, days=1)
    return groups


def test_recurring_things_are_suggested_and_ranked(library):
    groups = _world(library)
    reg = ConceptRegistry(library.catalog)
    reg.add_object("My mug", groups["mug"][:2])  # the mug is already a concept
    found = suggest_things(library.catalog, SPACE, DIM)
    assert [s.photo_ids for s in found] == [sorted(groups["dog"]), sorted(groups["vase"])]  # biggest, most spread first
    dog = found[0]
    assert dog.days == 4 and dog.representative in groups["dog"] and dog.to_json()["count"] == 8
    # a stricter minimum drops the small group
    assert len(suggest_things(library.catalog, SPACE, DIM, min_photos=6)) == 1
