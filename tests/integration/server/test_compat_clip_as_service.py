"""clip-as-service's HTTP API (``POST /post``), with the bodies Jina's HTTP client builds for
``clip_client.Client("http://...")`` and the README's curl bodies."""

from __future__ import annotations

import base64
import uuid
from datetime import datetime
from typing import Any

import httpx
import numpy as np
from compattools import ATOL, assert_json_error, native, native_rank, served_model
from servertools import data_uri

from clipserve.testing.synthetic import caption_for

#: Fields of Jina's DataRequestProto / HeaderProto / RouteProto: the client parses the
#: response (all but ``data``) as that proto, so nothing else may appear.
REQUEST_FIELDS = {"header", "parameters", "routes", "data"}
HEADER_FIELDS = {"request_id", "status", "exec_endpoint", "target_executor", "timeout"}
ROUTE_FIELDS = {"executor", "start_time", "end_time", "status"}


def _doc(**fields: Any) -> dict[str, Any]:
    """A document as docarray's ``to_dict()`` writes it: every field, unset ones null."""
    doc: dict[str, Any] = dict.fromkeys(
        [
            "parent_id", "granularity", "adjacency", "blob", "tensor", "mime_type", "text",
            "weight", "uri", "offset", "location", "embedding", "modality", "evaluations",
            "scores", "chunks", "matches",
        ]
    )  # fmt: skip
    doc["id"] = uuid.uuid4().hex
    doc["tags"] = {"__created_by_CAS__": True}
    doc.update(fields)
    return doc


def _image_doc(image: bytes) -> dict[str, Any]:
    # clip_client loads a local image path into .blob and keeps the path in .uri.
    return _doc(
        blob=base64.b64encode(image).decode(), uri="/home/me/cat.png", mime_type="image/png"
    )


def _jina_request(endpoint: str, docs: list[dict[str, Any]]) -> dict[str, Any]:
    # Jina's HTTPClientlet: DataRequest.to_dict() plus exec_endpoint copied from the header.
    return {
        "header": {"request_id": uuid.uuid4().hex, "exec_endpoint": endpoint},
        "parameters": {},
        "data": docs,
        "exec_endpoint": endpoint,
    }


def _check_envelope(body: dict[str, Any], endpoint: str) -> None:
    assert set(body) <= REQUEST_FIELDS
    assert set(body["header"]) <= HEADER_FIELDS
    assert body["header"]["exec_endpoint"] == endpoint
    for route in body["routes"]:
        assert set(route) <= ROUTE_FIELDS
        for key in ("start_time", "end_time"):
            datetime.fromisoformat(route[key].replace("Z", "+00:00"))  # RFC 3339


def test_encode_as_clip_client_sends(client: httpx.Client, shape_pngs: list[bytes]) -> None:
    docs = [_doc(text="a red circle"), _image_doc(shape_pngs[0]), _image_doc(shape_pngs[1])]
    request = _jina_request("/encode", docs)
    response = client.post("/post", json=request)
    assert response.status_code == 200, response.text
    body = response.json()
    _check_envelope(body, "/encode")
    assert body["header"]["request_id"] == request["header"]["request_id"]
    returned = body["data"]
    for sent, back in zip(docs, returned, strict=True):
        # Each document comes back as sent (tags included: the client unboxes on them).
        assert {key: value for key, value in back.items() if key != "embedding"} == {
            key: value for key, value in sent.items() if key != "embedding"
        }
    vectors = np.array([doc["embedding"] for doc in returned], np.float32)
    expected = native(client, ["a red circle", shape_pngs[0], shape_pngs[1]], normalize=False)
    np.testing.assert_allclose(vectors, expected, atol=ATOL)


def test_encode_readme_curl_body(client: httpx.Client, shape_pngs: list[bytes]) -> None:
    body = {
        "data": [{"text": "hello"}, {"uri": data_uri(shape_pngs[2])}],
        "execEndpoint": "/",
        "header": {"request_id": "abc", "not_a_header_field": 1},
    }
    response = client.post("/post", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["header"] == {"request_id": "abc", "exec_endpoint": "/"}
    vectors = np.array([doc["embedding"] for doc in response.json()["data"]], np.float32)
    expected = native(client, ["hello", shape_pngs[2]], normalize=False)
    np.testing.assert_allclose(vectors, expected, atol=ATOL)


def test_encode_names_a_model(client: httpx.Client) -> None:
    model = served_model(client)
    ok = client.post("/post", json=_jina_request(f"/encode/{model}", [_doc(text="a cat")]))
    assert ok.status_code == 200, ok.text
    missing = client.post("/post", json=_jina_request("/encode/ViT-H-14::nope", [_doc(text="x")]))
    body = assert_json_error(missing, 404)
    assert "ViT-H-14::nope" in body["header"]["status"]["description"]


def test_rank_image_query_against_texts(client: httpx.Client, shape_pngs: list[bytes]) -> None:
    captions = [caption_for("red", "circle"), caption_for("blue", "square"), "a diagram"]
    query = _image_doc(shape_pngs[0])
    query["matches"] = [_doc(text=text) for text in captions]
    response = client.post("/post", json=_jina_request("/rank", [query]))
    assert response.status_code == 200, response.text
    body = response.json()
    _check_envelope(body, "/rank")
    (ranked,) = body["data"]
    matches = ranked["matches"]
    expected = native_rank(client, data_uri(shape_pngs[0]), [{"text": t} for t in captions])
    order = sorted(expected, key=lambda k: -expected[k]["probability"])
    assert [match["text"] for match in matches] == [captions[k] for k in order]
    for match, k in zip(matches, order, strict=True):
        assert match["id"] == query["matches"][k]["id"]
        assert match["scores"]["clip_score"]["op_name"] == "softmax"
        assert abs(match["scores"]["clip_score"]["value"] - expected[k]["probability"]) < ATOL
        assert abs(match["scores"]["clip_score_cosine"]["value"] - expected[k]["cosine"]) < ATOL
    assert abs(sum(m["scores"]["clip_score"]["value"] for m in matches) - 1.0) < 1e-4


def test_rank_text_query_against_images(client: httpx.Client, shape_pngs: list[bytes]) -> None:
    query = _doc(
        text=caption_for("green", "triangle"), matches=[_image_doc(p) for p in shape_pngs[:3]]
    )
    response = client.post("/post", json=_jina_request("/rank", [query, query]))
    assert response.status_code == 200, response.text
    expected = native_rank(client, {"text": query["text"]}, [data_uri(p) for p in shape_pngs[:3]])
    for ranked in response.json()["data"]:
        cosines = [m["scores"]["clip_score_cosine"]["value"] for m in ranked["matches"]]
        assert cosines == sorted(cosines, reverse=True)
        assert abs(cosines[0] - max(row["cosine"] for row in expected.values())) < ATOL


def test_errors_keep_the_envelope(client: httpx.Client) -> None:
    local = client.post("/post", json=_jina_request("/", [_doc(uri="/etc/passwd")]))
    status = assert_json_error(local, 400)["header"]["status"]
    assert "local" in status["description"] and status["code"] == 1
    no_matches = client.post("/post", json=_jina_request("/rank", [_doc(text="a cat")]))
    assert "matches" in assert_json_error(no_matches, 400)["header"]["status"]["description"]
    empty = client.post("/post", json=_jina_request("/", [_doc()]))
    assert "no text" in assert_json_error(empty, 400)["header"]["status"]["description"]
    bad_blob = client.post("/post", json=_jina_request("/", [_doc(blob="bm90IGFuIGltYWdl")]))
    assert "data[0]" in assert_json_error(bad_blob, 400)["header"]["status"]["description"]
    no_data = client.post("/post", json={"execEndpoint": "/"})
    assert assert_json_error(no_data, 422)["header"]["status"]["description"]
    url = client.post("/post", json=_jina_request("/", [_doc(uri="http://127.0.0.1:9/a.png")]))
    assert "URL fetching" in assert_json_error(url, 400)["header"]["status"]["description"]
