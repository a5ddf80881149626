"""Dates as words (for the document: "2005 july summer") and as ranges (for `before:`, `after:`, `in:`)."""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import date, datetime

MONTHS = [calendar.month_name[i].lower() for i in range(1, 13)]
_SEASONS_NORTH = {12: "winter", 1: "winter", 2: "winter", 3: "spring", 4: "spring", 5: "spring", 6: "summer",
                  7: "summer", 8: "summer", 9: "autumn", 10: "autumn", 11: "autumn"}
_FLIP = {"winter": "summer", "summer": "winter", "spring": "autumn", "autumn": "spring"}
_PERIOD = re.compile(r"(\d{4})(?:[-/.](\d{1,2}))?(?:[-/.](\d{1,2}))?")
YEAR = re.compile(r"(?:19|20)\d\d")


def parse_taken(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def date_words(value: str | None, latitude: float | None = None) -> str:
    """Words a person might type for when a photo was taken; seasons flip south of the equator."""
    taken = parse_taken(value)
    if taken is None:
        return ""
    season = _SEASONS_NORTH[taken.month]
    if latitude is not None and latitude < 0:
        season = _FLIP[season]
    extra = " fall" if season == "autumn" else ""
    return f"{taken.year} {MONTHS[taken.month - 1]} {season}{extra}"


@dataclass(frozen=True)
class Period:
    """A half-open range of ISO timestamps [start, end), compared as text like photos.date_taken."""

    start: str
    end: str
    label: str


def period(text: str) -> Period | None:
    """"2019" / "2019-07" / "2019-07-14" -> the period it names; None when it names no date."""
    m = _PERIOD.fullmatch(text.strip())
    if not m:
        return None
    year, month, day = int(m.group(1)), m.group(2), m.group(3)
    try:
        if day:
            start = date(year, int(month), int(day))
            end = date.fromordinal(start.toordinal() + 1)
        elif month:
            start = date(year, int(month), 1)
            end = date(year + (int(month) == 12), int(month) % 12 + 1, 1)
        else:
            start, end = date(year, 1, 1), date(year + 1, 1, 1)
    except ValueError:
        return None
    return Period(start.isoformat(), end.isoformat(), m.group(0))
