"""``/v1/indexes``: create, add, get, delete and search on the real server, across restarts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from servertools import data_uri, live_server, png

from clipserve.testing.synthetic import caption_for, make_dataset


def _items() -> tuple[list[dict[str, Any]], list[Any]]:
    shapes = make_dataset(64, seed=41)
    items = [
        {
            "id": f"img-{i}",
            "input": data_uri(png(item.image)),
            "metadata": {"color": item.color, "shape": item.shape, "n": i},
        }
        for i, item in enumerate(shapes)
    ]
    items += [
        {
            "id": f"txt-{i}",
            "input": {"text": item.caption},
            "metadata": {"n": 100 + i, "caption": item.caption},
        }
        for i, item in enumerate(shapes[:8])
    ]
    return items, shapes


def test_the_index_lifecycle_survives_a_restart(make_settings: Any, tmp_path: Path) -> None:
    settings = make_settings(data_dir=tmp_path)
    items, shapes = _items()
    with live_server(settings) as server, server.client() as http:
        assert http.get("/v1/indexes").json() == {"data": []}
        created = http.post("/v1/indexes", json={"name": "shapes"})
        assert created.status_code == 201, created.text
        assert created.json()["count"] == 0 and created.json()["layout"] == "flat"
        dim = created.json()["dim"]

        added = http.post("/v1/indexes/shapes/items", json={"items": items})
        assert added.status_code == 200, added.text
        assert added.json() == {"index": "shapes", "added": 72, "count": 72}
        vector = [1.0] + [0.0] * (dim - 1)
        http.post("/v1/indexes/shapes/items", json={"items": [{"id": "v", "vector": vector}]})

        red_circle = _search(
            http, {"input": caption_for("red", "circle"), "k": 3, "modality": "image"}
        )
        top = red_circle[0]["metadata"]
        assert (top["color"], top["shape"]) == ("red", "circle")
        assert red_circle[0]["score"] >= red_circle[1]["score"] >= red_circle[2]["score"]

        image_to_text = _search(
            http, {"input": data_uri(png(shapes[3].image)), "k": 1, "modality": "text"}
        )
        assert image_to_text[0]["modality"] == "text"
        assert image_to_text[0]["metadata"]["caption"] == shapes[3].caption
        by_vector = _search(http, {"vector": [2.0] + [0.0] * (dim - 1), "k": 1})
        assert by_vector[0]["id"] == "v" and abs(by_vector[0]["score"] - 1.0) < 1e-5

        filtered = _search(http, {"input": "a shape", "k": 50, "filter": {"n": {"lt": 10}}})
        assert sorted(hit["metadata"]["n"] for hit in filtered) == list(range(10))

        assert http.get("/v1/indexes/shapes/items/img-5").json()["metadata"]["n"] == 5
        deleted = http.delete("/v1/indexes/shapes/items/img-5")
        assert deleted.json() == {"index": "shapes", "id": "img-5", "deleted": True}
        assert http.delete("/v1/indexes/shapes/items/img-5").json()["deleted"] is False
        missing = http.get("/v1/indexes/shapes/items/img-5")
        assert missing.status_code == 404 and missing.json()["error"]["type"] == "item_not_found"
        everything = _search(http, {"input": "a shape", "k": 1000})
        assert len(everything) == 72 and "img-5" not in {hit["id"] for hit in everything}

    with live_server(settings) as server, server.client() as http:
        listed = http.get("/v1/indexes").json()["data"]
        assert [(info["name"], info["count"]) for info in listed] == [("shapes", 72)]
        again = _search(http, {"input": caption_for("red", "circle"), "k": 1, "modality": "image"})
        assert again[0]["id"] == red_circle[0]["id"]
        assert http.get("/v1/indexes/shapes/items/img-5").status_code == 404


def _search(http: httpx.Client, body: dict[str, Any]) -> list[dict[str, Any]]:
    response = http.post("/v1/indexes/shapes/search", json=body)
    assert response.status_code == 200, response.text
    results: list[dict[str, Any]] = response.json()["results"]
    return results


def test_index_errors_are_clear_4xx(
    make_settings: Any, tmp_path: Path, shape_pngs: list[bytes]
) -> None:
    with live_server(make_settings(data_dir=tmp_path)) as server, server.client() as http:
        assert http.post("/v1/indexes", json={"name": "a"}).status_code == 201
        cases: list[tuple[str, str, dict[str, Any] | None, int, str]] = [
            ("post", "/v1/indexes", {"name": "a"}, 409, "index_exists"),
            ("post", "/v1/indexes", {"name": "../x"}, 400, "invalid_input"),
            ("post", "/v1/indexes", {"name": "b", "model": "nope"}, 404, "model_not_found"),
            ("post", "/v1/indexes/none/search", {"input": "x"}, 404, "index_not_found"),
            ("get", "/v1/indexes/none", None, 404, "index_not_found"),
            (
                "post",
                "/v1/indexes/a/search",
                {"input": "x", "vector": [1.0]},
                422,
                "validation_error",
            ),
            ("post", "/v1/indexes/a/search", {"vector": [1.0, 2.0]}, 400, "invalid_input"),
            ("post", "/v1/indexes/a/search", {"input": "x", "k": 0}, 422, "validation_error"),
            (
                "post",
                "/v1/indexes/a/search",
                {"input": "x", "filter": {"n": {"like": 1}}},
                400,
                "invalid_input",
            ),
            ("post", "/v1/indexes/a/items", {"items": []}, 422, "validation_error"),
            ("post", "/v1/indexes/a/items", {"items": [{"id": "x"}]}, 422, "validation_error"),
        ]
        for method, path, body, status, kind in cases:
            response = http.request(method, path, json=body)
            assert response.status_code == status, (path, body, response.text)
            assert response.json()["error"]["type"] == kind, (path, body, response.text)
        bad_image = {
            "items": [
                {"id": "ok", "input": "fine"},
                {"id": "bad", "input": "data:image/png;base64,AAAA"},
            ]
        }
        response = http.post("/v1/indexes/a/items", json=bad_image)
        assert (
            response.status_code == 400 and "items[1].input" in response.json()["error"]["message"]
        )
        assert http.get("/v1/indexes/a").json()["count"] == 0  # nothing of a refused request
