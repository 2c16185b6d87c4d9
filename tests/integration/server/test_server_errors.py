"""Bad input gets a 4xx with a message saying what was wrong — never a 500 — and each limit
its documented status: 413 for anything too large or too many, 422 for invalid bodies."""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from PIL import Image
from servertools import LiveServer, b64, data_uri, live_server, png

from clipserve.errors import (
    ClipServeError,
    ImageTooLargeError,
    InvalidInputError,
    ModelNotFoundError,
    OverloadedError,
    RequestTimeoutError,
    TextTooLongError,
)
from clipserve.server.errors import TooManyItemsError, error_response, error_type, status_of

BODY_LIMIT = 64 * 1024
ITEM_LIMIT = 8
PIXEL_LIMIT = 100_000
TEXT_LIMIT = 200


@pytest.fixture(scope="module")
def limited(make_settings: Any) -> Iterator[LiveServer]:
    settings = make_settings(
        max_body_bytes=BODY_LIMIT,
        max_items_per_request=ITEM_LIMIT,
        max_image_pixels=PIXEL_LIMIT,
        max_text_chars=TEXT_LIMIT,
    )
    with live_server(settings) as running:
        yield running


@pytest.fixture()
def limited_client(limited: LiveServer) -> Iterator[httpx.Client]:
    with limited.client() as http:
        yield http


def _error(response: httpx.Response, status: int, kind: str | None = None) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    if kind is not None:
        assert error["type"] == kind, error
    assert error["message"]
    return str(error["message"])


def _truncated_png(shape_pngs: list[bytes]) -> bytes:
    return shape_pngs[0][: len(shape_pngs[0]) // 2]


JSON_CASES: list[tuple[str, str, bytes, int]] = [
    ("encode", "malformed json", b'{"inputs": [', 422),
    ("encode", "not utf-8", b"\xff\xfe{}", 422),
    ("encode", "a list body", b'["a cat"]', 422),
    ("encode", "missing inputs", b"{}", 422),
    ("encode", "empty inputs", b'{"inputs": []}', 422),
    ("encode", "number input", b'{"inputs": [5]}', 422),
    ("encode", "null input", b'{"inputs": [null]}', 422),
    ("encode", "nested list", b'{"inputs": [["a"]]}', 422),
    ("encode", "inputs not a list", b'{"inputs": "a cat"}', 422),
    ("encode", "unknown field", b'{"inputs": ["a"], "colour": 1}', 422),
    ("encode", "object with two keys", b'{"inputs": [{"text": "a", "url": "http://x"}]}', 422),
    ("encode", "object unknown key", b'{"inputs": [{"picture": "x"}]}', 422),
    ("encode", "unknown encoding", b'{"inputs": ["a"], "encoding": "hex"}', 422),
    ("encode", "normalize not bool", b'{"inputs": ["a"], "normalize": "maybe"}', 422),
    ("encode", "bad base64", b'{"inputs": [{"image": "not base64 !!"}]}', 400),
    ("encode", "base64 of text", b'{"inputs": [{"image": "aGVsbG8gd29ybGQ="}]}', 400),
    ("encode", "empty image", b'{"inputs": [{"image": ""}]}', 400),
    (
        "encode",
        "data uri not an image",
        b'{"inputs": [{"image": "data:text/plain;base64,aGk="}]}',
        400,
    ),
    ("encode", "data uri not base64", b'{"inputs": ["data:image/png,abc"]}', 400),
    ("encode", "url object ftp", b'{"inputs": [{"url": "ftp://example.com/a.png"}]}', 400),
    ("encode", "unknown model", b'{"inputs": ["a"], "model": "ViT-nope"}', 404),
    ("rank", "no candidates", b'{"query": "a", "candidates": []}', 422),
    ("rank", "candidates not a list", b'{"query": "a", "candidates": "b"}', 422),
    ("rank", "missing query", b'{"candidates": ["b"]}', 422),
    ("rank", "unknown model", b'{"query": "a", "candidates": ["b"], "model": "x"}', 404),
    ("classify", "no labels", b'{"images": ["data:image/png;base64,AA=="], "labels": []}', 422),
    ("classify", "text as image", b'{"images": [{"text": "a cat"}], "labels": ["cat"]}', 400),
    ("classify", "plain string not base64", b'{"images": ["a cat"], "labels": ["cat"]}', 400),
    ("classify", "labels wrong type", b'{"images": ["a"], "labels": [1, 2]}', 422),
]


@pytest.mark.parametrize(
    ("route", "body", "status"),
    [(route, body, status) for route, _, body, status in JSON_CASES],
    ids=[f"{route}-{name}" for route, name, _, _ in JSON_CASES],
)
def test_malformed_json_bodies_get_a_4xx(
    client: httpx.Client, route: str, body: bytes, status: int
) -> None:
    response = client.post(
        f"/v1/{route}", content=body, headers={"Content-Type": "application/json"}
    )
    _error(response, status)


def test_messages_name_the_input(client: httpx.Client, shape_pngs: list[bytes]) -> None:
    inputs = ["a cat", data_uri(shape_pngs[0]), {"image": b64(b"GIF89a but not really")}]
    message = _error(client.post("/v1/encode", json={"inputs": inputs}), 400, "invalid_image")
    assert message.startswith("inputs[2]")
    message = _error(client.post("/v1/encode", json={"inputs": [5]}), 422, "validation_error")
    assert "body.inputs.0" in message


def test_truncated_image_is_a_400(client: httpx.Client, shape_pngs: list[bytes]) -> None:
    body = {"inputs": [{"image": b64(_truncated_png(shape_pngs))}]}
    _error(client.post("/v1/encode", json=body), 400, "invalid_image")


def test_other_bodies_get_a_4xx(client: httpx.Client) -> None:
    post = client.post
    _error(post("/v1/encode", content=b"a cat", headers={"Content-Type": "text/plain"}), 415)
    _error(post("/v1/encode", content=b"", headers={"Content-Type": "image/png"}), 400)
    _error(post("/v1/encode", content=b"not an image", headers={"Content-Type": "image/png"}), 400)
    _error(post("/v1/encode", files=[("colour", (None, "red"))]), 400)
    _error(post("/v1/encode", files=[("model", (None, "x"))]), 400)  # a form without inputs
    broken_multipart = {"Content-Type": "multipart/form-data; boundary=xyz"}
    _error(post("/v1/encode", content=b"--xyz\r\nnonsense", headers=broken_multipart), 400)
    # curl -d sends JSON as a urlencoded form: say what to do about it.
    message = _error(post("/v1/encode", data={'{"inputs": ["a"]}': ""}), 400)
    assert "application/json" in message
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    _error(post("/v1/encode", content=b"not gzip at all", headers=headers), 400)
    headers = {"Content-Type": "application/json", "Content-Encoding": "br"}
    _error(post("/v1/encode", content=b"{}", headers=headers), 415)
    _error(post("/v1/encode", json={"inputs": ["a"]}, params={"encoding": "hex"}), 422)
    _error(post("/v1/classify", json={"images": ["a"], "labels": ["x"], "templates": ["no"]}), 400)
    _error(client.get("/v1/encode"), 405)
    _error(client.get("/nowhere"), 404, "not_found")


# -------------------------------------------------------------------- limits
def test_body_size_limit(limited_client: httpx.Client) -> None:
    big = {"inputs": ["x" * 100] * 2 + [{"image": "A" * BODY_LIMIT}]}
    message = _error(limited_client.post("/v1/encode", json=big), 413, "payload_too_large")
    assert "CLIPSERVE_MAX_BODY_BYTES" in message


def test_body_size_limit_without_content_length(limited_client: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"inputs": ["'
        for _ in range(10):
            yield b"a" * (BODY_LIMIT // 8)
        yield b'"]}'

    response = limited_client.post(
        "/v1/encode", content=chunks(), headers={"Content-Type": "application/json"}
    )
    _error(response, 413, "payload_too_large")


def test_gzip_bomb_is_refused_by_decompressed_size(limited_client: httpx.Client) -> None:
    bomb = gzip.compress(b'{"inputs": ["' + b"a" * (50 * BODY_LIMIT) + b'"]}')
    assert len(bomb) < BODY_LIMIT
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    message = _error(limited_client.post("/v1/encode", content=bomb, headers=headers), 413)
    assert "decompressed" in message


def test_item_limit(limited_client: httpx.Client) -> None:
    too_many = {"inputs": [f"text {i}" for i in range(ITEM_LIMIT + 1)]}
    message = _error(limited_client.post("/v1/encode", json=too_many), 413, "too_many_items")
    assert "CLIPSERVE_MAX_ITEMS_PER_REQUEST" in message
    assert limited_client.post("/v1/encode", json={"inputs": too_many["inputs"][:-1]}).is_success
    rank = {"query": "a", "candidates": ["b"] * ITEM_LIMIT}
    _error(limited_client.post("/v1/rank", json=rank), 413, "too_many_items")
    tiny = png(Image.new("RGB", (8, 8)))
    files = [("file", (f"{i}.png", tiny, "image/png")) for i in range(ITEM_LIMIT + 1)]
    _error(limited_client.post("/v1/encode", files=files), 413, "too_many_items")


def test_pixel_limit(limited_client: httpx.Client) -> None:
    big = png(Image.new("RGB", (400, 400), (10, 20, 30)))  # 160,000 pixels
    small = png(Image.new("RGB", (300, 300), (10, 20, 30)))  # 90,000 pixels
    message = _error(
        limited_client.post("/v1/encode", json={"inputs": ["a", data_uri(big)]}),
        413,
        "image_too_large",
    )
    assert message.startswith("inputs[1]")
    assert limited_client.post("/v1/encode", json={"inputs": [data_uri(small)]}).is_success
    raw = limited_client.post("/v1/encode", content=big, headers={"Content-Type": "image/png"})
    _error(raw, 413, "image_too_large")


def test_text_length_limit(limited_client: httpx.Client) -> None:
    long_text = "a" * (TEXT_LIMIT + 1)
    message = _error(
        limited_client.post("/v1/encode", json={"inputs": ["ok", long_text]}),
        413,
        "text_too_long",
    )
    assert message.startswith("inputs[1]")
    _error(limited_client.post("/v1/rank", json={"query": long_text, "candidates": ["b"]}), 413)
    body = {"images": [data_uri(png(Image.new("RGB", (8, 8))))], "labels": [long_text]}
    _error(limited_client.post("/v1/classify", json=body), 413, "text_too_long")
    assert limited_client.post("/v1/encode", json={"inputs": ["a" * TEXT_LIMIT]}).is_success


# -------------------------------------------------------------- the one mapping
@pytest.mark.parametrize(
    ("error", "status", "kind"),
    [
        (InvalidInputError("x"), 400, "invalid_input"),
        (ImageTooLargeError("x"), 413, "image_too_large"),
        (TextTooLongError("x"), 413, "text_too_long"),
        (TooManyItemsError("x"), 413, "too_many_items"),
        (ModelNotFoundError("x"), 404, "model_not_found"),
        (OverloadedError("x", retry_after=3), 503, "overloaded"),
        (RequestTimeoutError("x"), 504, "request_timeout"),
    ],
)
def test_error_mapping(error: ClipServeError, status: int, kind: str) -> None:
    response = error_response(error)
    assert status_of(error) == status
    assert error_type(error) == kind
    assert json.loads(bytes(response.body)) == {"error": {"type": kind, "message": "x"}}
    if status == 503:
        assert response.headers["retry-after"] == "3"


def test_request_timeout_is_a_504(make_settings: Any) -> None:
    # A timeout too short for any model run: every encode times out.
    with live_server(make_settings(request_timeout=1e-6)) as running, running.client() as http:
        image = data_uri(png(Image.new("RGB", (64, 64))))
        _error(http.post("/v1/encode", json={"inputs": [image]}), 504, "request_timeout")


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about the broken TIFF tags
def test_pillow_decoders_never_crash_the_server(client: httpx.Client) -> None:
    # Valid headers with garbage after them, in several formats.
    for fmt in ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF"):
        buffer = io.BytesIO()
        Image.new("RGB", (32, 32), (1, 2, 3)).save(buffer, format=fmt)
        data = buffer.getvalue()
        broken = data[:40] + b"\x00garbage" * 20
        response = client.post("/v1/encode", content=broken, headers={"Content-Type": "image/x"})
        assert 400 <= response.status_code < 500, (fmt, response.text)
