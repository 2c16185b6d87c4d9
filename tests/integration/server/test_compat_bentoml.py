"""The BentoML CLIP example's routes, called the way BentoML's HTTP client calls them."""

from __future__ import annotations

import json
from typing import Any

import httpx
import numpy as np
from compattools import ATOL, assert_json_error, native, native_rank
from servertools import LiveServer, data_uri

from clipserve.testing.synthetic import caption_for


def test_encode_image_multipart_items(client: httpx.Client, shape_pngs: list[bytes]) -> None:
    # BentoML's client: one part per file, named after the argument, file name and guessed type.
    files = [
        ("items", (f"shape{i}.png", image, "image/png")) for i, image in enumerate(shape_pngs[:3])
    ]
    response = client.post("/encode_image", files=files)
    assert response.status_code == 200, response.text
    rows = response.json()
    assert isinstance(rows, list) and len(rows) == 3
    vectors = np.array(rows, np.float32)
    expected = native(client, shape_pngs[:3], normalize=False)
    assert vectors.shape == expected.shape
    np.testing.assert_allclose(vectors, expected, atol=ATOL)
    # The example returns get_image_features as is: not unit vectors.
    assert not np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)


def test_encode_text_json_items(client: httpx.Client) -> None:
    texts = [caption_for("red", "circle"), "a diagram"]
    response = client.post(
        "/encode_text",
        content=json.dumps({"items": texts}),
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 200, response.text
    vectors = np.array(response.json(), np.float32)
    np.testing.assert_allclose(vectors, native(client, texts, normalize=False), atol=ATOL)


def test_rank_queries_against_candidates(client: httpx.Client, shape_pngs: list[bytes]) -> None:
    queries = shape_pngs[:2]
    candidates = [caption_for("red", "circle"), caption_for("blue", "square"), "a diagram"]
    # Non-file arguments of a request with files travel as form fields holding JSON.
    response = client.post(
        "/rank",
        data={"candidates": json.dumps(candidates)},
        files=[("queries", (f"q{i}.png", image, "image/png")) for i, image in enumerate(queries)],
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"probabilities", "cosine_similarities"}
    assert np.array(body["probabilities"]).shape == (2, 3)
    for row, image in enumerate(queries):
        expected = native_rank(client, data_uri(image), [{"text": text} for text in candidates])
        for k in range(len(candidates)):
            assert abs(body["probabilities"][row][k] - expected[k]["probability"]) < ATOL
            assert abs(body["cosine_similarities"][row][k] - expected[k]["cosine"]) < ATOL
        assert abs(sum(body["probabilities"][row]) - 1.0) < 1e-4


def test_rank_default_candidates(client: httpx.Client, shape_pngs: list[bytes]) -> None:
    response = client.post("/rank", files=[("queries", ("q.png", shape_pngs[0], "image/png"))])
    assert response.status_code == 200, response.text
    assert np.array(response.json()["cosine_similarities"]).shape == (1, 2)


def test_errors_in_bentoml_shape(client: httpx.Client, shape_pngs: list[bytes]) -> None:
    not_image = client.post(
        "/encode_image", files=[("items", ("x.png", b"not an image", "image/png"))]
    )
    assert set(assert_json_error(not_image, 400)) == {"error"}
    assert "items" in not_image.json()["error"]
    no_items = client.post(
        "/encode_image", files=[("other", ("x.png", shape_pngs[0], "image/png"))]
    )
    assert "items" in assert_json_error(no_items, 400)["error"]
    bad_body = client.post("/encode_text", json={"texts": ["a"]})
    assert "items" in assert_json_error(bad_body, 422)["error"]
    bad_candidates = client.post(
        "/rank",
        data={"candidates": "not json"},
        files=[("queries", ("q.png", shape_pngs[0], "image/png"))],
    )
    assert "candidates" in assert_json_error(bad_candidates, 400)["error"]
    local_path = client.post("/encode_image", data={"items": "/etc/passwd"})
    assert "local" in assert_json_error(local_path, 400)["error"]


def test_url_items_follow_url_rules(server: LiveServer) -> None:
    # BentoML's client sends a URL given for a file argument as a plain form field.
    with server.client() as http:
        response = http.post("/encode_image", data={"items": "http://127.0.0.1:9/cat.png"})
    body = assert_json_error(response, 400)
    assert "URL fetching is disabled" in body["error"]


def _bentoml_request(route: dict[str, Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """httpx arguments as BentoML's HTTP client builds them from a ``/schema.json`` route."""
    properties = route["input"]["properties"]

    def is_file(name: str) -> bool:
        schema = properties[name]
        return bool(schema.get("type") == "file" or schema.get("items", {}).get("type") == "file")

    if not any(is_file(name) for name in properties):
        return {"json": kwargs}
    data = {name: json.dumps(value) for name, value in kwargs.items() if not is_file(name)}
    files = [
        (name, (f"upload{i}.png", value, "image/png"))
        for name in kwargs
        if is_file(name)
        for i, value in enumerate(kwargs[name])
    ]
    return {"data": data, "files": files}


def test_schema_drives_bentoml_client_requests(
    client: httpx.Client, shape_pngs: list[bytes]
) -> None:
    schema = client.get("/schema.json")
    assert schema.status_code == 200, schema.text
    routes = {route["name"]: route for route in schema.json()["routes"]}
    assert set(routes) == {"encode_image", "encode_text", "rank"}
    arguments: dict[str, dict[str, Any]] = {
        "encode_image": {"items": shape_pngs[:2]},
        "encode_text": {"items": ["a red circle"]},
        "rank": {"queries": shape_pngs[:1], "candidates": ["a red circle", "a diagram"]},
    }
    answers = {}
    for name, kwargs in arguments.items():
        route = routes[name]
        assert set(kwargs) >= set(route["input"]["required"])
        response = client.post(route["route"], **_bentoml_request(route, kwargs))
        assert response.status_code == 200, (name, response.text)
        answers[name] = response.json()
    assert np.array(answers["encode_image"]).shape[0] == 2
    assert np.array(answers["encode_text"]).shape[0] == 1
    assert np.array(answers["rank"]["probabilities"]).shape == (1, 2)
