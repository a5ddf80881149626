"""Any text typed into the search box: never an exception, never a table touched, never more than asked."""

from __future__ import annotations

import gc
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from engine.domain.search.query import parse
from engine.library import Library

from .test_search import Album, StandInEncoder

FTS_BITS = ['"', "'", "*", "(", ")", ":", "-", "+", "^", "{", "}", "AND", "OR", "NOT", "NEAR(", "NEAR/2", "person:",
            "thing:", "in:", "before:", "after:", "folder:", "2019", "Alex", "alex's", "Anne Helene", "beach", "tags",
            "zzperson1", "rowid", ";", "--", "DROP TABLE photos", "%", "_", "\\", "\x00", "\u200b", "é", "ø", "🦫",
            " ", "  "]

queries = st.one_of(
    st.text(max_size=200),
    st.lists(st.sampled_from(FTS_BITS), max_size=12).map("".join),
    st.lists(st.one_of(st.sampled_from(FTS_BITS), st.text(max_size=5)), max_size=10).map(" ".join),
)


@pytest.fixture(scope="module")
def lib(tmp_path_factory: pytest.TempPathFactory):
    library = Library(tmp_path_factory.mktemp("fuzz") / "library")
    enc = StandInEncoder()
    album = Album(library, enc)
    alex, anne = album.person("Alex"), album.person("Anne Helene")
    store = library.captions()
    for i, (shows, caption, who) in enumerate([("beach sea", "Alex on the beach", (alex,)),
                                               ("snow", "Anne Helene skiing", (anne,)),
                                               ("kitchen", "a cake, 2019", (alex, anne))]):
        p = album.photo(f"f{i}/p{i}.jpg", date=f"201{7 + i}-0{i + 1}-10T10:00:00", shows=shows, people=who)
        store.put_caption(p, "original", caption, model="m")
    library.catalog.set_setting("search_clip_floor", 0.2)
    library.fuzz_encoder = enc
    yield library
    library.close()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(q=queries, limit=st.integers(min_value=-5, max_value=30))
def test_search_never_fails(lib, q, limit):
    photos = lib.catalog.scalar("SELECT COUNT(*) FROM photos")
    resp = lib.search(q, limit=limit, encoder=lib.fuzz_encoder)
    assert len(resp.results) <= max(1, limit)
    ids = {r.photo_id for r in resp.results}
    assert len(ids) == len(resp.results)
    for r in resp.results:
        assert isinstance(r.why, str) and r.why and np.isfinite(r.score)
    assert lib.catalog.scalar("SELECT COUNT(*) FROM photos") == photos


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(q=queries)
def test_parse_never_fails(lib, q):
    parsed = parse(q, lib.searcher().names())
    assert all(w.strip() for w in parsed.words)


LONG_PIECES = [" ", "\t", "\n", "\u00a0", "before", "in", "since", "2019", "20", "19", "x", ":", "person:", "in:", "'",
               '"', "-", "/", "Alex", "Anne", "é", "1"]


@settings(max_examples=25, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(unit=st.lists(st.sampled_from(LONG_PIECES), min_size=1, max_size=3).map("".join),
       tail=st.lists(st.sampled_from(LONG_PIECES), max_size=3).map("".join))
@example(unit=" ", tail="2019x")  # was quadratic: a date word's optional spaces scanned from every space of a run
@example(unit="before ", tail="2019-")
def test_long_pasted_queries_parse_in_linear_time(lib, unit, tail):
    """Eight times the text may take about eight times as long, not 64 (quadratic): measured against the same
    query's shorter self, in this process's CPU time, so a busy machine slows both alike (linear: 7 to 10 times,
    measured at load 10; the quadratic date-word pattern: 43 times)."""
    names = lib.searcher().names()
    short = _cpu_seconds_to_parse(unit * (1_000 // len(unit)) + tail, names)
    long = _cpu_seconds_to_parse(unit * (8_000 // len(unit)) + tail, names)
    assert long < 24 * short, f"8 times the {unit!r} took {long / short:.0f} times as long"


def _cpu_seconds_to_parse(q: str, names, repeats: int = 3) -> float:
    """The least CPU time of a few parses, without the garbage collector: what the parser itself costs."""
    best = float("inf")
    gc.disable()
    try:
        for _ in range(repeats):
            start = time.process_time()
            parse(q, names)
            best = min(best, time.process_time() - start)
    finally:
        gc.enable()
    return best
