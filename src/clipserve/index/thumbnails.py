"""Small JPEGs that show an indexed image (the search page's grid), kept beside its vector."""

from __future__ import annotations

import io

from PIL import Image, ImageOps

#: Longest side of a thumbnail, in pixels.
THUMBNAIL_SIZE = 256


def make_thumbnail(data: bytes, size: int = THUMBNAIL_SIZE) -> bytes | None:
    """An upright JPEG of at most ``size`` pixels a side, or ``None`` if ``data`` won't decode.

    The image was already decoded (and checked against the pixel limit) to embed it; a
    failure here only costs the picture, never the item.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.draft("RGB", (size, size))  # JPEG: decode at reduced scale
            upright = ImageOps.exif_transpose(image).convert("RGB")
            upright.thumbnail((size, size), Image.Resampling.BICUBIC)
            buffer = io.BytesIO()
            upright.save(buffer, format="JPEG", quality=80)
            return buffer.getvalue()
    except Exception:  # any decoder failure: the item goes in without a picture
        return None
