"""gRPC ``clipserve.v1.Clip`` on the live server: every RPC answers what HTTP answers for the
same input — same embeddings, same ranking, same classification, same models."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from PIL import Image
from servertools import LiveServer, b64, grpc_failure, grpc_input, live_server, png, unpack

from clipserve.v1 import clip_pb2, clip_pb2_grpc

CAPTIONS = ["a red square", "a blue circle", "a green triangle", "a yellow star"]


@pytest.fixture()
def stub(grpc_server: LiveServer) -> Iterator[clip_pb2_grpc.ClipStub]:
    with grpc_server.grpc_channel() as channel:
        yield clip_pb2_grpc.ClipStub(channel)


@pytest.fixture()
def http(grpc_server: LiveServer) -> Iterator[httpx.Client]:
    with grpc_server.client() as client:
        yield client


def _http_input(item: str | bytes) -> dict[str, str]:
    return {"text": item} if isinstance(item, str) else {"image": b64(item)}


def _http_vectors(http: httpx.Client, items: list[str | bytes], **options: Any) -> np.ndarray:
    body = {"inputs": [_http_input(item) for item in items], **options}
    response = http.post("/v1/encode", json=body)
    assert response.status_code == 200, response.text
    return np.array([row["embedding"] for row in response.json()["data"]], np.float32)


def test_list_models_is_the_http_list(stub: clip_pb2_grpc.ClipStub, http: httpx.Client) -> None:
    models = stub.ListModels(clip_pb2.ListModelsRequest()).models
    expected = http.get("/v1/models").json()["data"]
    assert [model.name for model in models] == [row["name"] for row in expected]
    for model, row in zip(models, expected, strict=True):
        assert (model.dim, model.image_size, model.context_length) == (
            row["dim"],
            row["image_size"],
            row["context_length"],
        )
        assert model.precision == row["precision"]
        assert model.default == row["default"]
        assert model.logit_scale == pytest.approx(row["logit_scale"], rel=1e-6)
    assert models[0].default


def test_encode_texts_and_image_bytes_equal_http_encode(
    stub: clip_pb2_grpc.ClipStub, http: httpx.Client, shape_pngs: list[bytes]
) -> None:
    # Texts that HTTP's plain strings would read as a URL or a data URI stay texts here.
    items: list[str | bytes] = [
        "a red square",
        shape_pngs[0],
        "https://example.com/cat.png",
        shape_pngs[1],
        "data:image/png;base64,AAAA",
    ]
    response = stub.Encode(clip_pb2.EncodeRequest(inputs=[grpc_input(item) for item in items]))
    expected = _http_vectors(http, items)
    assert response.model == stub.ListModels(clip_pb2.ListModelsRequest()).models[0].name
    assert response.dim == expected.shape[1]
    assert [embedding.index for embedding in response.embeddings] == list(range(len(items)))
    text, image = clip_pb2.MODALITY_TEXT, clip_pb2.MODALITY_IMAGE
    assert [e.modality for e in response.embeddings] == [text, image, text, image, text]
    vectors = np.stack([unpack(embedding.vector) for embedding in response.embeddings])
    np.testing.assert_allclose(vectors, expected, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_normalize_false_equals_http_raw_embeddings(
    stub: clip_pb2_grpc.ClipStub, http: httpx.Client, shape_pngs: list[bytes]
) -> None:
    items: list[str | bytes] = ["a blue circle", shape_pngs[2]]
    request = clip_pb2.EncodeRequest(inputs=[grpc_input(i) for i in items], normalize=False)
    vectors = np.stack([unpack(e.vector) for e in stub.Encode(request).embeddings])
    expected = _http_vectors(http, items, normalize=False)
    np.testing.assert_allclose(vectors, expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)


def test_rank_agrees_with_http_either_direction(
    stub: clip_pb2_grpc.ClipStub, http: httpx.Client, shape_pngs: list[bytes]
) -> None:
    cases: list[tuple[str | bytes, list[str | bytes]]] = [
        (shape_pngs[3], list(CAPTIONS)),
        ("a red square", list(shape_pngs[:5])),
    ]
    for query, candidates in cases:
        response = stub.Rank(
            clip_pb2.RankRequest(
                query=grpc_input(query), candidates=[grpc_input(c) for c in candidates]
            )
        )
        body = {"query": _http_input(query), "candidates": [_http_input(c) for c in candidates]}
        expected = http.post("/v1/rank", json=body).json()
        assert response.model == expected["model"]
        assert [r.index for r in response.results] == [r["index"] for r in expected["results"]]
        for got, want in zip(response.results, expected["results"], strict=True):
            assert got.probability == pytest.approx(want["probability"], abs=1e-5)
            assert got.cosine == pytest.approx(want["cosine"], abs=1e-5)


def test_classify_agrees_with_http(
    stub: clip_pb2_grpc.ClipStub, http: httpx.Client, shape_pngs: list[bytes]
) -> None:
    labels = ["red square", "blue circle", "green triangle"]
    templates = ["a photo of a {}.", "a drawing of a {}."]
    response = stub.Classify(
        clip_pb2.ClassifyRequest(
            images=[grpc_input(image) for image in shape_pngs[:3]],
            labels=labels,
            templates=templates,
        )
    )
    body = {"images": [b64(image) for image in shape_pngs[:3]], "labels": labels}
    expected = http.post("/v1/classify", json={**body, "templates": templates}).json()
    assert response.model == expected["model"]
    assert len(response.results) == 3
    for got, want in zip(response.results, expected["results"], strict=True):
        assert got.index == want["index"]
        assert got.label == want["label"]
        assert [s.label for s in got.scores] == [s["label"] for s in want["scores"]]
        for score, wanted in zip(got.scores, want["scores"], strict=True):
            assert score.probability == pytest.approx(wanted["probability"], abs=1e-5)
            assert score.cosine == pytest.approx(wanted["cosine"], abs=1e-5)
    # Without templates: the server's default set, as over HTTP.
    default = stub.Classify(
        clip_pb2.ClassifyRequest(images=[grpc_input(shape_pngs[0])], labels=labels)
    )
    expected_default = http.post("/v1/classify", json={**body, "images": body["images"][:1]})
    assert default.results[0].label == expected_default.json()["results"][0]["label"]


def test_url_input_while_fetching_is_off_says_how_to_enable_it(
    stub: clip_pb2_grpc.ClipStub,
) -> None:
    request = clip_pb2.EncodeRequest(
        inputs=[clip_pb2.Input(text="fine"), clip_pb2.Input(url="http://127.0.0.1:9/cat.png")]
    )
    failed = grpc_failure(grpc.StatusCode.INVALID_ARGUMENT, lambda: stub.Encode(request))
    assert "inputs[1]" in failed.details()
    assert "CLIPSERVE_ALLOW_URL_FETCH" in failed.details()


class _ImageHost:
    """A loopback HTTP server with one PNG at ``/img.png`` (anything else is a 404)."""

    def __init__(self, image: bytes) -> None:
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                body, status = (image, 200) if self.path == "/img.png" else (b"no", 404)
                self.send_response(status)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()


def test_url_inputs_are_fetched_under_the_servers_url_rules(make_settings: Any) -> None:
    image = png(Image.new("RGB", (40, 30), (20, 140, 220)))
    host = _ImageHost(image)
    settings = make_settings(grpc_port=0, allow_url_fetch=True, allow_private_urls=True)
    try:
        with live_server(settings) as server, server.grpc_channel() as channel:
            stub = clip_pb2_grpc.ClipStub(channel)
            by_url = clip_pb2.Input(url=f"{host.url}/img.png")
            request = clip_pb2.EncodeRequest(inputs=[by_url, grpc_input(image)])
            fetched, sent = stub.Encode(request).embeddings
            assert fetched.modality == clip_pb2.MODALITY_IMAGE
            np.testing.assert_allclose(unpack(fetched.vector), unpack(sent.vector), atol=1e-6)
            missing = clip_pb2.EncodeRequest(inputs=[clip_pb2.Input(url=f"{host.url}/gone")])
            failed = grpc_failure(grpc.StatusCode.INVALID_ARGUMENT, lambda: stub.Encode(missing))
            assert "404" in failed.details()
            ftp = clip_pb2.EncodeRequest(inputs=[clip_pb2.Input(url="ftp://example.com/a.png")])
            failed = grpc_failure(grpc.StatusCode.INVALID_ARGUMENT, lambda: stub.Encode(ftp))
            assert "http and https" in failed.details()
    finally:
        host.http.shutdown()
