"""Helpers for the compat router tests: native embeddings to compare with, and multipart
bodies built byte for byte the way the original clients build them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import httpx
import numpy as np
from servertools import data_uri

#: Float tolerance between a compat answer and the native one (same model, same batch path).
ATOL = 1e-5


def native(
    client: httpx.Client, items: Sequence[str | bytes], *, normalize: bool, model: str | None = None
) -> np.ndarray:
    """Embeddings from ``/v1/encode``: ``str`` items are texts, ``bytes`` items PNG images."""
    inputs = [{"text": item} if isinstance(item, str) else data_uri(item) for item in items]
    body: dict[str, Any] = {"inputs": inputs, "normalize": normalize}
    if model is not None:
        body["model"] = model
    response = client.post("/v1/encode", json=body)
    assert response.status_code == 200, response.text
    return np.array([row["embedding"] for row in response.json()["data"]], np.float32)


def native_rank(
    client: httpx.Client, query: Any, candidates: list[Any]
) -> dict[int, dict[str, Any]]:
    """``/v1/rank`` scores keyed by candidate index."""
    response = client.post("/v1/rank", json={"query": query, "candidates": candidates})
    assert response.status_code == 200, response.text
    return {row["index"]: row for row in response.json()["results"]}


def served_model(client: httpx.Client) -> str:
    """The default model's canonical name."""
    response = client.get("/v1/models")
    assert response.status_code == 200, response.text
    name: str = response.json()["data"][0]["name"]
    return name


def multipart(boundary: str, parts: Sequence[tuple[str, str | None, str | None, bytes]]) -> bytes:
    """A multipart/form-data body: ``(name, filename, content_type, data)`` per part, CRLF line
    ends, ``--boundary--`` at the end — what Go's ``mime/multipart`` and undici's FormData write."""
    out = bytearray()
    for name, filename, content_type, data in parts:
        out += f"--{boundary}\r\n".encode()
        disposition = f'Content-Disposition: form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += f"{disposition}\r\n".encode()
        if content_type is not None:
            out += f"Content-Type: {content_type}\r\n".encode()
        out += b"\r\n" + data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out)


def assert_json_error(response: httpx.Response, status: int) -> Any:
    """The JSON body of an expected error response (never a 5xx)."""
    assert response.status_code == status, (response.status_code, response.text)
    return response.json()


def compact_json(value: Any) -> str:
    """JSON as JavaScript's ``JSON.stringify`` writes it (no spaces)."""
    return json.dumps(value, separators=(",", ":"))
