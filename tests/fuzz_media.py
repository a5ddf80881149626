"""Structure-aware mutations of image files, shared by tests/test_fuzz_images.py (hypothesis, in CI) and
scripts/fuzz_images.py (atheris, for long local runs).

Every mutation is a plain tuple ("op", args...) applied by `apply`, so hypothesis can draw and shrink lists of them
and a failing example prints as a readable recipe. The file formats are parsed just far enough to mutate them by
part: JPEG segments (APP1/EXIF, DQT, SOF, SOS ...), PNG chunks, RIFF (WebP) chunks, ISO-BMFF (HEIC) boxes, TIFF IFD
entries; anything else gets byte-level mutations only. Nothing here knows about the engine.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterable, Sequence

from PIL import Image

# ----------------------------------------------------------------------------------------------------------------------
# Seeds: real photos plus the same pixels written in the other formats the app reads
# ----------------------------------------------------------------------------------------------------------------------

SEED_FORMATS = ("PNG", "WEBP", "TIFF", "TIFF_DEFLATE", "GIF", "HEIF")


def encode_variants(photo: Image.Image, side: int = 96) -> dict[str, bytes]:
    """One small file per format, from a real photo, each with an EXIF block where the format carries one."""
    small = photo.convert("RGB")
    small.thumbnail((side, side))
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x0132] = "2011:05:06 07:08:09"
    exif.get_ifd(0x8769)[0x9003] = "2010:01:02 03:04:05"
    out: dict[str, bytes] = {}
    for fmt in SEED_FORMATS:
        buf = io.BytesIO()
        try:
            if fmt == "GIF":
                small.convert("P", palette=Image.Palette.ADAPTIVE).save(buf, fmt)
            elif fmt == "TIFF_DEFLATE":  # compressed strips go through libtiff (which cannot also write this EXIF)
                small.save(buf, "TIFF", compression="tiff_deflate")
            else:
                small.save(buf, fmt, exif=exif.tobytes())
        except (KeyError, OSError, ValueError):  # a writer not available in this install (HEIF without pillow-heif)
            continue
        out[fmt] = buf.getvalue()
    return out


# ----------------------------------------------------------------------------------------------------------------------
# EXIF (a TIFF structure) built by hand, so it can be wrong in every way a broken camera or editor makes it wrong
# ----------------------------------------------------------------------------------------------------------------------

TIFF_TYPES = (1, 2, 3, 4, 5, 7, 9, 10, 11, 12)  # BYTE ASCII SHORT LONG RATIONAL UNDEFINED SLONG SRATIONAL FLOAT DOUBLE
BOGUS_TYPES = (0, 13, 255, 0xFFFF)
TYPE_SIZE = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 7: 1, 9: 4, 10: 8, 11: 4, 12: 8}
TAGS = {
    "orientation": 0x0112, "datetime": 0x0132, "exif_ifd": 0x8769, "gps_ifd": 0x8825, "interop": 0xA005,
    "date_original": 0x9003, "makernote": 0x927C, "gps_lat": 0x0002, "gps_lat_ref": 0x0001, "width": 0x0100,
    "height": 0x0101, "xres": 0x011A, "strip_offsets": 0x0111, "subifds": 0x014A, "thumb_offset": 0x0201,
    "thumb_length": 0x0202,
}
IFD_POINTERS = (0x8769, 0x8825, 0xA005, 0x014A)
BAD_DATES = ("0000:00:00 00:00:00", "9999:99:99 99:99:99", "2019:02:30 25:61:61", "", "    :  :     :  :  ",
             "2019-07-14T16:20:05Z", "1600:01:01 00:00:00", "２０１９:07:14 16:20:05", "2019:07:14\x0016:20:05",
             "x" * 300)
BAD_ORIENTATIONS = (0, 9, 255, 65535, -1, 2**31)
OFFSETS = ("zero", "self", "ifd0", "end", "past_end", "huge", "odd")


def _offset(kind: str, here: int, ifd0: int, total: int) -> int:
    return {"zero": 0, "self": here, "ifd0": ifd0, "end": total, "past_end": total + 1000, "huge": 0xFFFFFFF0,
            "odd": total // 2 + 1}[kind] & 0xFFFFFFFF


def build_tiff(entries: Sequence[tuple], next_ifd: str | None = None, little: bool = True,
               sub_entries: Sequence[tuple] = ()) -> bytes:
    """A TIFF/EXIF block: IFD0 with `entries`, optionally a sub-IFD (the EXIF IFD) with `sub_entries`.

    An entry is (tag, type, count, payload) where payload is bytes (stored inline or after the IFDs, where the
    offset says), an int (the raw 4-byte value/offset field, e.g. a wrong pointer) or an OFFSETS name.
    `next_ifd` is an OFFSETS name for IFD0's next-IFD pointer (a loop back to itself, past the end ...).
    """
    bo = "<" if little else ">"
    header = (b"II*\x00" if little else b"MM\x00*") + struct.pack(bo + "I", 8)
    ifd0 = 8
    ifd0_len = 2 + 12 * len(entries) + 4
    sub_at = ifd0 + ifd0_len
    sub_len = 2 + 12 * len(sub_entries) + 4 if sub_entries else 0
    data_at = sub_at + sub_len
    blobs = bytearray()

    def pack_ifd(items: Sequence[tuple], at: int, nxt: int) -> bytes:
        raw = bytearray(struct.pack(bo + "H", len(items) & 0xFFFF))
        for tag, typ, count, payload in items:
            raw += struct.pack(bo + "HHI", tag & 0xFFFF, typ & 0xFFFF, count & 0xFFFFFFFF)
            if isinstance(payload, bytes):
                if len(payload) <= 4:
                    raw += payload.ljust(4, b"\x00")
                else:
                    raw += struct.pack(bo + "I", data_at + len(blobs))
                    blobs.extend(payload)
                    if len(blobs) % 2:
                        blobs.append(0)
            elif isinstance(payload, int):
                raw += struct.pack(bo + "I", payload & 0xFFFFFFFF)
            elif payload == "sub":
                raw += struct.pack(bo + "I", sub_at if sub_entries else ifd0)
            else:
                raw += struct.pack(bo + "I", 0)  # placeholder, patched below
        raw += struct.pack(bo + "I", nxt & 0xFFFFFFFF)
        return bytes(raw)

    first = pack_ifd(entries, ifd0, 0)
    second = pack_ifd(sub_entries, sub_at, 0) if sub_entries else b""
    total = data_at + len(blobs)
    out = bytearray(header + first + second + bytes(blobs))
    # named offsets need the final size: patch them now
    for base, items in ((ifd0, entries), (sub_at, sub_entries)):
        for i, (_tag, _typ, _count, payload) in enumerate(items):
            if isinstance(payload, str) and payload in OFFSETS:
                struct.pack_into(bo + "I", out, base + 2 + 12 * i + 8, _offset(payload, base, ifd0, total))
    if next_ifd is not None:
        struct.pack_into(bo + "I", out, ifd0 + ifd0_len - 4, _offset(next_ifd, ifd0, ifd0, total))
    return bytes(out)


def value_bytes(typ: int, value: object, little: bool = True) -> bytes:
    """`value` encoded as TIFF type `typ` (one value; strings as ASCII with a NUL)."""
    bo = "<" if little else ">"
    if isinstance(value, str):
        return value.encode("utf-8", "replace") + b"\x00"
    if isinstance(value, bytes):
        return value
    n = int(value) if not isinstance(value, float) else value
    fmt = {1: "B", 3: "H", 4: "I", 9: "i", 11: "f", 12: "d"}.get(typ)
    if fmt is not None:
        try:
            return struct.pack(bo + fmt, n if fmt in "fd" else int(n) % (1 << (8 * struct.calcsize(fmt)))
                               if fmt in "BHI" else max(-(2**31), min(2**31 - 1, int(n))))
        except struct.error:
            return b"\xff" * struct.calcsize(fmt)
    if typ in (5, 10):
        return struct.pack(bo + ("II" if typ == 5 else "ii"), int(n) & 0x7FFFFFFF, 0)  # x/0: a division by zero
    return struct.pack(bo + "I", int(n) & 0xFFFFFFFF)


def exif_segment(tiff: bytes) -> bytes:
    """An APP1 payload: the Exif header and a TIFF block."""
    return b"Exif\x00\x00" + tiff


# ----------------------------------------------------------------------------------------------------------------------
# Container parsing: split a file into its parts and join them again
# ----------------------------------------------------------------------------------------------------------------------


def jpeg_segments(data: bytes) -> tuple[list[tuple[int, bytes]], bytes] | None:
    """[(marker, payload)] from SOI up to and including SOS's header, and the rest (scan data, EOI, trailers)."""
    if not data.startswith(b"\xff\xd8"):
        return None
    segs: list[tuple[int, bytes]] = []
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        payload = data[i + 4 : i + 2 + length]
        segs.append((marker, payload))
        i += 2 + length
        if marker == 0xDA:  # SOS: entropy-coded data follows
            return segs, data[i:]
    return None


def join_jpeg(segs: Iterable[tuple[int, bytes]], rest: bytes) -> bytes:
    out = bytearray(b"\xff\xd8")
    for marker, payload in segs:
        out += bytes([0xFF, marker]) + struct.pack(">H", min(len(payload) + 2, 0xFFFF)) + payload[:0xFFFD]
    return bytes(out + rest)


def png_chunks(data: bytes) -> list[list] | None:
    """[[type, data, crc]] of a PNG; the CRC as stored (so a mutation can keep it wrong or fix it)."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return None
    out, i = [], 8
    while i + 8 <= len(data):
        (length,) = struct.unpack(">I", data[i : i + 4])
        ctype = data[i + 4 : i + 8]
        body = data[i + 8 : i + 8 + length]
        crc = data[i + 8 + length : i + 12 + length]
        out.append([ctype, body, crc])
        i += 12 + length
    return out


def png_crc(ctype: bytes, body: bytes) -> bytes:
    return struct.pack(">I", zlib.crc32(ctype + body) & 0xFFFFFFFF)


def join_png(chunks: Iterable[list]) -> bytes:
    out = bytearray(b"\x89PNG\r\n\x1a\n")
    for ctype, body, crc in chunks:
        out += struct.pack(">I", len(body)) + ctype + body + crc
    return bytes(out)


def riff_chunks(data: bytes) -> list[list] | None:
    """[[fourcc, data]] of a RIFF file (WebP)."""
    if not (data.startswith(b"RIFF") and data[8:12] == b"WEBP"):
        return None
    out, i = [], 12
    while i + 8 <= len(data):
        fourcc = data[i : i + 4]
        (size,) = struct.unpack("<I", data[i + 4 : i + 8])
        out.append([fourcc, data[i + 8 : i + 8 + size]])
        i += 8 + size + (size & 1)
    return out


def join_riff(chunks: Iterable[list]) -> bytes:
    body = bytearray(b"WEBP")
    for fourcc, payload in chunks:
        body += fourcc + struct.pack("<I", len(payload)) + payload + (b"\x00" if len(payload) & 1 else b"")
    return b"RIFF" + struct.pack("<I", len(body)) + bytes(body)


def bmff_boxes(data: bytes) -> list[list] | None:
    """[[type, payload]] of the top-level ISO-BMFF boxes (HEIC: ftyp, meta, mdat)."""
    if data[4:8] != b"ftyp":
        return None
    out, i = [], 0
    while i + 8 <= len(data):
        (size,) = struct.unpack(">I", data[i : i + 4])
        if size < 8 or i + size > len(data):
            return None
        out.append([data[i + 4 : i + 8], data[i + 8 : i + size]])
        i += size
    return out


def join_bmff(boxes: Iterable[list]) -> bytes:
    return b"".join(struct.pack(">I", 8 + len(p)) + t + p for t, p in boxes)


def tiff_ifd0(data: bytes) -> tuple[str, int, int] | None:
    """(byte order, offset of IFD0, number of entries) of a TIFF file."""
    if data[:4] == b"II*\x00":
        bo = "<"
    elif data[:4] == b"MM\x00*":
        bo = ">"
    else:
        return None
    (off,) = struct.unpack(bo + "I", data[4:8])
    if off + 2 > len(data):
        return None
    (n,) = struct.unpack(bo + "H", data[off : off + 2])
    if off + 2 + 12 * n > len(data):
        return None
    return bo, off, n


# ----------------------------------------------------------------------------------------------------------------------
# Mutations
# ----------------------------------------------------------------------------------------------------------------------

BYTE_OPS = ("flip", "set", "truncate", "delete", "duplicate", "insert")
PART_OPS = ("part_delete", "part_duplicate", "part_swap", "part_garbage", "part_length")
FORMAT_OPS = ("exif", "app1_random", "dimensions", "tiff_entry")


def _pos(data: bytes | bytearray, frac: float) -> int:
    return min(len(data) - 1, max(0, int(frac * len(data)))) if data else 0


def _apply_bytes(data: bytearray, op: tuple) -> bytearray:
    kind = op[0]
    if not data:
        return data
    if kind == "flip":
        _, frac, bit = op
        data[_pos(data, frac)] ^= 1 << (bit % 8)
    elif kind == "set":
        _, frac, value = op
        data[_pos(data, frac)] = value & 0xFF
    elif kind == "truncate":
        _, frac = op
        del data[max(1, int(frac * len(data))) :]
    elif kind == "delete":
        _, frac, n = op
        p = _pos(data, frac)
        del data[p : p + n]
    elif kind == "duplicate":
        _, frac, n = op
        p = _pos(data, frac)
        data[p:p] = data[p : p + n]
    elif kind == "insert":
        _, frac, blob = op
        p = _pos(data, frac)
        data[p:p] = blob
    return data


def _parts(data: bytes):
    """(parts, join) for the container the data is in, or None: parts is a list of [id, payload, ...] lists."""
    segs = jpeg_segments(data)
    if segs is not None:
        parts, rest = segs
        return [list(p) for p in parts], lambda ps: join_jpeg([(m, p) for m, p in ps], rest)
    chunks = png_chunks(data)
    if chunks is not None:
        return chunks, join_png
    chunks = riff_chunks(data)
    if chunks is not None:
        return chunks, join_riff
    boxes = bmff_boxes(data)
    if boxes is not None:
        return boxes, join_bmff
    return None


def _apply_part(data: bytes, op: tuple) -> bytes:
    parsed = _parts(data)
    if parsed is None or not parsed[0]:
        return data
    parts, join = parsed
    kind, idx = op[0], op[1] % len(parts)
    if kind == "part_delete":
        del parts[idx]
    elif kind == "part_duplicate":
        parts.insert(idx, list(parts[idx]))
    elif kind == "part_swap":
        j = op[2] % len(parts)
        parts[idx], parts[j] = parts[j], parts[idx]
    elif kind == "part_garbage":
        parts[idx][1] = op[2]
        if len(parts[idx]) == 3 and op[3]:  # PNG: a right CRC over the garbage, so the parser reads it
            parts[idx][2] = png_crc(parts[idx][0], parts[idx][1])
    elif kind == "part_length":
        # a wrong length field: rebuild, then overwrite that part's length with a lie
        out = bytearray(join(parts))
        if out.startswith(b"\xff\xd8"):
            start = 2 + sum(4 + len(p[1]) for p in parts[:idx])
            struct.pack_into(">H", out, start + 2, op[2] & 0xFFFF)
        elif out.startswith(b"\x89PNG"):
            start = 8 + sum(12 + len(p[1]) for p in parts[:idx])
            struct.pack_into(">I", out, start, op[2] & 0xFFFFFFFF)
        elif out.startswith(b"RIFF"):
            start = 12 + sum(8 + len(p[1]) + (len(p[1]) & 1) for p in parts[:idx])
            struct.pack_into("<I", out, start + 4, op[2] & 0xFFFFFFFF)
        else:
            start = sum(8 + len(p[1]) for p in parts[:idx])
            struct.pack_into(">I", out, start, op[2] & 0xFFFFFFFF)
        return bytes(out)
    return join(parts)


def _with_exif(data: bytes, tiff_block: bytes) -> bytes:
    """Replace (or add) the file's EXIF with `tiff_block`, in the container's own way."""
    segs = jpeg_segments(data)
    if segs is not None:
        parts, rest = segs
        parts = [p for p in parts if not (p[0] == 0xE1 and p[1].startswith(b"Exif"))]
        return join_jpeg([(0xE1, exif_segment(tiff_block))] + parts, rest)
    chunks = png_chunks(data)
    if chunks is not None:
        chunks = [c for c in chunks if c[0] != b"eXIf"]
        chunks.insert(1, [b"eXIf", tiff_block, png_crc(b"eXIf", tiff_block)])
        return join_png(chunks)
    chunks = riff_chunks(data)
    if chunks is not None:
        chunks = [c for c in chunks if c[0] != b"EXIF"] + [[b"EXIF", tiff_block]]
        return join_riff(chunks)
    return data


def _with_dimensions(data: bytes, width: int, height: int) -> bytes:
    """Claim another size in the header (a decompression bomb when large), keeping the rest."""
    segs = jpeg_segments(data)
    if segs is not None:
        parts, rest = segs
        out = []
        for marker, payload in parts:
            if marker in (0xC0, 0xC1, 0xC2) and len(payload) >= 5:
                payload = payload[:1] + struct.pack(">HH", height & 0xFFFF, width & 0xFFFF) + payload[5:]
            out.append((marker, payload))
        return join_jpeg(out, rest)
    chunks = png_chunks(data)
    if chunks is not None and chunks and chunks[0][0] == b"IHDR" and len(chunks[0][1]) >= 8:
        body = struct.pack(">II", width & 0xFFFFFFFF, height & 0xFFFFFFFF) + chunks[0][1][8:]
        chunks[0] = [b"IHDR", body, png_crc(b"IHDR", body)]
        return join_png(chunks)
    if data.startswith(b"GIF8") and len(data) >= 10:
        return data[:6] + struct.pack("<HH", width & 0xFFFF, height & 0xFFFF) + data[10:]
    info = tiff_ifd0(data)
    if info is not None:
        out = bytearray(data)
        bo, off, n = info
        for i in range(n):
            at = off + 2 + 12 * i
            tag, _typ, _count = struct.unpack(bo + "HHI", out[at : at + 8])
            if tag in (0x0100, 0x0101):
                struct.pack_into(bo + "HHI", out, at, tag, 4, 1)
                struct.pack_into(bo + "I", out, at + 8, (width if tag == 0x0100 else height) & 0xFFFFFFFF)
        return bytes(out)
    chunks = riff_chunks(data)
    if chunks is not None:
        for c in chunks:
            if c[0] == b"VP8X" and len(c[1]) >= 10:
                w, h = max(0, width - 1) & 0xFFFFFF, max(0, height - 1) & 0xFFFFFF
                c[1] = c[1][:4] + w.to_bytes(3, "little") + h.to_bytes(3, "little") + c[1][10:]
        return join_riff(chunks)
    return data


def _tiff_entry(data: bytes, op: tuple) -> bytes:
    """Rewrite one IFD0 entry of a TIFF file: its type, count or value/offset field."""
    info = tiff_ifd0(data)
    if info is None or info[2] == 0:
        return data
    bo, off, n = info
    _, idx, field, value = op
    at = off + 2 + 12 * (idx % n)
    out = bytearray(data)
    if field == "type":
        struct.pack_into(bo + "H", out, at + 2, value & 0xFFFF)
    elif field == "count":
        struct.pack_into(bo + "I", out, at + 4, value & 0xFFFFFFFF)
    else:
        struct.pack_into(bo + "I", out, at + 8, value & 0xFFFFFFFF)
    return bytes(out)


def apply(data: bytes, ops: Iterable[tuple]) -> bytes:
    """The file after each mutation in turn. Unknown or inapplicable operations leave it as it is."""
    for op in ops:
        kind = op[0]
        if kind in BYTE_OPS:
            data = bytes(_apply_bytes(bytearray(data), op))
        elif kind in PART_OPS:
            data = _apply_part(data, op)
        elif kind == "exif":
            data = _with_exif(data, op[1])
        elif kind == "app1_random":
            segs = jpeg_segments(data)
            if segs is not None:
                parts, rest = segs
                data = join_jpeg([(0xE1, op[1])] + list(parts), rest)
            else:
                data = _with_exif(data, op[1])
        elif kind == "dimensions":
            data = _with_dimensions(data, op[1], op[2])
        elif kind == "tiff_entry":
            data = _tiff_entry(data, op)
    return data
