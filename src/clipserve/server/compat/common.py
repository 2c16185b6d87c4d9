"""Small pieces the compat routers share: multipart parts, JSON bodies, image references."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from clipserve.server.errors import TooManyItemsError
from clipserve.server.schemas import InputObject
from clipserve.server.state import ServerState

from .errors import CompatInputError


@dataclass(frozen=True)
class Part:
    """One multipart/form field: a file (``bytes``, with its file name) or a text value."""

    name: str
    value: bytes | str
    filename: str | None = None


async def read_parts(request: Request, state: ServerState) -> list[Part]:
    """Every field of a multipart or urlencoded body, in order, files read into memory.

    The body size limit (``CLIPSERVE_MAX_BODY_BYTES``) bounds the parts; the item limit
    bounds their number.
    """
    limit = state.settings.max_items_per_request
    try:
        form = await request.form(max_files=limit, max_fields=limit, max_part_size=1 << 62)
    except HTTPException as exc:  # Starlette's parser: malformed, or too many parts
        if str(exc.detail).startswith("Too many"):
            raise TooManyItemsError(
                f"form: {exc.detail} (CLIPSERVE_MAX_ITEMS_PER_REQUEST)"
            ) from exc
        raise CompatInputError(f"malformed form body: {exc.detail}") from exc
    try:
        parts = []
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                parts.append(Part(name, await value.read(), value.filename))
            else:
                parts.append(Part(name, value))
        return parts
    finally:
        await form.close()


async def read_json(request: Request) -> Any:
    """The request body as JSON, or a 400 naming the problem."""
    body = await request.body()
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:  # as in clipserve.server.inputs._json
        raise CompatInputError(f"the body is not valid JSON: {exc}") from exc


def check_total(count: int, what: str, state: ServerState) -> None:
    """A 413 when one request would encode more than ``max_items_per_request`` items."""
    limit = state.settings.max_items_per_request
    if count > limit:
        raise TooManyItemsError(
            f"{what}: {count} items to encode in one request; the limit is {limit} "
            "(CLIPSERVE_MAX_ITEMS_PER_REQUEST): split the request"
        )


def image_reference(uri: str, where: str) -> InputObject:
    """An image named by a data URI or an http(s) URL; anything else (a file path) is refused.

    A server never reads its own files on a client's behalf; URLs are fetched only under the
    server's URL rules (``CLIPSERVE_ALLOW_URL_FETCH`` and the allow-list).
    """
    lowered = uri[:8].lower()
    if lowered.startswith("data:"):
        return InputObject(image=uri)
    if lowered.startswith(("http://", "https://")):
        return InputObject(url=uri)
    raise CompatInputError(
        f"{where}: {uri[:80]!r} is neither a data URI nor an http(s) URL; a server does not "
        "read local files — send the image bytes instead",
        param=where,
    )
