"""The picture-search matrix saved between processes: a new process maps what the last full load saved, catches
up from the catalog's change log, and answers as a full load would; a save that disagrees with the catalog is
not trusted."""

from __future__ import annotations

import json

import numpy as np

from engine.domain.search import visual
from engine.storage.vectors import to_blob

from .test_search import Album, StandInEncoder

SCENES = ["beach sea sand", "snow mountain ski", "kitchen table cake", "forest path trees"]


def fresh_answer(library, enc, q):
    """What a matrix read whole from the catalog answers."""
    m = visual.ImageMatrix(enc.key, enc.dim)
    m._load_all(library.catalog)
    return m.search(q, 500, 0.3)


def same(a, b):
    """The same photos with the same scores (photos of one scene tie: their order may differ)."""
    return sorted((-round(s, 5), p) for p, s in a) == sorted((-round(s, 5), p) for p, s in b)


def test_a_new_process_maps_the_saved_matrix_and_catches_up(library, monkeypatch):
    enc = StandInEncoder()
    album = Album(library, enc)
    ids = [album.photo(f"{i}.jpg", date=f"{2010 + i % 10}-06-01T10:00:00", shows=SCENES[i % 4]) for i in range(300)]
    monkeypatch.setattr(visual, "COARSE_MIN", 100)
    monkeypatch.setattr(visual, "COARSE_KEEP", 120)
    monkeypatch.setattr(visual, "_matrices", {})
    q = enc.embed(["beach"])
    first = visual.image_matrix(library.catalog, enc.key, enc.dim)
    saved = first._saved_dir(library.catalog)
    meta = json.loads((saved / "meta.json").read_text())
    assert meta["n"] == 300 and "proj" in meta["arrays"]
    loads = []
    load_all = visual.ImageMatrix._load_all
    monkeypatch.setattr(visual.ImageMatrix, "_load_all", lambda self, cat: (loads.append(1), load_all(self, cat)))
    monkeypatch.setattr(visual, "_matrices", {})   # a new process, nothing changed: the saved arrays are mapped
    m = visual.image_matrix(library.catalog, enc.key, enc.dim)
    assert not loads and isinstance(m.vecs, np.memmap) and isinstance(m.proj, np.memmap)
    assert same(m.search(q, 500, 0.3), first.search(q, 500, 0.3))
    # the clip stage (another process) changes rows after the save
    with library.catalog.write():
        library.catalog.conn.execute("DELETE FROM clip_embeddings WHERE photo_id = ?", [ids[0]])
        library.catalog.conn.execute("UPDATE clip_embeddings SET embedding = ? WHERE photo_id = ?",
                                     [to_blob(enc.embed(["beach", "sunset"])), ids[1]])
        library.catalog.conn.execute("UPDATE photos SET date_taken = '1999-01-01T00:00:00' WHERE id = ?", [ids[4]])
    new = album.photo("new.jpg", date="2030-01-01T00:00:00", shows="beach umbrella")
    monkeypatch.setattr(visual, "_matrices", {})   # a new process: the saved arrays and the log's four changes
    m = visual.image_matrix(library.catalog, enc.key, enc.dim)
    assert not loads
    got = m.search(q, 500, 0.3)
    assert same(got, fresh_answer(library, enc, q))
    assert ids[0] not in dict(got) and new in dict(got) and ids[1] in dict(got)
    in_1999 = m.search(q, 500, 0.3, dates=lambda keys: (keys >= 19990101000000) & (keys < 20000101000000))
    assert [pid for pid, _ in in_1999] == [ids[4]]
    # a save that disagrees with the catalog (e.g. an older library restored under it) is read again in full
    monkeypatch.setattr(visual, "_matrices", {})
    vecs = np.load(saved / f"vecs-{meta['tag']}.npy", mmap_mode="r+")
    vecs[:] = -vecs[:]
    vecs.flush()
    del vecs
    loads.clear()
    m = visual.image_matrix(library.catalog, enc.key, enc.dim)
    assert loads == [1] and same(m.search(q, 500, 0.3), fresh_answer(library, enc, q))
    assert json.loads((saved / "meta.json").read_text())["tag"] != meta["tag"]   # saved again, the old files gone
    assert not list(saved.glob(f"*-{meta['tag']}.npy"))
