"""Turn request bodies into engine inputs: texts stay ``str``, every image becomes ``bytes``.

Images arrive as base64, data URIs, URLs (fetched by :mod:`clipserve.server.fetch`),
multipart file parts or a raw body. Each is checked here — valid base64, an image Pillow can
identify, within the pixel and text limits — so a bad input is reported with its position in
the request (``inputs[3]: ...``) before it takes a place in a batch queue. Nothing here ever
yields a ``str`` that the engine could read as a file path: images are always bytes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from clipserve.engine import Engine
from clipserve.errors import (
    ImageTooLargeError,
    InvalidImageError,
    InvalidInputError,
    ModelNotFoundError,
    TextTooLongError,
)
from clipserve.server.errors import TooManyItemsError, UnsupportedMediaTypeError, UrlNotAllowedError
from clipserve.server.schemas import (
    ClassifyRequest,
    EncodeOptions,
    EncodeRequest,
    InputItem,
    InputObject,
    RankRequest,
)
from clipserve.server.state import ServerState

Item = str | bytes
ModelT = TypeVar("ModelT", bound=BaseModel)

_THREAD_THRESHOLD_BYTES = 256 * 1024
_FORM_OPTIONS = frozenset({"model", "normalize", "encoding"})
_FORM_TEXT_FIELDS = frozenset({"text", "texts"})


@dataclass(frozen=True)
class _Url:
    url: str


@dataclass(frozen=True)
class _Base64:
    data: str


@dataclass(frozen=True)
class _Image:
    data: bytes


_Parsed = str | _Url | _Base64 | _Image

#: Raw image file bytes (a WebSocket binary frame, a gRPC ``bytes`` field):
#: ``resolve([ImageBytes(data)], ...)`` checks them like every other image input.
ImageBytes = _Image


@dataclass(frozen=True)
class EncodeJob:
    """A parsed ``/v1/encode`` request."""

    items: list[Item]
    model: str
    options: EncodeOptions

    @property
    def modalities(self) -> list[str]:
        """``"text"`` or ``"image"`` per item, in order."""
        return ["text" if isinstance(item, str) else "image" for item in self.items]


@dataclass(frozen=True)
class RankJob:
    """A parsed ``/v1/rank`` request."""

    query: Item
    candidates: list[Item]
    model: str


@dataclass(frozen=True)
class ClassifyJob:
    """A parsed ``/v1/classify`` request."""

    images: list[bytes]
    labels: list[str]
    templates: list[str] | None
    model: str


# ------------------------------------------------------------------ entry points
async def parse_encode(request: Request, state: ServerState, defaults: EncodeOptions) -> EncodeJob:
    """Read a ``/v1/encode`` body — JSON, multipart/form or a raw image — into a job.

    ``defaults`` (from the query string) apply where the body does not set an option.
    """
    media = _media_type(request)
    raw: Sequence[InputItem | _Parsed]
    if media in ("", "application/json") or media.endswith("+json"):
        data = await _ajson(await request.body())
        body = validate(EncodeRequest, data, "body", defaults, strict=True)
        options: EncodeOptions = body
        raw, where = body.inputs, "inputs"
    elif media in ("multipart/form-data", "application/x-www-form-urlencoded"):
        options, raw = await _read_form(request, state, defaults)
        where = "form"
    elif media.startswith("image/") or media == "application/octet-stream":
        options, raw, where = defaults, [_Image(await request.body())], "body"
    else:
        raise UnsupportedMediaTypeError(
            f"cannot read a {media!r} body: send application/json, multipart/form-data, "
            "image/* or application/octet-stream"
        )
    model = served_model(state, options.model)  # before any fetching or decoding
    return EncodeJob(await resolve(raw, where, state), model, options)


async def parse_rank(body: RankRequest, state: ServerState) -> RankJob:
    """Resolve a ``/v1/rank`` body's query and candidates."""
    check_count(len(body.candidates) + 1, "query and candidates", state)
    model = served_model(state, body.model)
    query = await resolve([body.query], "query", state)
    candidates = await resolve(body.candidates, "candidates", state)
    return RankJob(query[0], candidates, model)


async def parse_classify(body: ClassifyRequest, state: ServerState) -> ClassifyJob:
    """Resolve a ``/v1/classify`` body: every input must be an image."""
    prompts = len(body.labels) * len(body.templates or [""])
    check_count(prompts, "labels × templates", state)
    _check_texts(body.labels, "labels", _engine(state))
    model = served_model(state, body.model)
    # Every input is an image here, so a plain string that is neither a data URI nor a URL
    # can only be base64.
    raw = [_as_image(item) for item in body.images]
    items = await resolve(raw, "images", state)
    texts = [index for index, item in enumerate(items) if isinstance(item, str)]
    if texts:
        raise InvalidInputError(
            f"images[{texts[0]}] is a text; classify takes images (data URIs, base64, URLs)"
        )
    images = [item for item in items if isinstance(item, bytes)]
    return ClassifyJob(images, body.labels, body.templates, model)


def _as_image(item: InputItem) -> InputItem | _Parsed:
    if isinstance(item, str) and isinstance(_parse(item, "images"), str):
        return _Base64(item)
    return item


def served_model(state: ServerState, name: str | None) -> str:
    """The canonical name of the served model ``name`` (the default when ``None``); else 404."""
    engine = _engine(state)
    try:
        return engine.model(name).name
    except InvalidInputError as exc:
        raise ModelNotFoundError(
            f"model {name!r} is not served here; served: {', '.join(engine.model_names)}"
        ) from exc


def validate(
    model: type[ModelT],
    data: Any,
    where: str,
    defaults: BaseModel | None = None,
    *,
    strict: bool | None = None,
) -> ModelT:
    """Validate ``data`` as ``model``, reporting problems like FastAPI does (a 422).

    Fields missing from ``data`` are taken from ``defaults`` when given. ``strict=True``
    for JSON bodies: a boolean must be ``true``/``false``, a number a number, as the schema
    says (form fields and query strings need the lax default).
    """
    if defaults is not None and isinstance(data, dict):
        data = {**defaults.model_dump(exclude_unset=True), **data}
    try:
        return model.model_validate(data, strict=strict)
    except ValidationError as exc:
        errors = [{**error, "loc": (where, *error["loc"])} for error in exc.errors()]
        raise RequestValidationError(errors) from exc


async def resolve(raw: Sequence[InputItem | _Parsed], where: str, state: ServerState) -> list[Item]:
    """Texts as they are, images as checked bytes (URLs fetched, base64 decoded).

    ``where`` names the field in error messages: ``inputs[2]: ...``.
    """
    check_count(len(raw), where, state)
    parsed = [_parse(item, _at(where, index, len(raw))) for index, item in enumerate(raw)]
    fetched = await _fetch_urls(parsed, where, state)
    engine = _engine(state)
    max_pixels = engine.settings.max_image_pixels
    if all(isinstance(item, str) for item in fetched):
        items = _decode_all(fetched, where, max_pixels)  # texts only: nothing to decode
    else:
        # Base64 decoding and header checks of many large images are worth a thread hop.
        items = await asyncio.to_thread(_decode_all, fetched, where, max_pixels)
    _check_texts(items, where, engine)
    return items


# ------------------------------------------------------------------ parsing
def _parse(item: InputItem | _Parsed, where: str) -> _Parsed:
    if isinstance(item, InputObject):
        return _parse_object(item, where)
    if not isinstance(item, str):
        return item
    if item[:11].lower() == "data:image/":
        return _data_uri(item, where)
    if item[:8].lower() == "https://" or item[:7].lower() == "http://":
        # A URL has no spaces; "http://... is great" is a sentence and stays a text.
        return item if any(char.isspace() for char in item) else _Url(item)
    return item


def _parse_object(item: InputObject, where: str) -> _Parsed:
    if item.text is not None:
        return item.text
    if item.url is not None:
        if not item.url[:8].lower().startswith(("http://", "https://")):
            raise UrlNotAllowedError(f"{where}: only http and https URLs are fetched")
        return _Url(item.url)
    image = item.image or ""
    return _data_uri(image, where) if image[:5].lower() == "data:" else _Base64(image)


def _data_uri(uri: str, where: str) -> _Base64:
    header, comma, payload = uri.partition(",")
    parts = [part.strip().lower() for part in header[5:].split(";")]
    if not comma or not parts[0].startswith("image/") or "base64" not in parts[1:]:
        raise InvalidImageError(
            f"{where}: a data URI must look like data:image/<type>;base64,<data>"
        )
    return _Base64(payload)


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").partition(";")[0].strip().lower()


async def _ajson(body: bytes) -> Any:
    # Parsing megabytes of JSON takes long enough to stall every other request.
    if len(body) > _THREAD_THRESHOLD_BYTES:
        return await asyncio.to_thread(_json, body)
    return _json(body)


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    # ValueError covers JSONDecodeError, UnicodeDecodeError and numbers of more than 4300
    # digits; RecursionError, nesting deeper than the interpreter's stack allows.
    except (ValueError, RecursionError) as exc:
        error = {"type": "json_invalid", "loc": ("body",), "msg": f"malformed JSON: {exc}"}
        raise RequestValidationError([error]) from exc


# ------------------------------------------------------------------ multipart
async def _read_form(
    request: Request, state: ServerState, defaults: EncodeOptions
) -> tuple[EncodeOptions, list[_Parsed]]:
    limit = state.settings.max_items_per_request
    # The body size limit already bounds every part; Starlette's own 1 MiB default for a
    # text field would refuse long texts with a less helpful message.
    try:
        form = await request.form(
            max_files=limit, max_fields=limit + len(_FORM_OPTIONS), max_part_size=1 << 62
        )
    except HTTPException as exc:  # Starlette's parser: malformed, or too many parts
        if str(exc.detail).startswith("Too many"):
            raise TooManyItemsError(
                f"form: {exc.detail} (CLIPSERVE_MAX_ITEMS_PER_REQUEST)"
            ) from exc
        raise InvalidInputError(f"malformed form body: {exc.detail}") from exc
    try:
        options: dict[str, str] = {}
        parts: list[_Parsed] = []
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                data = await value.read()
                parts.append(_upload_text(data, key) if key in _FORM_TEXT_FIELDS else _Image(data))
            elif key in _FORM_TEXT_FIELDS:
                parts.append(value)
            elif key in _FORM_OPTIONS:
                options[key] = value
            else:
                raise _unknown_form_field(key)
    finally:
        await form.close()
    if not parts:
        raise InvalidInputError("the form has no inputs: send image files and/or 'text' fields")
    return validate(EncodeOptions, options, "form", defaults), parts


def _upload_text(data: bytes, key: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"form field {key!r}: a text file must be UTF-8") from exc


def _unknown_form_field(key: str) -> InvalidInputError:
    hint = ""
    if key.lstrip().startswith(("{", "[")):
        hint = " (a JSON body needs Content-Type: application/json)"
    shown = key if len(key) <= 40 else key[:40] + "…"
    return InvalidInputError(
        f"unknown form field {shown!r}{hint}; fields are files, 'text', "
        "'model', 'normalize' and 'encoding'"
    )


# ------------------------------------------------------------------ images
async def _fetch_urls(parsed: list[_Parsed], where: str, state: ServerState) -> list[_Parsed]:
    urls = [index for index, item in enumerate(parsed) if isinstance(item, _Url)]
    if not urls:
        return parsed
    fetcher = state.fetcher
    if fetcher is None:
        first = _at(where, urls[0], len(parsed))
        raise UrlNotAllowedError(
            f"{first}: URL fetching is disabled: set CLIPSERVE_ALLOW_URL_FETCH=1 to enable "
            "it, or send the image bytes (base64, data URI or multipart)"
        )

    async def fetch(index: int) -> _Parsed:
        item = parsed[index]
        assert isinstance(item, _Url)
        try:
            return _Image(await fetcher.fetch(item.url))
        except InvalidInputError as exc:
            raise type(exc)(f"{_at(where, index, len(parsed))}: {exc}") from exc

    results = await asyncio.gather(*(fetch(index) for index in urls))
    out = list(parsed)
    for index, result in zip(urls, results, strict=True):
        out[index] = result
    return out


def _decode_all(parsed: list[_Parsed], where: str, max_pixels: int) -> list[Item]:
    items: list[Item] = []
    for index, item in enumerate(parsed):
        at = _at(where, index, len(parsed))
        if isinstance(item, str):
            items.append(item)
            continue
        if isinstance(item, _Url):  # _fetch_urls replaced every one; never reached
            raise InvalidInputError(f"{at}: URL was not fetched")
        data = _b64decode(item.data, at) if isinstance(item, _Base64) else item.data
        _check_image(data, at, max_pixels)
        items.append(data)
    return items


def _b64decode(text: str, where: str) -> bytes:
    compact = "".join(text.split())  # MIME-style line breaks are common
    compact += "=" * (-len(compact) % 4)
    urlsafe = "-" in compact or "_" in compact
    try:
        if urlsafe:
            return base64.urlsafe_b64decode(compact)
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidImageError(f"{where}: image is not valid base64 ({exc})") from exc


def _check_image(data: bytes, where: str, max_pixels: int) -> None:
    """Header-only check (no pixels decoded): an image Pillow reads, within the pixel limit."""
    if not data:
        raise InvalidImageError(f"{where}: image is empty (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except UnidentifiedImageError as exc:
        raise InvalidImageError(
            f"{where}: not an image ({len(data)} bytes that Pillow cannot identify)"
        ) from exc
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"{where}: image is too large: {exc}") from exc
    except Exception as exc:  # Pillow raises many types on corrupt headers
        raise InvalidImageError(f"{where}: unreadable image header ({exc})") from exc
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"{where}: image has {width}x{height} = {width * height} pixels; the limit is "
            f"{max_pixels} (CLIPSERVE_MAX_IMAGE_PIXELS)"
        )


# ------------------------------------------------------------------ limits
def check_count(count: int, where: str, state: ServerState) -> None:
    """``TooManyItemsError`` (413) when ``count`` inputs exceed ``max_items_per_request``."""
    limit = state.settings.max_items_per_request
    if count > limit:
        raise TooManyItemsError(
            f"{where}: {count} items in one request; the limit is {limit} "
            "(CLIPSERVE_MAX_ITEMS_PER_REQUEST): split the request"
        )


def _check_texts(items: Sequence[Item], where: str, engine: Engine) -> None:
    limit = engine.settings.max_text_chars
    for index, item in enumerate(items):
        if isinstance(item, str) and len(item) > limit:
            raise TextTooLongError(
                f"{_at(where, index, len(items))}: text has {len(item)} characters; the limit "
                f"is {limit} (CLIPSERVE_MAX_TEXT_CHARS)"
            )


def _engine(state: ServerState) -> Engine:
    return state.ready_engine()


def _at(where: str, index: int, count: int) -> str:
    single = where in ("query", "body") or where.endswith(".input")
    return where if single and count == 1 else f"{where}[{index}]"
