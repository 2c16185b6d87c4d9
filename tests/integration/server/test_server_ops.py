"""Operations: health and readiness, metrics, OpenAPI docs, request ids, API keys."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from servertools import GatedSession, LiveServer, data_uri, live_server, png

from clipserve.engine import Engine


def test_readyz_is_503_until_models_are_warm(make_settings: Any) -> None:
    settings = make_settings()
    engine = Engine(settings)
    gate = threading.Event()
    clip = engine.model()
    clip.visual = GatedSession(clip.visual, gate)
    with live_server(settings, engine, ready=False) as server, server.client() as http:
        try:
            assert http.get("/healthz").json() == {"status": "ok", "models": []}
            loading = http.get("/readyz")
            assert loading.status_code == 503
            assert loading.json()["status"] == "loading"
            busy = http.post("/v1/encode", json={"inputs": ["a cat"]})
            assert busy.status_code == 503
            assert busy.json()["error"]["type"] == "not_ready"
            assert int(busy.headers["retry-after"]) > 0
        finally:
            gate.set()
        server.wait_ready()
        ready = http.get("/readyz").json()
        assert ready == {"status": "ready", "models": [clip.name]}
        assert http.post("/v1/encode", json={"inputs": ["a cat"]}).status_code == 200


def test_a_model_that_fails_to_load_is_reported(make_settings: Any) -> None:
    settings = make_settings(models=["no-such-model-anywhere"])
    with live_server(settings, ready=False) as server, server.client() as http:
        for _ in range(600):
            response = http.get("/readyz")
            if response.json()["status"] == "failed":
                break
            threading.Event().wait(0.05)
        assert response.status_code == 503
        assert http.get("/healthz").status_code == 503
        assert http.post("/v1/encode", json={"inputs": ["a"]}).status_code == 503


def _samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


def _value(text: str, name: str, **labels: str) -> float:
    values = [value for got, value in _samples(text, name) if labels.items() <= got.items()]
    assert values, f"no {name} sample with {labels}"
    return sum(values)


def test_metrics_after_traffic(client: httpx.Client) -> None:
    image = data_uri(png(Image.new("RGB", (32, 32), (200, 10, 10))))
    for _ in range(3):
        assert client.post("/v1/encode", json={"inputs": ["a cat", image]}).status_code == 200
    assert client.post("/v1/encode", json={"inputs": []}).status_code == 422
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    requests = "clipserve_http_requests_total"
    assert _value(text, requests, method="POST", route="/v1/encode", status="200") >= 3
    assert _value(text, requests, method="POST", route="/v1/encode", status="422") >= 1
    latency = "clipserve_http_request_duration_seconds_count"
    assert _value(text, latency, route="/v1/encode", status="200") >= 3
    for modality in ("text", "image"):
        assert _value(text, "clipserve_batch_size_count", modality=modality) >= 1
        assert _value(text, "clipserve_batch_size_bucket", modality=modality, le="+Inf") >= 1
        assert _value(text, "clipserve_items_encoded_total", modality=modality) >= 3
        assert _value(text, "clipserve_queue_depth", modality=modality) >= 0
    assert _samples(text, "clipserve_http_requests_in_progress")


def test_docs_and_openapi_have_an_example_on_every_route(client: httpx.Client) -> None:
    docs = client.get("/docs")
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()
    document = client.get("/openapi.json").json()
    operations = {
        f"{method.upper()} {path}": operation
        for path, item in document["paths"].items()
        for method, operation in item.items()
    }
    assert set(operations) >= {
        "POST /v1/encode",
        "POST /v1/rank",
        "POST /v1/classify",
        "GET /v1/models",
        "GET /healthz",
        "GET /readyz",
        "GET /metrics",
    }
    for name, operation in operations.items():
        assert '"example' in json.dumps(operation), f"{name} has no example"
    encode_body = operations["POST /v1/encode"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data", "image/*"} <= set(encode_body)
    assert "EncodeRequest" in document["components"]["schemas"]
    assert "InputObject" in document["components"]["schemas"]


def test_request_id_is_echoed_or_made(client: httpx.Client) -> None:
    given = client.get("/healthz", headers={"X-Request-ID": "trace-42"})
    assert given.headers["x-request-id"] == "trace-42"
    made = client.get("/healthz")
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["x-request-id"])
    unsafe = client.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces"})
    assert re.fullmatch(r"[0-9a-f]{32}", unsafe.headers["x-request-id"])
    error = client.post("/v1/encode", json={}, headers={"X-Request-ID": "trace-43"})
    assert error.status_code == 422
    assert error.headers["x-request-id"] == "trace-43"


# ------------------------------------------------------------------------ auth
@pytest.fixture(scope="module")
def secured(make_settings: Any) -> Iterator[LiveServer]:
    with live_server(make_settings(api_keys=["key-one", "key-two"])) as running:
        yield running


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/encode", {"inputs": ["a cat"]}),
        ("POST", "/v1/rank", {"query": "a", "candidates": ["b"]}),
        ("POST", "/v1/classify", {"images": ["data:image/png;base64,AA=="], "labels": ["x"]}),
        ("GET", "/v1/models", None),
        ("GET", "/metrics", None),
    ],
)
def test_api_key_required(secured: LiveServer, method: str, path: str, body: Any) -> None:
    with secured.client() as http:
        missing = http.request(method, path, json=body)
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"].startswith("Bearer")
        assert missing.json()["error"]["type"] == "unauthorized"
        wrong = http.request(method, path, json=body, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        basic = http.request(method, path, json=body, headers={"Authorization": "Basic a2V5"})
        assert basic.status_code == 401
        right = http.request(method, path, json=body, headers={"Authorization": "Bearer key-two"})
        assert right.status_code != 401, right.text
        assert right.status_code < 500


def test_health_and_docs_need_no_key(secured: LiveServer) -> None:
    with secured.client() as http:
        assert http.get("/healthz").status_code == 200
        assert http.get("/readyz").status_code == 200
        assert http.get("/docs").status_code == 200
        assert http.get("/openapi.json").status_code == 200


def test_no_key_needed_when_auth_is_off(client: httpx.Client) -> None:
    assert client.get("/v1/models").status_code == 200
    assert client.get("/v1/models", headers={"Authorization": "Bearer anything"}).status_code == 200


def test_several_models_default_first(
    make_settings: Any, tiny_clip_dir: Any, random_vit_dir: Any, tiny_engine: Engine
) -> None:
    settings = make_settings(models=[str(tiny_clip_dir), str(random_vit_dir)])
    with live_server(settings) as server, server.client() as http:
        models = http.get("/v1/models").json()["data"]
        assert [model["default"] for model in models] == [True, False]
        assert [model["dim"] for model in models] == [tiny_engine.model().embed_dim, 512]
        default = http.post("/v1/encode", json={"inputs": ["a cat"]}).json()
        assert default["model"] == models[0]["name"]
        other = http.post("/v1/encode", json={"inputs": ["a cat"], "model": models[1]["name"]})
        assert other.json()["model"] == models[1]["name"]
        assert other.json()["dim"] == 512
        ranked = http.post(
            "/v1/rank", json={"query": "a", "candidates": ["b"], "model": str(random_vit_dir)}
        )
        assert ranked.json()["model"] == models[1]["name"]


#: Routes that answer without a key: probes, the docs, the page (it holds no data; its API
#: calls need the key), and immich's ping (immich's server never sends a key).
OPEN_ROUTES = {"/healthz", "/readyz", "/", "/ping"}


def test_every_route_in_the_openapi_document_needs_the_key(secured: LiveServer) -> None:
    with secured.client() as http:
        document = http.get("/openapi.json").json()
        checked = 0
        for path, operations in document["paths"].items():
            if path in OPEN_ROUTES:
                continue
            concrete = re.sub(r"\{[^}]+\}", "x", path)
            for method in operations:
                response = http.request(method.upper(), concrete, json={})
                assert response.status_code == 401, (method, path, response.text)
                checked += 1
        assert checked >= 20  # the native, index and compatibility routes
        for path in OPEN_ROUTES:
            assert http.get(path).status_code == 200, path
