"""Reading photos: which files are photos, and one careful decode of each into displayable RGB pixels.

Every failure becomes a `PhotoReadError` whose message a user can act on; nothing here writes to the album.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError, features

# HEIC/HEIF through pillow-heif when it is installed; AVIF is native in Pillow >= 11.3 or comes from a plugin.
try:  # pragma: no cover - depends on the install
    import pillow_heif

    pillow_heif.register_heif_opener()
    HEIF_SUPPORTED = True
except Exception:  # noqa: BLE001 - any failure means "no HEIF here"
    HEIF_SUPPORTED = False

try:
    AVIF_SUPPORTED = bool(features.check("avif"))
except Exception:  # noqa: BLE001
    AVIF_SUPPORTED = False
if not AVIF_SUPPORTED:  # pragma: no cover - depends on the install
    try:
        import pillow_avif  # noqa: F401

        AVIF_SUPPORTED = True
    except Exception:  # noqa: BLE001
        pass

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated photo is an error the user should see, not a grey half-image

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".tif", ".tiff", ".bmp", ".dib", ".gif"}
if HEIF_SUPPORTED:
    IMAGE_EXTENSIONS |= {".heic", ".heif", ".hif"}
if AVIF_SUPPORTED:
    IMAGE_EXTENSIONS |= {".avif"}
VIDEO_EXTENSIONS = {
    ".mp4", ".mov", ".m4v", ".avi", ".mkv", ".webm", ".3gp", ".mts", ".m2ts", ".wmv", ".mpg", ".mpeg", ".flv",
}
RAW_EXTENSIONS = {
    ".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".dng", ".orf", ".rw2", ".raf", ".srw", ".pef",
    ".raw", ".x3f", ".3fr", ".erf", ".kdc", ".mrw", ".rwl", ".iiq", ".mef", ".mos",
}
UNSUPPORTED_REASON = {
    "video": "video files are listed but not processed (photos only for now)",
    "raw": "RAW files are listed but not processed; keep a JPEG/HEIC copy beside them to include them",
    "heic": "HEIC/HEIF needs the pillow-heif package, which is not installed",
    "avif": "AVIF needs Pillow with AVIF support or the pillow-avif-plugin package",
}

MAX_PIXELS = 300_000_000  # larger than any camera or stitched panorama we expect; beyond it, a decompression bomb

# EXIF orientation -> the transpose that shows the photo upright.
_ORIENT_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def classify(name: str | bytes) -> tuple[str | None, str | None]:
    """(kind, unsupported_reason) from a file name: kind is image/video/raw, or None for files we ignore."""
    if isinstance(name, bytes):  # the scanner's hot path: no full decode of every name
        dot = name.rfind(b".")
        ext = name[dot:].lower().decode("ascii", "replace") if dot > 0 else ""
    else:
        ext = os.path.splitext(name)[1].lower()
    if ext in IMAGE_EXTENSIONS:
        return "image", None
    if ext in VIDEO_EXTENSIONS:
        return "video", UNSUPPORTED_REASON["video"]
    if ext in RAW_EXTENSIONS:
        return "raw", UNSUPPORTED_REASON["raw"]
    if ext in {".heic", ".heif", ".hif"}:
        return "other", UNSUPPORTED_REASON["heic"]
    if ext == ".avif":
        return "other", UNSUPPORTED_REASON["avif"]
    return None, None


class PhotoReadError(Exception):
    """A per-file problem, with a message meant for the user (shown in `status`, `photos` and the GUI)."""

    def __init__(self, message: str, *, vanished: bool = False):
        super().__init__(message)
        self.vanished = vanished


@dataclass
class DecodedPhoto:
    image: Image.Image  # RGB, upright (EXIF orientation applied), at most `max_side` on its long side
    width: int  # displayed full-resolution size (after EXIF orientation)
    height: int
    orientation: int
    format: str
    date_taken: datetime | None


def _parse_exif_date(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    value = value.strip().rstrip("\x00")
    for fmt, length in (("%Y:%m:%d %H:%M:%S", 19), ("%Y-%m-%d %H:%M:%S", 19), ("%Y:%m:%d", 10)):
        try:
            dt = datetime.strptime(value[:length], fmt)
        except ValueError:
            continue
        if 1800 < dt.year < 2200:
            return dt
    return None


def _header_info(img: Image.Image) -> tuple[int, datetime | None]:
    """EXIF orientation (1..8) and date taken; broken EXIF never loses the photo."""
    try:
        exif = img.getexif()
    except Exception:  # noqa: BLE001
        return 1, None
    orientation = exif.get(0x0112, 1)
    if not isinstance(orientation, int) or orientation not in range(1, 9):
        orientation = 1
    try:
        date_taken = _parse_exif_date(exif.get_ifd(0x8769).get(0x9003))  # DateTimeOriginal
    except Exception:  # noqa: BLE001
        date_taken = None
    return orientation, date_taken or _parse_exif_date(exif.get(0x0132))  # else DateTime


def probe(path: str) -> tuple[int, int, int, str, datetime | None]:
    """(displayed width, displayed height, orientation, format, date taken) from the header alone, no decode."""
    with Image.open(path) as img:
        w, h = img.size
        orientation, date_taken = _header_info(img)
        fmt = img.format or "unknown"
    return (h, w, orientation, fmt, date_taken) if orientation >= 5 else (w, h, orientation, fmt, date_taken)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB: 16-bit scaled (not clipped), alpha and palette transparency over white."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if mode.startswith("I;16") else max(float(arr.max()), 1.0)
        if mode in ("I", "F") and arr.max() <= 255:
            hi = 255.0
        arr8 = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, "L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def decode(path: str, max_side: int = 1440, max_pixels: int = MAX_PIXELS) -> DecodedPhoto:
    """Decode a photo once, as small as `max_side` allows (JPEG draft mode), upright and in RGB."""
    try:
        size = os.stat(path).st_size
        if size == 0:
            raise PhotoReadError("empty file (0 bytes)")
        fh = open(path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError as exc:
        raise PhotoReadError("file vanished before it could be read", vanished=True) from exc
    except PermissionError as exc:
        raise PhotoReadError(f"permission denied: cannot read the file ({exc.strerror})") from exc
    except IsADirectoryError as exc:
        raise PhotoReadError("not a file") from exc
    except OSError as exc:
        raise PhotoReadError(f"cannot open the file: {exc.strerror or exc}") from exc
    with fh:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = Image.open(fh)
                img.seek(0)  # GIF/APNG/multi-page TIFF: the first frame
        except UnidentifiedImageError as exc:
            raise PhotoReadError("not an image, or an image format that cannot be read") from exc
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise PhotoReadError(f"image too large to decode safely: {exc}") from exc
        except OSError as exc:
            if "truncated" in str(exc).lower():
                raise PhotoReadError("truncated file: the image data ends early (incomplete copy or download?)") from exc
            raise PhotoReadError(f"unreadable image header: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - plugin bugs must not take the run down
            raise PhotoReadError(f"unreadable image header: {type(exc).__name__}: {exc}") from exc

        raw_w, raw_h = img.size
        if raw_w <= 0 or raw_h <= 0:
            raise PhotoReadError("image has no pixels")
        if raw_w * raw_h > max_pixels:
            raise PhotoReadError(
                f"image too large to decode safely: {raw_w}×{raw_h} = {raw_w * raw_h / 1e6:.0f} megapixels "
                f"(limit {max_pixels / 1e6:.0f})"
            )
        fmt = img.format or "unknown"
        orientation, date_taken = _header_info(img)

        scale = min(1.0, max_side / max(raw_w, raw_h))
        if fmt == "JPEG" and scale < 1.0:
            # Let libjpeg decode at 1/2, 1/4 or 1/8 scale, never below what the preview needs.
            img.draft("RGB", (math.ceil(raw_w * scale), math.ceil(raw_h * scale)))
        try:
            img.load()
        except OSError as exc:
            msg = str(exc)
            if "truncated" in msg:
                raise PhotoReadError("truncated file: the image data ends early (incomplete copy or download?)") from exc
            raise PhotoReadError(f"corrupt image data: {msg}") from exc
        except Exception as exc:  # noqa: BLE001
            raise PhotoReadError(f"corrupt image data: {type(exc).__name__}: {exc}") from exc

        try:
            rgb = _to_rgb(img)
            if max(rgb.size) > max_side:
                rgb.thumbnail((max_side, max_side), Image.Resampling.BICUBIC, reducing_gap=2.0)
            transpose = _ORIENT_TRANSPOSE.get(orientation)
            if transpose is not None:
                rgb = rgb.transpose(transpose)
        except Exception as exc:  # noqa: BLE001
            raise PhotoReadError(f"cannot convert the image: {type(exc).__name__}: {exc}") from exc

    width, height = (raw_h, raw_w) if orientation >= 5 else (raw_w, raw_h)
    return DecodedPhoto(rgb, width, height, orientation, fmt, date_taken)


def apply_user_rotation(img: Image.Image, degrees: int) -> Image.Image:
    """The user's rotation (clockwise) on top of the upright image; files are never rewritten."""
    degrees %= 360
    if degrees == 0:
        return img
    return img.rotate(-degrees, expand=True)
