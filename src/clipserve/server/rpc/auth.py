"""API keys over gRPC: with ``CLIPSERVE_API_KEYS`` set, every ``clipserve.v1.Clip`` call needs
the metadata ``authorization: Bearer <key>``. Health and reflection stay open (probes and
tooling work without secrets), as ``/healthz`` and ``/readyz`` do over HTTP."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from clipserve.server.auth import key_matches
from clipserve.server.errors import UnauthorizedError


def bearer_key(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    """The key of an ``authorization: Bearer <key>`` entry of the call's metadata, if any."""
    for name, value in metadata or ():
        if name.lower() != "authorization" or not isinstance(value, str):
            continue
        scheme, _, credentials = value.partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
    return None


def check_key(metadata: Iterable[tuple[str, Any]] | None, keys: Sequence[str]) -> None:
    """Raise ``UnauthorizedError`` unless auth is off or the metadata carries a valid key.

    Keys are compared as the HTTP server does (:func:`clipserve.server.auth.key_matches`).
    """
    if not keys:
        return
    key = bearer_key(metadata)
    if key is None:
        raise UnauthorizedError(
            "this server needs an API key: send the metadata authorization: Bearer <key>"
        )
    if not key_matches(key, keys):
        raise UnauthorizedError("invalid API key")
