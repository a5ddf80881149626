"""Words: splitting, folding, the little English the parser needs, and FTS5 quoting.

Typed text never reaches FTS5 as syntax: every term goes in as a double-quoted string (quotes doubled), so
`"`, `*`, `AND`, `NEAR(`, `-` and the like are just characters.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*", re.UNICODE)  # letters/digits, inner apostrophes kept ("o'brien")
POSSESSIVE = re.compile(r"['’]s?$", re.IGNORECASE)
CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])|(?<=[A-Za-z])(?=\d)|(?<=\d)(?=[A-Za-z])")

# Words that carry no meaning for search ("photos of Alex at the beach" -> Alex, beach).
_STOPWORDS = """
a an the and or but nor of at in on to into onto from by for with without about over under near as is are was were
be been being am do does did doing have has had this that these those there here it its it's i me my mine we us our
you your he him his she her they them their what which who whom whose where when why how all any some every each
photo photos picture pictures pic pics image images shot shots show find search me please just also only very than
then so not no yes while during before after
"""
STOPWORDS = frozenset(_STOPWORDS.split())

# Common English words that are also names: such a name counts only when capitalised or given as a filter.
_COMMON_WORDS = """
rose will grace hope joy faith may june april august mark bill pat sue rob art dawn summer autumn winter spring amber
ruby pearl iris lily daisy violet olive jasmine holly ivy hazel sky rain storm brook river sandy frank max sunny honey
angel buddy bear pepper ginger lucky rocky star penny chase hunter wade drew miles gene ray don guy cliff dean earl
glen heath jay crystal destiny harmony melody mercy patience charity honor honour justice liberty sage willow fern
heather poppy rosemary clay stone forest dale bud chip dash duke king prince princess lady queen major baby kitty
bunny cookie biscuit muffin peanut pickle shadow smokey snowball socks tiger misty teddy nick rich grant lance carol
christian page bishop mason cook baker porter fisher miller reed rod sterling cash free gay lee marsh norm pip rusty
scout wolf young
"""
COMMON_WORDS = frozenset(_COMMON_WORDS.split())

CAMERA_PREFIXES = frozenset({"img", "dsc", "dscn", "dscf", "dcim", "pxl", "mvimg", "vid", "imag", "pano", "burst",
                             "screenshot", "jpg", "jpeg", "heic"})


def fold(text: str) -> str:
    """Case- and accent-insensitive form used to compare names ("Zoë" == "zoe")."""
    decomposed = unicodedata.normalize("NFKD", text.casefold().replace("’", "'"))
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def strip_possessive(word: str) -> str:
    """"Alex's" -> "Alex", "James'" -> "James"."""
    stripped = POSSESSIVE.sub("", word)
    return stripped or word


@dataclass(frozen=True)
class Token:
    text: str  # as typed, possessive removed
    start: int
    end: int

    @property
    def key(self) -> str:
        return fold(self.text)

    @property
    def capitalised(self) -> bool:
        return self.text[:1].isupper()


def tokens(text: str) -> list[Token]:
    return [Token(strip_possessive(m.group(0)), m.start(), m.end()) for m in WORD.finditer(text)]


def path_words(text: str) -> list[str]:
    """Words of a folder or file name, as typed and split at case changes: "CategoryImages/grand_canyon_1" ->
    CategoryImages Category Images grand canyon (frame numbers and camera prefixes such as IMG dropped)."""
    out = []
    for m in WORD.finditer(text):
        parts = CAMEL.split(m.group(0))
        for part in [m.group(0)] + parts if len(parts) > 1 else parts:
            if part.lower() in CAMERA_PREFIXES:
                continue
            if part.isdigit() and not (len(part) == 4 and part[:2] in ("19", "20")):
                continue  # frame numbers, not years
            if len(part) >= 2 or not part.isascii():
                out.append(part)
    return out


def fts_quote(term: str) -> str:
    """One FTS5 string literal: whatever the term holds, it is matched as text."""
    return '"' + term.replace('"', '""') + '"'


def searchable(term: str) -> bool:
    """Would the FTS5 tokenizer see anything in it? (A term of symbols only would be an empty phrase.)"""
    return any(ch.isalnum() for ch in term)


def clean(text: str, max_chars: int) -> tuple[str, bool]:
    """Typed text made safe to handle: NULs, lone surrogates and control characters gone, length capped."""
    text = text.encode("utf-8", "replace").decode("utf-8")
    text = "".join(ch if ch.isprintable() or ch in " \t" else " " for ch in text)
    cut = len(text) > max_chars
    return text[:max_chars], cut
