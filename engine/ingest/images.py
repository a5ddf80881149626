"""Reading photos: which files are photos, and one careful decode of each into displayable RGB pixels.

Every failure becomes a `PhotoReadError` whose message a user can act on; nothing here writes to the album.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError, features

from engine.errors import UserError

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

# Decompression bombs: a few kilobytes that claim billions of pixels. A sequential JPEG is decoded at reduced scale
# (memory follows the preview), so it may be as large as any camera or stitched panorama we expect; every other
# format, and progressive JPEG, is decoded at full size (about 4-8 bytes per pixel at the peak), so its limit is
# lower, though still above 100-megapixel medium-format cameras.
MAX_PIXELS = 300_000_000
MAX_FULL_DECODE_PIXELS = 120_000_000
# Pillow's own guard (a warning from MAX_IMAGE_PIXELS, an error from twice that) would refuse what the limits above
# allow; `decode` checks them itself from the header, before any pixel is decoded.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS

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


class PhotoReadError(UserError):
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


def _load_pixels(img: Image.Image) -> None:
    """Decode the pixels; every decoder failure as a PhotoReadError (Pillow leaves a half-decoded image behind, so
    an error swallowed here would index a photo that is partly black)."""
    try:
        img.load()
    except OSError as exc:
        msg = str(exc)
        if "truncated" in msg:
            raise PhotoReadError("truncated file: the image data ends early (incomplete copy or download?)") from exc
        raise PhotoReadError(f"corrupt image data: {msg}") from exc
    except Exception as exc:  # noqa: BLE001
        raise PhotoReadError(f"corrupt image data: {type(exc).__name__}: {exc}") from exc


def _exif_needs_pixels(img: Image.Image) -> bool:
    """Pillow reads a PNG's eXIf chunk, which may follow the image data, by decoding the pixels first."""
    return img.format == "PNG" and "exif" not in img.info


def _header_info(img: Image.Image) -> tuple[int, datetime | None]:
    """EXIF orientation (1..8) and date taken; broken EXIF never loses the photo, broken pixels always do.

    Where reading the EXIF decodes the pixels, they are decoded first, outside the EXIF's forgiving `try`.
    """
    if _exif_needs_pixels(img):
        _load_pixels(img)
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
    """(displayed width, displayed height, orientation, format, date taken) from the header, without decoding the
    pixels where the format allows (a PNG whose EXIF may follow its pixels is decoded, and a decode error raised).

    Raises PhotoReadError (like `decode`) for a file that is missing, unreadable or not an image.
    """
    with _open_file(path) as fh:
        img = _open_image(fh)
        with img:
            w, h = img.size
            if w <= 0 or h <= 0:
                raise PhotoReadError("image has no pixels")
            orientation, date_taken = _header_info(img)
            fmt = img.format or "unknown"
    return (h, w, orientation, fmt, date_taken) if orientation >= 5 else (w, h, orientation, fmt, date_taken)


# Modes in which resampling averages meaningful values: shrunk in their own mode, before any conversion, so a large
# image is held at full size only once (decoded) instead of three or four times (converted, composited, shrunk).
_SHRINK_FIRST = {"RGB", "RGBA", "RGBa", "L", "LA", "La", "CMYK", "YCbCr"}
_DEEP = {"I;16", "I;16L", "I;16B", "I;16N", "I", "F"}


def _grey8(img: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit integer or float image as 8-bit grey: scaled to its range (16-bit: 0..65535; others: 0..255,
    or 0..max when brighter), not clipped; NaN as black. Row blocks keep the float copy small."""
    arr = np.asarray(img)
    hi = 65535.0
    if not img.mode.startswith("I;16"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN float image
            top = float(np.nanmax(arr)) if arr.size else 0.0
        hi = top if math.isfinite(top) and top > 255 else 255.0
    out = np.empty(arr.shape[:2], np.uint8)
    rows = max(1, (1 << 20) // max(1, arr.shape[1]))
    for y in range(0, arr.shape[0], rows):
        block = np.nan_to_num(arr[y : y + rows].astype(np.float32), nan=0.0, posinf=hi, neginf=0.0)
        np.clip(block * np.float32(255.0 / hi) + np.float32(0.5), 0, 255, out=block)
        out[y : y + rows] = block
    return Image.fromarray(out, "L")


def _to_rgb(img: Image.Image, max_side: int) -> Image.Image:
    """Any Pillow mode to 8-bit RGB, at most `max_side` on its long side: 16-bit scaled (not clipped), alpha and
    palette transparency over white."""
    mode = img.mode
    if mode in _DEEP:
        img = _grey8(img)
    elif mode == "1":
        img = img.convert("L")  # one byte per pixel; shrunk in grey, not by dropping pixels
    elif mode in ("P", "PA"):
        img = img.convert("RGBA" if mode == "PA" or "transparency" in img.info else "RGB")
    elif mode not in _SHRINK_FIRST:
        img = img.convert("RGB")  # LAB, HSV ...: converted before they are resampled
    if max(img.size) > max_side:
        img.thumbnail((max_side, max_side), Image.Resampling.BICUBIC, reducing_gap=2.0)
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _open_file(path: str) -> BinaryIO:
    """The file opened for reading; every OS failure as a PhotoReadError."""
    try:
        size = os.stat(path).st_size
        if size == 0:
            raise PhotoReadError("empty file (0 bytes)")
        return open(path, "rb")  # the caller closes it
    except FileNotFoundError as exc:
        raise PhotoReadError("file vanished before it could be read", vanished=True) from exc
    except PermissionError as exc:
        raise PhotoReadError(f"permission denied: cannot read the file ({exc.strerror})") from exc
    except IsADirectoryError as exc:
        raise PhotoReadError("not a file") from exc
    except OSError as exc:
        raise PhotoReadError(f"cannot open the file: {exc.strerror or exc}") from exc


def _open_image(fh: BinaryIO) -> Image.Image:
    """Pillow's reading of the header (no pixels yet), its failures as PhotoReadErrors."""
    try:
        with warnings.catch_warnings():
            # Pillow's own guard warns from MAX_IMAGE_PIXELS on and refuses from twice that; `decode` applies the
            # stricter per-format limits itself, right after this, before any pixel is decoded.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(fh)
            img.seek(0)  # GIF/APNG/multi-page TIFF: the first frame
    except UnidentifiedImageError as exc:
        raise PhotoReadError("not an image, or an image format that cannot be read") from exc
    except Image.DecompressionBombError as exc:
        raise PhotoReadError(f"image too large to decode safely: {exc}") from exc
    except OSError as exc:
        if "truncated" in str(exc).lower():
            raise PhotoReadError("truncated file: the image data ends early (incomplete copy or download?)") from exc
        raise PhotoReadError(f"unreadable image header: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - plugin bugs must not take the run down
        raise PhotoReadError(f"unreadable image header: {type(exc).__name__}: {exc}") from exc
    return img


def decode(path: str, max_side: int = 1440, max_pixels: int = MAX_PIXELS) -> DecodedPhoto:
    """Decode a photo once, as small as `max_side` allows (JPEG draft mode), upright and in RGB.

    Size limits, checked from the header before any pixel is decoded: a sequential JPEG (decoded by libjpeg at 1/2,
    1/4 or 1/8 scale, so its memory follows the preview's size) may have up to `max_pixels`; anything decoded at
    full size (PNG, TIFF, WebP, HEIC, GIF, progressive JPEG, whose decoder holds the whole image) up to
    MAX_FULL_DECODE_PIXELS. Every failure is a PhotoReadError.
    """
    with _open_file(path) as fh:
        img = _open_image(fh)
        raw_w, raw_h = img.size
        if raw_w <= 0 or raw_h <= 0:
            raise PhotoReadError("image has no pixels")
        fmt = img.format or "unknown"
        reduced = fmt == "JPEG" and not img.info.get("progressive")  # libjpeg scales it while decoding
        limit = max_pixels if reduced else min(max_pixels, MAX_FULL_DECODE_PIXELS)
        if raw_w * raw_h > limit:
            kind = "progressive JPEG" if fmt == "JPEG" and not reduced else fmt
            raise PhotoReadError(
                f"image too large to decode safely: {raw_w}×{raw_h} = {raw_w * raw_h / 1e6:.0f} megapixels "
                f"(limit {limit / 1e6:.0f} for {kind} images)"
            )
        # From the header as `probe` reads it (a TIFF's tags read after decoding can differ); where reading the EXIF
        # decodes the pixels (PNG), `_header_info` decodes them first and raises their errors.
        orientation, date_taken = _header_info(img)

        scale = min(1.0, max_side / max(raw_w, raw_h))
        if fmt == "JPEG" and scale < 1.0:
            # Let libjpeg decode at 1/2, 1/4 or 1/8 scale, never below what the preview needs.
            img.draft("RGB", (math.ceil(raw_w * scale), math.ceil(raw_h * scale)))
        _load_pixels(img)

        try:
            rgb = _to_rgb(img, max_side)
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
