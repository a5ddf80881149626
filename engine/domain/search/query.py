"""Query understanding: names and filters out of free text, the rest left for words and pictures.

"Bella and Alex in 2019" -> people Bella AND Alex (hard filters), taken in 2019, no words.
"alex's red kite" -> Alex; words red, kite. `person:"Anne Helene" after:2004 folder:holiday beach` -> filters + beach.

Names are matched case- and accent-insensitively, possessives dropped, several words long ("Anne Helene"); a
name that is also a common word (Rose, Will) counts only when capitalised; a typo ("Jespr") is read as the closest
name when it is one or two edits away and is no word of the album itself.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from rapidfuzz.distance import DamerauLevenshtein

from engine.domain.search.dates import YEAR, Period, period
from engine.domain.search.text import COMMON_WORDS, STOPWORDS, Token, fold, searchable, tokens

FILTER = re.compile(r"""(?<![\w])(person|people|who|thing|object|pet|concept|before|after|in|during|year|folder|dir)
                        :\s*(?:"([^"]*)"?|'([^']*)'?|([^\s"']+))""", re.IGNORECASE | re.VERBOSE)
# The optional word carries its own spaces: with a bare `(word)?\s*` every space of a long run was a start that
# scanned the rest of the run, quadratic in the query's length (seconds for a few thousand pasted spaces).
DATE_WORDS = re.compile(r"(?<![\w:])(?:(before|after|in|during|from|since|until)\s*)?\b((?:19|20)\d\d)\b(?![-/.:]?\d)",
                        re.IGNORECASE)
PERSON, THING = "person", "thing"


@dataclass(frozen=True)
class Entity:
    """Someone or something a query can name; `tags` are its tokens in the search index."""

    kind: str  # person | thing
    name: str  # display name
    tags: tuple[str, ...]


@dataclass
class NameMatch:
    entities: list[Entity]  # one name may be carried by several (a person and a pet both called Max): any will do
    typed: str
    fuzzy: bool = False

    @property
    def name(self) -> str:
        return self.entities[0].name


@dataclass
class ParsedQuery:
    text: str
    names: list[NameMatch] = field(default_factory=list)  # all required
    unknown_names: list[str] = field(default_factory=list)  # person:/thing: filters naming nobody
    words: list[str] = field(default_factory=list)  # for FTS5 (stopwords out)
    visual_text: str = ""  # for CLIP: the typed words less names and filters
    after: Period | None = None  # taken on or after `after.start`
    before: Period | None = None  # taken before `before.start`
    during: list[Period] = field(default_factory=list)
    folders: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def has_filters(self) -> bool:
        return bool(self.names or self.unknown_names or self.after or self.before or self.during or self.folders)

    @property
    def empty(self) -> bool:
        return not (self.has_filters or self.words)


class NameIndex:
    """Every name and alias a query can use, folded: tuple of words -> entities."""

    def __init__(self, entries: Iterable[tuple[str, Entity]]):
        self.by_key: dict[tuple[str, ...], list[Entity]] = {}
        for alias, entity in entries:
            key = tuple(fold(t.text) for t in tokens(alias))
            if key and entity not in self.by_key.setdefault(key, []):
                self.by_key[key].append(entity)
        # a person's first name alone ("Anne" for Anne Helene) when no one else has it
        firsts: dict[tuple[str, ...], list[Entity]] = {}
        for key, ents in self.by_key.items():
            if len(key) > 1:
                for e in ents:
                    if e.kind == PERSON:
                        firsts.setdefault(key[:1], []).append(e)
        for key, ents in firsts.items():
            if key not in self.by_key and len(ents) == 1:
                self.by_key[key] = ents
        self.longest = max((len(k) for k in self.by_key), default=0)
        self.single = {k[0]: v for k, v in self.by_key.items() if len(k) == 1}

    def lookup(self, words: tuple[str, ...]) -> list[Entity]:
        return self.by_key.get(words, [])

    def resolve(self, name: str, prefer: str | None = None) -> list[Entity]:
        """An explicit filter's name: exact (folded), else the closest within typo distance."""
        key = tuple(fold(t.text) for t in tokens(name))
        found = self.by_key.get(key, [])
        if not found and len(key) == 1:
            found = self.fuzzy(key[0]) or []
        if prefer and any(e.kind == prefer for e in found):
            found = [e for e in found if e.kind == prefer]
        return found

    def fuzzy(self, word: str) -> list[Entity] | None:
        """The single name one typo away (two for long words), same first letter; None if none or a tie."""
        if len(word) < 4 or not word.isalpha():
            return None
        limit = 1 if len(word) < 8 else 2
        best, best_d = None, limit + 1
        for key, ents in self.single.items():
            if key[:1] != word[:1] or abs(len(key) - len(word)) > limit:
                continue
            d = DamerauLevenshtein.distance(word, key, score_cutoff=limit)
            if d < best_d:
                best, best_d = ents, d
            elif d == best_d and best is not None and ents != best:
                best = []  # a tie: two names are equally close, guess neither
        return best or None


def parse(text: str, names: NameIndex, is_album_word: Callable[[str], bool] = lambda w: False) -> ParsedQuery:
    """Split a query into name filters, explicit filters, date filters and the remaining words."""
    q = ParsedQuery(text=text)
    rest = FILTER.sub(lambda m: _explicit(q, names, m), text)
    rest = DATE_WORDS.sub(lambda m: _date_word(q, m), rest)
    toks = tokens(rest)
    used = [False] * len(toks)
    i = 0
    while i < len(toks):
        match = _name_at(toks, i, names)
        if match is not None:
            n, entities = match
            q.names.append(NameMatch(entities, " ".join(t.text for t in toks[i : i + n])))
            used[i : i + n] = [True] * n
            i += n
        else:
            i += 1
    for i, tok in enumerate(toks):  # typos, after exact names had their chance
        key = tok.key
        if used[i] or key in STOPWORDS or key in COMMON_WORDS or not tok.text.isalpha():
            continue
        found = names.fuzzy(key)
        if found and not is_album_word(tok.text):
            q.names.append(NameMatch(found, tok.text, fuzzy=True))
            used[i] = True
    q.names = _dedupe(q.names)
    kept = [t for t, u in zip(toks, used) if not u]
    q.words = list(dict.fromkeys(t.text for t in kept if t.key not in STOPWORDS and searchable(t.text)))
    while kept and kept[0].key in STOPWORDS:  # "at the beach" -> "beach"; "wore at the wedding" stays
        kept.pop(0)
    while kept and kept[-1].key in STOPWORDS:
        kept.pop()
    q.visual_text = " ".join(t.text for t in kept) if q.words else ""
    return q


def _name_at(toks: list[Token], i: int, names: NameIndex) -> tuple[int, list[Entity]] | None:
    for n in range(min(names.longest, len(toks) - i), 0, -1):
        key = tuple(t.key for t in toks[i : i + n])
        entities = names.lookup(key)
        if not entities:
            continue
        if n == 1 and key[0] in COMMON_WORDS and not toks[i].capitalised:
            continue  # "rose garden" is about flowers; "Rose" is a person
        if n == 1 and key[0] in STOPWORDS and not toks[i].capitalised:
            continue
        return n, entities
    return None


def _explicit(q: ParsedQuery, names: NameIndex, m: re.Match[str]) -> str:
    key = m.group(1).lower()
    value = next((g for g in m.group(2, 3, 4) if g is not None), "").strip()
    if not value:
        return " "
    if key in ("person", "people", "who", "thing", "object", "pet", "concept"):
        prefer = PERSON if key in ("person", "people", "who") else THING
        found = names.resolve(value, prefer)
        if found:
            q.names.append(NameMatch(found, value, fuzzy=fold(found[0].name) != fold(value)))
        else:
            q.unknown_names.append(value)
            q.notes.append(f"no one and nothing is called {value!r}")
        return " "
    if key in ("folder", "dir"):
        q.folders.append(value)
        return " "
    p = period(value)
    if p is None:
        if key in ("in", "during", "year"):
            return f" {value} "  # in:paris: a place word, not a date
        q.notes.append(f"{key}:{value} is not a date (try {key}:2019, {key}:2019-07 or {key}:2019-07-14)")
        return " "
    _add_period(q, key, p)
    return " "


def _date_word(q: ParsedQuery, m: re.Match[str]) -> str:
    p = period(m.group(2))
    if p is None or not YEAR.fullmatch(m.group(2)):
        return m.group(0)
    _add_period(q, (m.group(1) or "in").lower(), p)
    return " "


def _add_period(q: ParsedQuery, key: str, p: Period) -> None:
    if key in ("before", "until"):
        end = p if key == "before" else Period(p.end, p.end, p.label)  # until 2019 includes 2019
        q.before = end if q.before is None or end.start < q.before.start else q.before
    elif key in ("after", "since"):
        # after:2019 means from 2020 on; since 2019 includes 2019
        start = Period(p.end, p.end, p.label) if key == "after" else p
        q.after = start if q.after is None or start.start > q.after.start else q.after
    else:
        q.during.append(p)


def _dedupe(matches: list[NameMatch]) -> list[NameMatch]:
    seen, out = set(), []
    for m in matches:
        key = tuple(sorted(e.tags for e in m.entities))
        if key not in seen:
            seen.add(key)
            out.append(m)
    return out
