"""Hostile inputs for robustness tests and fuzzing: images that lie about their size,
truncated files, and bodies built to exhaust a parser.

Everything is generated (nothing binary is stored in the repository) and small: a
"decompression bomb" here is a few hundred bytes whose header declares billions of pixels.
The property tests (``tests/fuzz``) and the atheris seed corpora (``fuzz/seeds.py``) share
these builders.

Example::

    from clipserve.testing.hostile import png_declaring, truncations

    bomb = png_declaring(30_000, 30_000)  # 800 bytes, 900 million pixels declared
    cut = truncations(small_image("JPEG"))  # the same JPEG cut at several points
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator

import numpy as np
from PIL import Image

#: Formats :func:`small_image` encodes; each is one Pillow decodes and clipserve accepts.
FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")


def small_image(fmt: str, width: int = 24, height: int = 16, seed: int = 0) -> bytes:
    """A small noisy RGB image encoded as ``fmt`` (one of :data:`FORMATS`), a few KB at most."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    if fmt == "GIF":
        image = image.quantize(colors=16)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def png_declaring(width: int, height: int, *, idat: bytes | None = None) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` 8-bit RGB pixels.

    The pixel data is one short zlib stream (``idat``, default a few zero rows), so the file
    stays tiny whatever it claims: decoding it would allocate the declared size and then
    find the data truncated. Chunk CRCs are correct, so only the size is a lie.
    """
    if idat is None:
        idat = zlib.compress(bytes(64))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", idat)
        + _chunk(b"IEND", b"")
    )


def tall_png(height: int, width: int = 1) -> bytes:
    """A *valid* ``width`` x ``height`` RGB PNG (a grey ramp down the rows), a few KB.

    Very elongated images are legitimate and within the pixel limit; their preprocessing
    must not materialise the reference's huge intermediate resize.
    """
    rows = np.zeros((height, 1 + 3 * width), dtype=np.uint8)  # filter byte 0: none
    rows[:, 1:] = (np.arange(height, dtype=np.int64) * 37 % 256).astype(np.uint8)[:, None]
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(rows.tobytes(), 9))
        + _chunk(b"IEND", b"")
    )


def gif_declaring(width: int, height: int) -> bytes:
    """A small GIF whose logical screen and frame declare ``width`` x ``height`` (<= 65535)."""
    data = bytearray(small_image("GIF"))
    struct.pack_into("<HH", data, 6, width, height)  # logical screen descriptor
    frame = data.find(b"\x2c")  # image descriptor: separator, left, top, width, height
    if frame > 0:
        struct.pack_into("<HH", data, frame + 5, width, height)
    return bytes(data)


def bmp_declaring(width: int, height: int) -> bytes:
    """A small BMP whose info header declares ``width`` x ``height``."""
    data = bytearray(small_image("BMP"))
    struct.pack_into("<ii", data, 18, width, height)
    return bytes(data)


def jpeg_declaring(width: int, height: int) -> bytes:
    """A small baseline JPEG whose SOF0 frame header declares ``width`` x ``height`` (<= 65535)."""
    data = bytearray(small_image("JPEG"))
    sof = data.find(b"\xff\xc0")
    if sof < 0:  # pragma: no cover - Pillow writes baseline JPEGs by default
        raise RuntimeError("no SOF0 marker in Pillow's JPEG")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def webp_declaring(width: int, height: int) -> bytes:
    """A small lossy WebP whose VP8 frame header declares ``width`` x ``height`` (<= 16383)."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(buffer, format="WEBP", lossless=False)
    data = bytearray(buffer.getvalue())
    start = data.find(b"\x9d\x01\x2a")  # VP8 key frame start code, then 14-bit sizes
    if start < 0:  # pragma: no cover - libwebp writes a simple lossy file
        raise RuntimeError("no VP8 key frame in Pillow's WebP")
    struct.pack_into("<HH", data, start + 3, width & 0x3FFF, height & 0x3FFF)
    return bytes(data)


def tiff_declaring(width: int, height: int) -> bytes:
    """A minimal uncompressed RGB TIFF whose IFD declares ``width`` x ``height`` and one
    strip of 12 bytes."""
    entries = [
        (256, 4, 1, width),  # ImageWidth (LONG)
        (257, 4, 1, height),  # ImageLength
        (258, 3, 1, 8),  # BitsPerSample
        (259, 3, 1, 1),  # Compression: none
        (262, 3, 1, 2),  # PhotometricInterpretation: RGB
        (273, 4, 1, 0),  # StripOffsets (patched below)
        (277, 3, 1, 3),  # SamplesPerPixel
        (278, 4, 1, height),  # RowsPerStrip
        (279, 4, 1, 12),  # StripByteCounts
    ]
    ifd_size = 2 + 12 * len(entries) + 4
    strip_offset = 8 + ifd_size
    out = bytearray(b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(entries)))
    for tag, kind, count, value in entries:
        value = strip_offset if tag == 273 else value
        packed = struct.pack("<HI", value, 0)[:4] if kind == 3 else struct.pack("<I", value)
        out += struct.pack("<HHI", tag, kind, count) + packed
    out += struct.pack("<I", 0) + bytes(12)
    return bytes(out)


#: Builders of files that declare a size they do not hold, by format.
DECLARING = {
    "PNG": png_declaring,
    "GIF": gif_declaring,
    "BMP": bmp_declaring,
    "JPEG": jpeg_declaring,
    "WEBP": webp_declaring,
    "TIFF": tiff_declaring,
}


def truncations(data: bytes, cuts: int = 6) -> Iterator[bytes]:
    """``data`` cut short at ``cuts`` points spread over its length (never empty, never whole)."""
    for step in range(1, cuts + 1):
        keep = max(1, len(data) * step // (cuts + 1))
        yield data[:keep]


def deep_json(depth: int, *, kind: str = "list", inner: str = "1") -> bytes:
    """JSON nested ``depth`` levels deep: ``[[[...1...]]]`` or ``{"a":{"a":...}}``."""
    if kind == "list":
        return ("[" * depth + inner + "]" * depth).encode()
    return ('{"a":' * depth + inner + "}" * depth).encode()


def _chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)
