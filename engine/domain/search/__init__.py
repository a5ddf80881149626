"""Search: one document per photo in SQLite FTS5, CLIP looks, and a query parser that knows your names.

Modules, one concern each: `text` (words, quoting), `dates`, `places` (offline reverse geocoding),
`documents` (building and refreshing the per-photo documents), `query` (the parser), `visual` (CLIP similarity
and its floor), `searcher` (fusion, the floor, "why").
"""

from engine.domain.search.documents import refresh
from engine.domain.search.query import ParsedQuery, parse
from engine.domain.search.searcher import Searcher, SearchResponse, SearchResult
from engine.domain.search.visual import CLIP_FLOORS, choose_floor

__all__ = ["CLIP_FLOORS", "ParsedQuery", "SearchResponse", "SearchResult", "Searcher", "choose_floor", "parse",
           "refresh"]
