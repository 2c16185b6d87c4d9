"""API keys: when ``CLIPSERVE_API_KEYS`` is set, routes need ``Authorization: Bearer <key>``.

Applied as a router dependency to every route except ``/healthz`` and ``/readyz`` (probes
must work without secrets). ``/docs`` and ``/openapi.json`` stay open so a browser can load
them; they describe the API and hold no data, and the docs' "Authorize" button sends the key.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from clipserve.server.errors import UnauthorizedError
from clipserve.server.state import StateDep

_bearer = HTTPBearer(auto_error=False, description="An API key from CLIPSERVE_API_KEYS.")


def key_matches(given: str, keys: Sequence[str]) -> bool:
    """Whether ``given`` is one of ``keys``, in time independent of where they differ.

    Both sides are hashed first so the comparison does not even leak the key's length, and
    every key is compared so the time does not tell which one matched.
    """
    digest = hashlib.sha256(given.encode()).digest()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(digest, hashlib.sha256(key.encode()).digest())
    return matched


async def require_api_key(
    state: StateDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Dependency: raise ``UnauthorizedError`` (401) unless auth is off or the key is valid."""
    keys = state.settings.api_keys
    if not keys:
        return
    if credentials is None:
        raise UnauthorizedError("this server needs an API key: send Authorization: Bearer <key>")
    if not key_matches(credentials.credentials, keys):
        raise UnauthorizedError("invalid API key")


#: Add to a router: ``APIRouter(dependencies=[RequireKey])``.
RequireKey = Depends(require_api_key)
