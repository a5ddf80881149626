"""Hybrid search: name filters, FTS5 words and CLIP looks, fused by reciprocal rank, with a floor and a "why".

1. The documents of changed photos are rebuilt (documents.refresh).
2. The query is parsed (query.parse): names and filters become hard conditions, the rest are words.
3. Words go to FTS5 (every term quoted; all terms, or all but one when no photo has all), bm25 ranked with
   captions and names weighing most; the same words go to CLIP text-to-image similarity over the photos the
   filters allow, keeping only photos above the model's calibrated floor.
4. Both rankings are fused by reciprocal rank (k = 60). A photo qualifies by a word match or by looks above the
   floor; nonsense finds nothing. A query of names and filters only lists the matching photos, newest first.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.domain.captions import CaptionStore
from engine.domain.search import documents
from engine.domain.search.dates import MONTHS, Period
from engine.domain.search.documents import concept_tag, is_alias, person_tag
from engine.domain.search.query import PERSON, THING, Entity, NameIndex, ParsedQuery, parse
from engine.domain.search.text import clean, fts_quote, searchable
from engine.domain.search.visual import NO_DATE, TEXT_CACHE, date_key, floor_for, image_matrix
from engine.storage.catalog import BUSY_TIMEOUT_MS, Catalog

log = logging.getLogger(__name__)

RRF_K = 60
_LOOKS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="search-looks")
MAX_QUERY_CHARS = 500
MAX_WORDS = 24  # words beyond these do not narrow a photo search further
MOST_WORDS_UP_TO = 8  # "all words but one" is tried for queries of 3 to this many words
CONTENT = "{captions names qa folder file place date}"  # the columns typed words may match (never `tags`)
LIVE = "p.status != 'gone'"


@dataclass
class SearchResult:
    photo_id: int
    path: str
    score: float
    why: str
    caption: str | None
    similarity: float | None = None  # CLIP cosine, when looks counted

    def to_json(self) -> dict[str, Any]:
        """Stable shape of `myvlm search --json` (docs/cli-json.md)."""
        return {"id": self.photo_id, "photo": self.path, "score": round(self.score, 6), "why": self.why,
                "caption": self.caption}


@dataclass
class SearchResponse:
    query: ParsedQuery
    results: list[SearchResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the search could not do, in words
    timings: dict[str, float | None] = field(default_factory=dict)  # milliseconds


class Searcher:
    """Searches one library. `encoder`: a CLIP encoder (or a stand-in with key, dim, encode_texts), or None."""

    def __init__(self, catalog: Catalog, encoder: Any = None, *, clip_floor: float | None = None,
                 encoder_missing: str | None = None):
        self.catalog = catalog
        self.encoder = encoder
        self.clip_floor = clip_floor
        self.encoder_missing = encoder_missing  # why there is no encoder, for the notes
        self._names: tuple[int, NameIndex] | None = None

    # -- public ------------------------------------------------------------------------------------------------------

    def refresh(self) -> bool:
        """Bring the documents up to date (search does it itself; the GUI may call it when idle)."""
        return documents.refresh(self.catalog)

    def warm_up(self) -> None:
        """Do the slow first-time work now (documents, the image matrix): e.g. on a worker thread at start-up."""
        self.refresh()
        self.names()
        enc = self.encoder
        if enc is not None and not (hasattr(enc, "missing_reason") and enc.missing_reason()):
            image_matrix(self.catalog, enc.key, enc.dim)

    def search(self, query: str, limit: int = 50) -> SearchResponse:
        started = time.perf_counter()
        text, cut = clean(query if isinstance(query, str) else str(query), MAX_QUERY_CHARS)
        limit = max(1, min(int(limit), 10_000))
        notes = [f"the query was cut to its first {MAX_QUERY_CHARS} characters"] if cut else []
        if not self.refresh():
            notes.append("the search index is catching up with recent changes")
        t0 = time.perf_counter()
        q = parse(text, self.names(), self._is_album_word)
        resp = SearchResponse(q, notes=notes + q.notes)
        resp.timings["parse_ms"] = _ms(t0)
        if any(not searchable(f) for f in q.folders):
            resp.notes.append("a folder: filter needs letters or digits")
        if q.empty or q.unknown_names or any(not searchable(f) for f in q.folders):
            resp.timings["total_ms"] = _ms(started)
            return resp
        tags, conds, params = self._filters(q)
        k = max(limit * 4, 200)
        t0 = time.perf_counter()
        scan = self._visual_scan(q, tags, k, resp) if q.words else None
        looks_job = _LOOKS.submit(scan) if scan is not None else None  # numpy and SQLite run side by side
        t1 = time.perf_counter()
        text_hits, all_terms = self._text_hits(q, tags, conds, params, k) if q.words else ([], set())
        resp.timings["text_ms"] = _ms(t1)
        looks = []
        if looks_job is not None:
            try:
                looks = looks_job.result()
            except Exception as exc:  # noqa: BLE001 - words still answer
                log.warning("search by looks failed: %s", exc)
                resp.notes.append(f"no search by looks: {exc}")
        resp.timings["visual_ms"] = _ms(t0)  # preparing the scan, and waiting for it
        if q.words:
            fused: dict[int, float] = defaultdict(float)
            for rank, pid in enumerate(text_hits):
                fused[pid] += 1.0 / (RRF_K + rank + 1)
            for rank, (pid, _) in enumerate(looks):
                fused[pid] += 1.0 / (RRF_K + rank + 1)
            ranked = sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))
        else:
            ranked = [(pid, 1.0 / (RRF_K + rank + 1))
                      for rank, pid in enumerate(self._filtered(tags, conds, params, limit * 2))]
        resp.results = self._results(q, ranked, limit, text_hits, all_terms, dict(looks))
        resp.timings["total_ms"] = _ms(started)
        return resp

    def names(self) -> NameIndex:
        """Every name and alias a query may use (cached until people or concepts change)."""
        version = int(self.catalog.scalar("SELECT value FROM search_state WHERE key = 'names_version'") or 0)
        if self._names is None or self._names[0] != version:
            self._names = (version, self._load_names())
        return self._names[1]

    # -- parts -------------------------------------------------------------------------------------------------------

    def _load_names(self) -> NameIndex:
        entries: list[tuple[str, Entity]] = []
        people = {r["id"]: r["name"] for r in self.catalog.query("SELECT id, name FROM people WHERE name IS NOT NULL")}
        for pid, name in people.items():
            entries.append((name, Entity(PERSON, name, (person_tag(pid),))))
        for r in self.catalog.query("SELECT id, kind, name, identifier, person_id FROM concepts"):
            if r["person_id"] is not None:
                if r["person_id"] not in people:
                    continue
                entity = Entity(PERSON, people[r["person_id"]], (person_tag(r["person_id"]),))
            else:
                entity = Entity(THING, r["name"], (concept_tag(r["id"]),))
                entries.append((r["name"], entity))
            if is_alias(r["identifier"], r["name"]):
                entries.append((r["identifier"], entity))
        return NameIndex(entries)

    def _is_album_word(self, word: str) -> bool:
        """Is this typed word in some document (so not a misspelt name)?"""
        try:
            return self.catalog.scalar("SELECT 1 FROM search_docs_fts WHERE search_docs_fts MATCH ? LIMIT 1",
                                       [f"{{captions qa folder file place date}} : {fts_quote(word)}"]) is not None
        except sqlite3.Error:
            return False

    def _filters(self, q: ParsedQuery) -> tuple[str, str, list[Any]]:
        """(FTS expression over entity tags and folders, SQL conditions on photos p, their parameters)."""
        groups = ["(" + " OR ".join(f"tags : {fts_quote(t)}" for e in m.entities for t in e.tags) + ")"
                  for m in q.names]
        groups += [f"(folder : {fts_quote(f)})" for f in q.folders]
        words = [_period_words(p) for p in q.during]
        if words and all(words):  # in:2019 / in:2019-07 narrow through the index too (the SQL stays exact)
            groups.append("(" + " OR ".join(f"date : ({' AND '.join(map(fts_quote, w))})" for w in words) + ")")
        conds, params = [LIVE], []
        for lo, hi in _date_ranges(q):
            conds.append("p.date_taken >= ?" if hi is None else "p.date_taken < ?" if lo is None else
                         "(p.date_taken >= ? AND p.date_taken < ?)")
            params += [v for v in (lo, hi) if v is not None]
        if q.during:  # several in:… filters: any of them
            n = len(q.during)
            conds[-n:] = ["(" + " OR ".join(conds[-n:]) + ")"]
        return " AND ".join(groups), " AND ".join(conds), params

    def _fts(self, match: str, conds: str, params: list[Any], k: int | None, order: str = "search_docs_fts.rank"
             ) -> list[int]:
        if conds == LIVE and "p." not in order:  # documents of gone photos are deleted: no join needed
            sql = f"SELECT rowid FROM search_docs_fts WHERE search_docs_fts MATCH ? ORDER BY {order}"
        else:
            # CROSS JOIN: the index leads; photos are looked up per hit (never one FTS probe per dated photo)
            sql = (f"SELECT search_docs_fts.rowid FROM search_docs_fts CROSS JOIN photos p "
                   f"ON p.id = search_docs_fts.rowid WHERE search_docs_fts MATCH ? AND {conds} ORDER BY {order}")
        args: list[Any] = [match, *params]
        if k is not None:
            sql += " LIMIT ?"
            args.append(k)
        try:
            return [r[0] for r in self.catalog.query(sql, args)]
        except sqlite3.OperationalError as exc:  # never the user's syntax (all quoted); e.g. a corrupt index
            log.warning("full-text query failed: %s", exc)
            return []

    def _text_hits(self, q: ParsedQuery, tags: str, conds: str, params: list[Any], k: int
                   ) -> tuple[list[int], set[int]]:
        """Photos whose words match, best first; and which of them match every word."""
        terms = [fts_quote(w) for w in q.words[:MAX_WORDS]]

        def run(joiner: str, limit: int) -> list[int]:
            content = f"{CONTENT} : ({joiner.join(terms)})"
            return self._fts(f"({tags}) AND {content}" if tags else content, conds, params, limit)

        hits = run(" AND ", k)
        if hits or not 3 <= len(terms) <= MOST_WORDS_UP_TO:
            return hits, set(hits)
        # no photo has every word: photos with all but one of them (never just any one word: that is noise)
        most = " OR ".join("(" + " AND ".join(terms[:i] + terms[i + 1:]) + ")" for i in range(len(terms)))
        return self._fts(f"({tags}) AND {CONTENT} : ({most})" if tags else f"{CONTENT} : ({most})", conds, params,
                         k), set()

    def _filtered(self, tags: str, conds: str, params: list[Any], k: int | None, newest_first: bool = True
                  ) -> list[int]:
        """Photos the filters allow, newest first (all of them when k is None)."""
        order = "p.date_taken DESC, p.id DESC" if newest_first else "search_docs_fts.rowid" if tags else "p.id"
        if tags:
            return self._fts(tags, conds, params, k, order)
        sql = f"SELECT p.id FROM photos p WHERE {conds} ORDER BY {order}"
        return [r[0] for r in self.catalog.query(sql + (f" LIMIT {int(k)}" if k is not None else ""), params)]

    def _visual_scan(self, q: ParsedQuery, tags: str, k: int, resp: SearchResponse
                     ) -> Callable[[], list[tuple[int, float]]] | None:
        """The scan for photos that look like the words (above the floor, most alike first), ready to run on any
        thread: everything that needs the database or the model happens here. None when looks cannot count."""
        enc = self.encoder
        if enc is None:
            why = (self.encoder_missing or "no CLIP encoder").split(". ")[0].rstrip(".")
            resp.notes.append(f"no search by looks: {why}")
            return None
        missing = enc.missing_reason() if hasattr(enc, "missing_reason") else None
        if missing:
            resp.notes.append("no search by looks: CLIP weights are not on this machine (myvlm doctor)")
            return None
        floor = self.clip_floor if self.clip_floor is not None else floor_for(self.catalog, enc.key)
        if floor is None:
            resp.notes.append(f"no search by looks: no calibrated similarity floor for {enc.key} "
                              "(setting search_clip_floor)")
            return None
        matrix = image_matrix(self.catalog, enc.key, enc.dim)
        if not len(matrix):
            resp.notes.append(f"no search by looks: no photo has a {enc.key} embedding yet (the clip stage)")
            return None
        if not q.visual_text:
            return None
        t0 = time.perf_counter()
        try:
            vec = TEXT_CACHE.embed(enc, q.visual_text)
        except Exception as exc:  # noqa: BLE001 - a model that fails to load leaves word search working
            resp.notes.append(f"no search by looks: {exc}")
            return None
        if vec.shape != (matrix.dim,):
            resp.notes.append(f"no search by looks: the encoder gives {vec.shape} vectors, the photos {enc.dim}")
            return None
        forward = TEXT_CACHE.last_forward_s
        resp.timings["text_forward_ms"] = None if forward is None else forward * 1000
        resp.timings["embed_ms"] = _ms(t0)
        ranges = [(date_key(lo) if lo else None, date_key(hi) if hi else None) for lo, hi in _date_ranges(q)]
        dates = _date_predicate(ranges, len(q.during)) if ranges else None
        db = str(self.catalog.paths.db)

        def scan() -> list[tuple[int, float]]:
            among = None
            if tags:  # the photos the filters allow, read on this thread's own connection
                rows = _reader(db).execute(
                    "SELECT rowid FROM search_docs_fts WHERE search_docs_fts MATCH ?", [tags]).fetchall()
                among = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            with matrix.lock:
                return matrix.search(vec, k, floor, among, dates)
        return scan

    def _results(self, q: ParsedQuery, ranked: list[tuple[int, float]], limit: int, text_hits: list[int],
                 all_terms: set[int], looks: dict[int, float]) -> list[SearchResult]:
        head = [pid for pid, _ in ranked[: limit * 2]]
        if not head:
            return []
        marks = ",".join("?" * len(head))
        paths = {r["id"]: r["path"] for r in self.catalog.query(
            f"SELECT id, path FROM photos WHERE id IN ({marks}) AND status != 'gone'", head)}
        chosen = [(pid, score) for pid, score in ranked[: limit * 2] if pid in paths][:limit]
        ids = [pid for pid, _ in chosen]
        captions = CaptionStore(self.catalog).best_captions(ids)
        matched = self._words_matched(q, [pid for pid in ids if pid in set(text_hits) and pid not in all_terms])
        common = self._common_why(q)
        out = []
        for pid, score in chosen:
            why = list(common)
            if pid in all_terms:
                why.append("words: " + _short(", ".join(q.words[:MAX_WORDS])))
            elif matched.get(pid):
                why.append("words: " + _short(", ".join(matched[pid])))
            if pid in looks:
                why.append(f"looks like “{_short(q.visual_text)}” ({looks[pid]:.2f})")
            out.append(SearchResult(pid, paths[pid], score, "; ".join(why) or "matches", captions.get(pid),
                                    looks.get(pid)))
        return out

    def _words_matched(self, q: ParsedQuery, ids: list[int]) -> dict[int, list[str]]:
        """Which of the words each of these photos matches (the ones that matched only some)."""
        out: dict[int, list[str]] = defaultdict(list)
        if not ids:
            return out
        marks = ",".join("?" * len(ids))
        for word in q.words[:MAX_WORDS]:
            try:
                rows = self.catalog.query(
                    f"SELECT rowid FROM search_docs_fts WHERE search_docs_fts MATCH ? AND rowid IN ({marks})",
                    [f"{CONTENT} : {fts_quote(word)}", *ids])
            except sqlite3.OperationalError:
                continue
            for r in rows:
                out[r[0]].append(word)
        return out

    @staticmethod
    def _common_why(q: ParsedQuery) -> list[str]:
        why = []
        for m in q.names:
            why.append(f"{m.name} (read from “{m.typed}”)" if m.fuzzy else m.name)
        for p in q.during:
            why.append(f"taken in {p.label}")
        if q.after:
            why.append(f"taken from {q.after.start[:10]} on")
        if q.before:
            why.append(f"taken before {q.before.start[:10]}")
        for f in q.folders:
            why.append(f"folder “{f}”")
        return why


_readers = threading.local()


def _reader(db: str) -> sqlite3.Connection:
    """A read-only connection of the calling thread (the looks side reads while the words side queries)."""
    conns = _readers.__dict__.setdefault("conns", {})
    if db not in conns:
        conns[db] = sqlite3.connect(f"file:{db}?mode=ro", uri=True, check_same_thread=False)
        conns[db].execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    return conns[db]


def _period_words(p: Period) -> list[str] | None:
    """The date words of a whole year ("2019") or month ("2019", "july"); None for other periods."""
    year = p.start[:4]
    if p.start[5:] == "01-01" and p.end == f"{int(year) + 1}-01-01":
        return [year]
    if p.start[8:] == "01" and p.end[8:] == "01" and (int(p.end[5:7]) - int(p.start[5:7])) % 12 == 1:
        return [year, MONTHS[int(p.start[5:7]) - 1]]
    return None


def _date_ranges(q: ParsedQuery) -> list[tuple[str | None, str | None]]:
    """[start, end) ISO bounds: after and before first (all must hold), then the `in:` periods (any may)."""
    out: list[tuple[str | None, str | None]] = []
    if q.after:
        out.append((q.after.start, None))
    if q.before:
        out.append((None, q.before.start))
    return out + [(p.start, p.end) for p in q.during]


def _date_predicate(ranges: list[tuple[int | None, int | None]], n_any: int) -> Callable[[np.ndarray], np.ndarray]:
    """The same date conditions over date keys (see visual.date_key), for the picture side."""
    def test(keys: np.ndarray) -> np.ndarray:
        masks = [(keys != NO_DATE) & (keys >= (lo if lo is not None else 0)) &
                 (keys < (hi if hi is not None else np.iinfo(np.int64).max)) for lo, hi in ranges]
        ok = np.ones(len(keys), bool)
        for m in masks[: len(masks) - n_any]:
            ok &= m
        if n_any:
            ok &= np.logical_or.reduce(masks[len(masks) - n_any:])
        return ok
    return test


def _short(text: str, n: int = 80) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000
