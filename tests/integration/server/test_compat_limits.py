"""The native item limit (``CLIPSERVE_MAX_ITEMS_PER_REQUEST``) holds on every compat router,
answered as a 413 in the router's own error shape."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from compattools import assert_json_error, served_model
from servertools import LiveServer, live_server

LIMIT = 4


@pytest.fixture(scope="module")
def limited(make_settings: Any) -> Iterator[LiveServer]:
    with live_server(make_settings(max_items_per_request=LIMIT)) as running:
        yield running


def test_each_router_refuses_too_many_items(limited: LiveServer, shape_pngs: list[bytes]) -> None:
    five = [f"text {i}" for i in range(LIMIT + 1)]
    png = shape_pngs[0]
    with limited.client() as http:
        model = served_model(http)
        bento = http.post("/encode_text", json={"items": five})
        assert "limit is 4" in assert_json_error(bento, 413)["error"]
        # Two queries × (1 + 2 candidates) = 6 items to encode.
        bento_rank = http.post(
            "/rank",
            data={"candidates": json.dumps(["a", "b"])},
            files=[("queries", (f"q{i}.png", png, "image/png")) for i in range(2)],
        )
        assert "limit is 4" in assert_json_error(bento_rank, 413)["error"]
        docs = [{"text": text} for text in five]
        cas = http.post("/post", json={"data": docs, "execEndpoint": "/"})
        assert "limit is 4" in assert_json_error(cas, 413)["header"]["status"]["description"]
        # Two queries with two matches each: 6 documents to encode.
        query = {"text": "a", "matches": [{"text": "b"}, {"text": "c"}]}
        cas_rank = http.post("/post", json={"data": [query, query], "execEndpoint": "/rank"})
        assert "limit is 4" in assert_json_error(cas_rank, 413)["header"]["status"]["description"]
        photofield = http.post("/text-embeddings", json={"texts": five})
        assert "limit is 4" in assert_json_error(photofield, 413)["detail"]
        files = [(f"image{i}", (f"{i}.png", png, "image/png")) for i in range(LIMIT + 1)]
        photofield_images = http.post("/image-embeddings", files=files)
        assert assert_json_error(photofield_images, 413)["detail"]
        openai = http.post("/v1/embeddings", json={"model": model, "input": five})
        error = assert_json_error(openai, 413)["error"]
        assert error["code"] == "too_many_items" and "limit is 4" in error["message"]
        # Within the limit, the same routes answer.
        assert http.post("/encode_text", json={"items": five[:LIMIT]}).status_code == 200
