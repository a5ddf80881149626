"""Where a photo was taken: EXIF GPS, named offline by the `reverse-geocode` package (GeoNames cities ≥ 1000 people).

Nothing leaves the machine. A town is named only when it is near (a lone lighthouse 80 km from anywhere gets its
region and country, the open sea gets nothing), so search never claims a wrong place.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass

from PIL import Image

log = logging.getLogger(__name__)

GPS_IFD = 0x8825
CITY_KM = 30.0
REGION_KM = 150.0

_lock = threading.Lock()


@dataclass(frozen=True)
class Place:
    latitude: float
    longitude: float
    name: str  # "Skagen, North Denmark, Denmark"; "" where nothing is near


def _ratio(value: object) -> float:
    if isinstance(value, tuple) and len(value) == 2:  # old-style (numerator, denominator)
        return float(value[0]) / float(value[1]) if value[1] else float("nan")
    return float(value)  # PIL's IFDRational


def read_gps(path: str) -> tuple[float, float] | None:
    """(latitude, longitude) in degrees from a file's EXIF, or None (no GPS, unreadable, nonsense)."""
    try:
        with Image.open(path) as img:
            gps = img.getexif().get_ifd(GPS_IFD)
        if not gps or 2 not in gps or 4 not in gps:
            return None
        lat = sum(_ratio(v) / 60 ** i for i, v in enumerate(gps[2]))
        lon = sum(_ratio(v) / 60 ** i for i, v in enumerate(gps[4]))
        if str(gps.get(1, "N")).upper().startswith("S"):
            lat = -lat
        if str(gps.get(3, "E")).upper().startswith("W"):
            lon = -lon
    except Exception:  # noqa: BLE001 - broken EXIF never breaks indexing
        return None
    if not (math.isfinite(lat) and math.isfinite(lon) and -90 <= lat <= 90 and -180 <= lon <= 180):
        return None
    if lat == 0 and lon == 0:  # "null island": cameras write it when they had no fix
        return None
    return lat, lon


def _km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 6371.0 * 2 * math.asin(min(1.0, math.sqrt(a)))


def name_places(coords: list[tuple[float, float]]) -> list[str]:
    """Place names for many coordinates at once (the GeoNames table loads once, lazily: about half a second)."""
    if not coords:
        return []
    import reverse_geocode

    with _lock:  # the package builds its k-d tree on first use
        found = reverse_geocode.search(coords)
    out = []
    for (lat, lon), hit in zip(coords, found):
        km = _km(lat, lon, hit["latitude"], hit["longitude"])
        parts = []
        if km <= CITY_KM:
            parts.append(hit.get("city"))
        if km <= REGION_KM:
            parts += [hit.get("county"), hit.get("state"), hit.get("country")]
        out.append(", ".join(dict.fromkeys(p for p in parts if p)))
    return out
