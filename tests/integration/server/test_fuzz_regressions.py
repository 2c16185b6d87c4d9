"""Regressions from fuzzing the HTTP API (``tests/fuzz/test_api_schema.py``) and from reviewing
the input paths it drives. Each test names the bug: a client's bad input that got a 500, or an
answer the OpenAPI document did not describe."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import jsonschema
import pytest
from PIL import Image
from servertools import LiveServer, data_uri, grpc_failure, grpc_input, live_server, png
from websockets.sync.client import connect

from clipserve.v1 import clip_pb2, clip_pb2_grpc

INDEX = "regressions"
IMAGE = data_uri(png(Image.new("RGB", (16, 16), (10, 200, 30))))


@pytest.fixture(scope="module")
def server_with_index(
    make_settings: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    settings = make_settings(data_dir=tmp_path_factory.mktemp("regressions"), grpc_port=0)
    with live_server(settings) as running, running.client() as http:
        assert http.post("/v1/indexes", json={"name": INDEX}).status_code == 201
        items = [{"id": "a", "input": "a red square", "metadata": {"n": 1}}]
        assert http.post(f"/v1/indexes/{INDEX}/items", json={"items": items}).is_success
        yield running


@pytest.fixture()
def http(server_with_index: LiveServer) -> Iterator[httpx.Client]:
    with server_with_index.client() as client:
        yield client


def _error_message(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    error = body.get("error")
    return str(error["message"] if isinstance(error, dict) else body.get("message", body))


@pytest.mark.parametrize("template", ["a {} of {kind}", "{} and {}", "a {}{", "a } {}", "{0} {}"])
def test_bug_classify_template_with_a_stray_brace_or_second_field_was_a_500(
    http: httpx.Client, server_with_index: LiveServer, template: str
) -> None:
    # str.format raised KeyError/IndexError/ValueError inside the engine: a 500 (gRPC INTERNAL).
    body = {"images": [IMAGE], "labels": ["cat"], "templates": [template]}
    message = _error_message(http.post("/v1/classify", json=body), 400)
    assert "one '{}'" in message
    request = clip_pb2.ClassifyRequest(
        images=[grpc_input(png(Image.new("RGB", (8, 8))))], labels=["cat"], templates=[template]
    )
    with server_with_index.grpc_channel() as channel:
        stub = clip_pb2_grpc.ClipStub(channel)
        grpc_failure(grpc.StatusCode.INVALID_ARGUMENT, lambda: stub.Classify(request))


def test_classify_template_with_escaped_braces_still_works(http: httpx.Client) -> None:
    body = {"images": [IMAGE], "labels": ["cat"], "templates": ["a {{drawn}} {}"]}
    assert http.post("/v1/classify", json=body).status_code == 200


@pytest.mark.parametrize("bound", [2**63, -(2**63) - 1, 10**30])
def test_bug_search_filter_with_an_integer_beyond_64_bits_was_a_500(
    http: httpx.Client, bound: int
) -> None:
    # SQLite cannot bind such an integer: OverflowError in the store, a 500.
    for condition in (bound, {"gte": bound}, {"in": [1, bound]}, {"ne": bound}):
        body = {"input": "a red square", "filter": {"n": condition}}
        message = _error_message(http.post(f"/v1/indexes/{INDEX}/search", json=body), 400)
        assert "64-bit" in message
    within = {"input": "a red square", "filter": {"n": {"lt": 2**63 - 1}}}
    assert http.post(f"/v1/indexes/{INDEX}/search", json=within).json()["results"]


@pytest.mark.parametrize("matches", [5, True, 2.5])
def test_bug_clip_as_service_rank_with_matches_not_a_list_was_a_500(
    http: httpx.Client, matches: Any
) -> None:
    # len() of a number in the item count: TypeError, a 500.
    body = {"data": [{"text": "a", "matches": matches}], "execEndpoint": "/rank"}
    response = http.post("/post", json=body)
    assert response.status_code == 400, response.text
    assert "matches" in response.json()["header"]["status"]["description"]


#: JSON that Python's parser refuses with a ValueError or RecursionError rather than a
#: JSONDecodeError: a number of more than 4300 digits, and very deep nesting.
HOSTILE_JSON = [
    b'{"inputs": [' + b"1" * 5000 + b"]}",
    b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
]


@pytest.mark.parametrize("body", HOSTILE_JSON, ids=["long-number", "deep-nesting"])
def test_bug_json_that_python_cannot_parse_was_a_500(http: httpx.Client, body: bytes) -> None:
    headers = {"Content-Type": "application/json"}
    encode = http.post("/v1/encode", content=body, headers=headers)
    assert "malformed JSON" in _error_message(encode, 422)
    for path in ("/knn-service", "/metadata"):  # clip-retrieval reads its bodies by hand
        response = http.post(path, content=body, headers=headers)
        assert response.status_code == 400, (path, response.text)
        assert "not valid JSON" in response.json()["message"]


def test_bug_stream_message_that_python_cannot_parse_was_an_internal_error(
    server_with_index: LiveServer,
) -> None:
    # The message parser caught ValueError only: the RecursionError became "internal_error".
    url = server_with_index.url.replace("http://", "ws://") + "/v1/stream"
    with connect(url, open_timeout=30, max_size=None) as ws:
        ws.send('{"id": 1, "input": ' + "[" * 100_000 + "]" * 100_000 + "}")
        answer = ws.recv(timeout=60)
        ws.send('{"end": true}')
    assert '"validation_error"' in str(answer), answer


# ------------------------------------------------------- the schema and the server agree
def _component(http: httpx.Client, name: str) -> Any:
    """A schema of the live OpenAPI document, with its ``$ref`` s resolvable."""
    document = http.get("/openapi.json").json()
    schemas = document["components"]["schemas"]
    return {**schemas[name], "components": {"schemas": schemas}}


def _valid(schema: Any, body: Any) -> bool:
    return bool(jsonschema.Draft202012Validator(schema).is_valid(body))


@pytest.mark.parametrize(
    ("path", "component", "body", "accepted"),
    [
        ("/v1/encode", "EncodeRequest", {"inputs": [{}]}, False),
        ("/v1/encode", "EncodeRequest", {"inputs": [{"text": None}]}, False),
        ("/v1/encode", "EncodeRequest", {"inputs": [{"text": "a", "url": None}]}, True),
        ("/v1/encode", "EncodeRequest", {"inputs": [{"text": "a", "image": "x"}]}, False),
        (f"/v1/indexes/{INDEX}/search", "SearchRequest", {"k": 3}, False),
        (f"/v1/indexes/{INDEX}/search", "SearchRequest", {"input": None, "id": "a"}, True),
        (f"/v1/indexes/{INDEX}/search", "SearchRequest", {"input": "a", "id": "a"}, False),
        (f"/v1/indexes/{INDEX}/items", "AddItemsRequest", {"items": [{"id": "b"}]}, False),
        (
            f"/v1/indexes/{INDEX}/items",
            "AddItemsRequest",
            {"items": [{"id": "b", "input": "a", "vector": None}]},
            True,
        ),
    ],
)
def test_bug_schema_called_valid_what_needs_exactly_one_field(
    http: httpx.Client, path: str, component: str, body: Any, accepted: bool
) -> None:
    # Fuzzing (positive_data_acceptance): the documents said {} was a valid input object,
    # search or item — the validators want exactly one of text/image/url, input/vector/id,
    # input/vector — and the server answered those "valid" requests with 422.
    assert _valid(_component(http, component), body) == accepted
    status = http.post(path, json=body).status_code
    assert (status == 200) == accepted, status
    assert status in (200, 422)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/encode", {"inputs": ["a"], "normalize": 0}),
        ("/v1/encode", {"inputs": ["a"], "normalize": "false"}),
        (f"/v1/indexes/{INDEX}/search", {"input": "a", "k": "3"}),
        (f"/v1/indexes/{INDEX}/search", {"input": "a", "k": True}),
    ],
)
def test_bug_json_bodies_took_values_of_the_wrong_type(
    http: httpx.Client, path: str, body: Any
) -> None:
    # Fuzzing (negative_data_rejection): pydantic's lax mode turned 0 into false and "3"
    # into 3, so the server accepted what its own schema calls invalid.
    message = _error_message(http.post(path, json=body), 422)
    assert message


def test_json_integers_may_be_written_as_whole_floats(http: httpx.Client) -> None:
    # JSON Schema's integer includes 3.0: strict validation must not refuse it.
    response = http.post(f"/v1/indexes/{INDEX}/search", json={"input": "a", "k": 3.0})
    assert response.status_code == 200, response.text
    assert _error_message(
        http.post(f"/v1/indexes/{INDEX}/search", json={"input": "a", "k": 2.5}), 422
    )


def test_bug_create_index_conflict_was_an_undocumented_409(http: httpx.Client) -> None:
    # Fuzzing (status_code_conformance): creating an existing index answers 409, which the
    # document did not list; it listed a 200 the route never answers (it answers 201).
    again = http.post("/v1/indexes", json={"name": INDEX})
    assert again.json()["error"]["type"] == "index_exists"
    assert again.status_code == 409
    responses = http.get("/openapi.json").json()["paths"]["/v1/indexes"]["post"]["responses"]
    assert {"201", "409"} <= set(responses)
    assert "200" not in responses


def test_bug_keyed_routes_did_not_document_their_401(http: httpx.Client) -> None:
    # The security sweep: /metrics and every compat route but immich's /ping need the key
    # when keys are set, and none documented the 401 (in its router's own error body).
    document = http.get("/openapi.json").json()
    for path in ("/metrics", "/encode_text", "/schema.json", "/post", "/predict", "/metadata"):
        for operation in document["paths"][path].values():
            assert "401" in operation["responses"], path
    bento = document["paths"]["/encode_text"]["post"]["responses"]["422"]
    assert "BentoErrorBody" in json.dumps(bento)  # not FastAPI's HTTPValidationError


@pytest.mark.parametrize(
    ("score", "accepted"), [("", True), (" 0.5", True), ("abc", False), ("nan", False), (2, True)]
)
def test_bug_clip_retrieval_aesthetic_score_strings_were_undocumented(
    http: httpx.Client, score: Any, accepted: bool
) -> None:
    # Deep fuzzing (positive_data_acceptance): the schema allowed any string, a validator
    # refused the ones float() cannot read (422) — and took "nan" or "1_0", which it can.
    body = {"text": "a", "modality": "text", "num_images": 1, "aesthetic_score": score}
    schema = _knn_schema(http)
    assert _valid(schema, body) == accepted
    response = http.post("/knn-service", json={**body, "indice_name": INDEX})
    assert response.status_code == (200 if accepted else 422), response.text


def _knn_schema(http: httpx.Client) -> Any:
    document = http.get("/openapi.json").json()
    return document["paths"]["/knn-service"]["post"]["requestBody"]["content"]["application/json"][
        "schema"
    ]


@pytest.mark.parametrize("ids", [[True], [False, 1], [None]])
def test_bug_clip_retrieval_metadata_took_booleans_for_ids(http: httpx.Client, ids: Any) -> None:
    # Deep fuzzing (negative_data_rejection): [false, true] were read as the ids 0 and 1.
    response = http.post("/metadata", json={"ids": ids, "indice_name": INDEX})
    assert response.status_code == 422, response.text
    assert "ids" in response.json()["message"]


#: A JSON escape of a lone surrogate: valid JSON, not valid Unicode.
LONE = '"\\ud800"'
LONE_SURROGATE_BODIES = [
    ("/v1/indexes/{index}/items", '{"items": [{"id": "s", "input": "a", "metadata": {"s": %s}}]}'),
    ("/v1/indexes/{index}/search", '{"input": "a", "filter": {"a": %s}}'),
    ("/v1/indexes/{index}/search", '{"id": %s}'),
    ("/v1/encode", '{"model": %s, "inputs": ["a"]}'),
    ("/v1/embeddings", '{"model": %s, "input": "a"}'),
    ("/post", '{"data": [{"text": "a", "tag": %s}]}'),
    ("/post", '{"data": [{"text": "a"}], "header": {"request_id": %s}}'),
    ("/metadata", '{"ids": [%s]}'),
    ("/text-embeddings", '{"texts": [%s]}'),
]


@pytest.mark.parametrize(("path", "template"), LONE_SURROGATE_BODIES)
def test_bug_json_with_a_lone_surrogate_was_a_500_or_a_dropped_connection(
    http: httpx.Client, path: str, template: str
) -> None:
    # Python reads "\ud800" into a str that cannot be encoded as UTF-8: binding it to SQLite
    # or echoing it in an answer failed as a 500, or the connection dropped without one.
    body = (template % LONE).encode()
    response = http.post(
        path.format(index=INDEX), content=body, headers={"Content-Type": "application/json"}
    )
    assert "lone surrogate" in _error_message(response, 400)


def test_json_with_a_surrogate_pair_is_fine(http: httpx.Client) -> None:
    # ASCII-only JSON writes an emoji as a pair of escapes: that is valid Unicode.
    body = b'{"inputs": ["a cat \\ud83d\\ude00"]}'
    response = http.post("/v1/encode", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "fields", [{"num_result_ids": True}, {"num_images": "4"}, {"deduplicate": "true"}]
)
def test_bug_clip_retrieval_knn_took_values_of_the_wrong_type(
    http: httpx.Client, fields: dict[str, Any]
) -> None:
    # Deep fuzzing (negative_data_rejection): lax validation read true as the count 1.
    body = {"text": "a", "modality": "text", "num_images": 1, "indice_name": INDEX, **fields}
    response = http.post("/knn-service", json=body)
    assert response.status_code == 422, response.text
    assert next(iter(fields)) in response.json()["message"]
    whole = {**body, **{key: 2.0 for key in fields if key.startswith("num_")}}
    if whole != body:
        assert http.post("/knn-service", json=whole).status_code == 200
