"""What the client accepts as an input, and how each kind travels to the server.

* ``str``: a text — unless it is an ``http(s)://`` URL without spaces (an image the server
  fetches, if it allows URL inputs) or a ``data:image/...;base64,`` URI (an image). A path
  given as ``str`` is a text: pass a :class:`pathlib.Path` to send the file.
* ``bytes`` / ``bytearray`` / ``memoryview``: encoded image bytes (JPEG, PNG, WebP, ...).
* ``os.PathLike`` (``pathlib.Path``): an image file, read by the client and sent as bytes.
* ``PIL.Image.Image``: sent as PNG (lossless) after applying its EXIF orientation.
* ``numpy.ndarray``: uint8 pixels, H×W (grey), H×W×3 (RGB) or H×W×4 (RGBA), sent as PNG.

The server sees every image as encoded bytes and every text as an explicit text, so a text
that happens to look like base64 or a URI is never misread.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

import numpy as np
from PIL import Image, ImageOps

from clipserve.errors import InvalidImageError, InvalidInputError

#: One input of :meth:`clipserve.AsyncClient.encode`; see the module docstring.
Item: TypeAlias = (
    str | bytes | bytearray | memoryview | os.PathLike[str] | Image.Image | np.ndarray[Any, Any]
)

PayloadKind = Literal["text", "image", "url"]
_PNG_MODES = frozenset({"1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"})


@dataclass(frozen=True)
class Payload:
    """An input as it goes on the wire: a text, a URL (``text``), or image bytes (``data``)."""

    kind: PayloadKind
    text: str = ""
    data: bytes = b""


def checked_items(items: Iterable[Item], what: str = "items") -> list[Item]:
    """``items`` as a list, every element of a supported type (cheap: nothing is read yet)."""
    if isinstance(items, str | bytes | bytearray | memoryview) or not isinstance(items, Iterable):
        raise InvalidInputError(f"{what} must be a list of inputs, got {type(items).__name__}")
    listed = list(items)
    if not listed:
        raise InvalidInputError(f"{what} must not be empty")
    for index, item in enumerate(listed):
        check_item(item, f"{what}[{index}]")
    return listed


def check_item(item: object, where: str) -> None:
    """Raise ``InvalidInputError`` unless ``item`` is one of the supported kinds."""
    if isinstance(item, np.ndarray):
        _check_pixels(item, where)
    elif not isinstance(item, str | bytes | bytearray | memoryview | os.PathLike | Image.Image):
        raise InvalidInputError(
            f"{where}: a {type(item).__name__} is not an input: pass a str (text or URL), "
            "bytes, a pathlib.Path, a PIL image or a uint8 numpy array"
        )


def is_url(text: str) -> bool:
    """Whether a ``str`` input names an image by URL (the server's rule: no spaces)."""
    head = text[:8].lower()
    return head.startswith(("http://", "https://")) and not any(c.isspace() for c in text)


def to_payloads(items: Sequence[Item], first_index: int = 0, what: str = "items") -> list[Payload]:
    """Turn inputs into payloads: reads files, encodes PIL images and arrays as PNG.

    Blocking (file reads, PNG encoding): the async client runs it in a worker thread.
    """
    return [
        to_payload(item, f"{what}[{first_index + offset}]") for offset, item in enumerate(items)
    ]


def to_payload(item: Item, where: str) -> Payload:
    """One input as a :class:`Payload`; ``where`` names it in errors (``items[3]``)."""
    if isinstance(item, str):
        if item[:11].lower() == "data:image/":
            return Payload("image", data=_data_uri_bytes(item, where))
        return Payload("url", text=item) if is_url(item) else Payload("text", text=item)
    if isinstance(item, bytes | bytearray | memoryview):
        return Payload("image", data=bytes(item))
    if isinstance(item, os.PathLike):
        return Payload("image", data=_read_file(item, where))
    if isinstance(item, Image.Image):
        return Payload("image", data=_png(ImageOps.exif_transpose(item)))
    if isinstance(item, np.ndarray):
        _check_pixels(item, where)
        return Payload("image", data=_png(Image.fromarray(np.ascontiguousarray(item))))
    check_item(item, where)  # raises: the type checks above cover every accepted kind
    raise AssertionError("unreachable")


def _check_pixels(array: np.ndarray[Any, Any], where: str) -> None:
    channels_ok = array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (1, 3, 4))
    if array.dtype != np.uint8 or not channels_ok or 0 in array.shape:
        raise InvalidImageError(
            f"{where}: an array image must be uint8 H×W, H×W×1, H×W×3 or H×W×4; got "
            f"{array.dtype} {array.shape}"
        )


def _png(image: Image.Image) -> bytes:
    if image.mode not in _PNG_MODES:
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    buffer = io.BytesIO()
    # Level 1: the bytes cross loopback or a LAN; smaller files are not worth the CPU.
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _read_file(path: os.PathLike[str], where: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as exc:
        raise InvalidInputError(f"{where}: cannot read {os.fspath(path)!r}: {exc}") from exc


def _data_uri_bytes(uri: str, where: str) -> bytes:
    header, comma, payload = uri.partition(",")
    if not comma or ";base64" not in header.lower():
        raise InvalidImageError(f"{where}: a data URI must look like data:image/<type>;base64,...")
    try:
        return base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidImageError(f"{where}: the data URI is not valid base64 ({exc})") from exc
