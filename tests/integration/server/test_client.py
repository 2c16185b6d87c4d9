"""``clipserve.Client`` / ``AsyncClient`` over HTTP against the real server on loopback.

Expected vectors come from the server's own ``/v1/encode`` answer to the same inputs sent by
hand, so these tests check the client (input forms, batching, order, errors), not the model.
"""

from __future__ import annotations

import asyncio
import base64
import io
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from servertools import GatedSession, LiveServer, live_server, png

import clipserve
from clipserve.client import (
    AsyncClient,
    AuthenticationError,
    Client,
    Retry,
    ServiceUnavailableError,
)
from clipserve.engine import Engine
from clipserve.errors import InvalidImageError, InvalidInputError, ModelNotFoundError
from clipserve.server.app import create_app
from clipserve.server.settings import ServerSettings
from clipserve.testing.synthetic import COLORS, SHAPES, caption_for, make_item

ATOL = 1e-5


# ------------------------------------------------------------------ helpers
def server_vectors(url: str, inputs: list[dict[str, str]], **headers: str) -> np.ndarray:
    """What ``/v1/encode`` answers for explicit input objects, as float32 rows."""
    with httpx.Client(base_url=url, timeout=120, headers=headers) as http:
        response = http.post("/v1/encode", json={"inputs": inputs, "encoding": "base64"})
    assert response.status_code == 200, response.text
    rows = [base64.b64decode(row["embedding"]) for row in response.json()["data"]]
    return np.stack([np.frombuffer(row, "<f4") for row in rows])


def image_input(data: bytes) -> dict[str, str]:
    return {"image": base64.b64encode(data).decode()}


def metric(url: str, name: str, key: str | None = None, **labels: str) -> float:
    """A Prometheus counter of the server (summed over the label sets matching ``labels``)."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    text = httpx.get(f"{url}/metrics", headers=headers, timeout=30).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def encode_requests(url: str, status: str, key: str | None = None) -> float:
    """How many ``/v1/encode`` requests the server answered with ``status``."""
    return metric(url, "clipserve_http_requests_total", key, route="/v1/encode", status=status)


def free_port() -> int:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port: int = probe.getsockname()[1]
    probe.close()
    return port


class AppServer:
    """The HTTP app, behind an optional ASGI wrapper, served on a chosen loopback port.

    Unlike servertools' LiveServer (a new free port each time) it can bind a port again
    after a stop — what a restart test needs.
    """

    def __init__(
        self,
        settings: ServerSettings,
        port: int = 0,
        wrap: Callable[[Any], Any] | None = None,
        graceful_seconds: int = 5,
    ) -> None:
        self.app = create_app(settings)
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", port))
        self.port: int = self._socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        asgi = wrap(self.app) if wrap is not None else self.app
        config = uvicorn.Config(
            asgi, log_level="critical", lifespan="on", timeout_graceful_shutdown=graceful_seconds
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )

    @property
    def engine(self) -> Engine:
        engine: Engine = self.app.state.clipserve.ready_engine()
        return engine

    def start(self) -> AppServer:
        self._thread.start()
        wait_for(lambda: self._server.started, "the server to start")
        return self

    def wait_ready(self) -> AppServer:
        wait_for(lambda: httpx.get(f"{self.url}/readyz").status_code == 200, "readiness")
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(60)
        self._socket.close()


class Background:
    """Run ``call()`` in a daemon thread; :meth:`result` joins it and returns or raises."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self._value: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(call,), daemon=True)
        self._thread.start()

    def _run(self, call: Callable[[], Any]) -> None:
        try:
            self._value = call()
        except BaseException as exc:
            self._error = exc

    def result(self, seconds: float = 300.0) -> Any:
        self._thread.join(seconds)
        assert not self._thread.is_alive(), "the call did not finish"
        if self._error is not None:
            raise self._error
        return self._value


def wait_for(condition: Callable[[], bool], what: str, seconds: float = 120.0) -> None:
    """Poll ``condition`` until true; fail the test after ``seconds`` (a hang guard only)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def shape_image(color: str, shape: str, seed: int) -> Image.Image:
    return make_item(np.random.default_rng(seed), color, shape).image


class ImageHost:
    """A loopback HTTP server answering every GET with one PNG."""

    def __init__(self, body: bytes) -> None:
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture()
def client(server: LiveServer) -> Iterator[Client]:
    with Client(server.url) as running:
        yield running


# ------------------------------------------------------------------ encode
def test_every_input_form_in_one_call_matches_the_server(
    client: Client, server: LiveServer, shape_pngs: list[bytes], tmp_path: Path
) -> None:
    photo = shape_image("red", "circle", 3)
    pixels = np.asarray(shape_image("blue", "square", 4).convert("RGB"))
    path = tmp_path / "shape.png"
    path.write_bytes(shape_pngs[2])
    uri = "data:image/png;base64," + base64.b64encode(shape_pngs[3]).decode()
    items: list[Any] = [
        "a photo of a red circle",
        shape_pngs[0],  # bytes
        bytearray(shape_pngs[1]),
        path,  # a file, read by the client
        str(path),  # a str is a text, even when it names a file
        photo,  # PIL image
        pixels,  # H×W×3 uint8
        uri,
        "https://example.com is a sentence, not a URL",
    ]
    expected = server_vectors(
        server.url,
        [
            {"text": "a photo of a red circle"},
            image_input(shape_pngs[0]),
            image_input(shape_pngs[1]),
            image_input(shape_pngs[2]),
            {"text": str(path)},
            image_input(png(photo)),
            image_input(png(Image.fromarray(pixels))),
            image_input(shape_pngs[3]),
            {"text": "https://example.com is a sentence, not a URL"},
        ],
    )
    got = client.encode(items)
    assert got.dtype == np.float32
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=ATOL)
    norms = np.linalg.norm(client.encode(items[:2], normalize=False), axis=1)
    assert not np.allclose(norms, 1.0)  # normalize=False reaches the server


def test_url_inputs_are_fetched_by_the_server(make_settings: Any) -> None:
    image = png(shape_image("green", "triangle", 7))
    host = ImageHost(image)
    settings = make_settings(allow_url_fetch=True, allow_private_urls=True)
    try:
        with live_server(settings) as server, Client(server.url) as client:
            got = client.encode([f"{host.url}/shape.png", "a green triangle"])
            expected = server_vectors(
                server.url, [image_input(image), {"text": "a green triangle"}]
            )
            np.testing.assert_allclose(got, expected, atol=ATOL)
    finally:
        host.close()


def mixed_items(count: int, pngs: list[bytes]) -> tuple[list[Any], list[dict[str, str]]]:
    """``count`` items cycling through texts, bytes, PIL images and arrays (every text unique,
    so a row in the wrong place cannot go unnoticed), with the matching server inputs."""
    items: list[Any] = []
    inputs: list[dict[str, str]] = []
    for index in range(count):
        data = pngs[index % len(pngs)]
        kind = index % 4
        if kind in (0, 2):
            text = f"a photo of item number {index}"
            items.append(text)
            inputs.append({"text": text})
        elif kind == 1:
            items.append(data)
            inputs.append(image_input(data))
        else:
            image = Image.open(io.BytesIO(data)).convert("RGB")
            items.append(image if index % 8 == 3 else np.asarray(image))
            inputs.append(image_input(png(image)))
    return items, inputs


def test_order_is_kept_across_many_concurrent_batches(
    server: LiveServer, shape_pngs: list[bytes]
) -> None:
    items, inputs = mixed_items(500, shape_pngs)
    expected = server_vectors(server.url, inputs)
    with Client(server.url, max_concurrency=6) as client:
        got = client.encode(items, batch_size=16)
    assert got.shape == (500, expected.shape[1])
    np.testing.assert_allclose(got, expected, atol=ATOL)


class _InFlight:
    """ASGI wrapper counting ``/v1/encode`` requests in flight, and the most at once."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.now = 0
        self.most = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/v1/encode":
            await self.app(scope, receive, send)
            return
        self.now += 1
        self.most = max(self.most, self.now)
        try:
            await self.app(scope, receive, send)
        finally:
            self.now -= 1


def test_batches_go_out_concurrently_up_to_the_bound(
    make_settings: Any, shape_pngs: list[bytes]
) -> None:
    counters: list[_InFlight] = []

    def wrap(app: Any) -> Any:
        counters.append(_InFlight(app))
        return counters[0]

    server = AppServer(make_settings(), wrap=wrap).start().wait_ready()
    try:
        clip = server.engine.model()
        gate = threading.Event()
        clip.visual = session = GatedSession(clip.visual, gate)
        images = [shape_pngs[index % 8] for index in range(24)]
        with Client(server.url, max_concurrency=3) as client:
            call = Background(lambda: client.encode(images, batch_size=2))
            try:
                assert session.entered.wait(60)
                # The model holds the first batch: the client has sent all it may, no more.
                wait_for(lambda: counters[0].now == 3, "three requests in flight")
            finally:
                gate.set()
            vectors = call.result()
        assert counters[0].most == 3
        expected = server_vectors(server.url, [image_input(data) for data in images])
        np.testing.assert_allclose(vectors, expected, atol=ATOL)
    finally:
        server.stop()


def test_progress_bar_counts_items(
    client: Client, capsys: pytest.CaptureFixture[str], shape_pngs: list[bytes]
) -> None:
    items = [f"text {index}" for index in range(37)] + shape_pngs[:3]
    client.encode(items, batch_size=8)
    assert capsys.readouterr().err == ""
    client.encode(items, batch_size=8, show_progress=True)
    err = capsys.readouterr().err
    assert "encode" in err
    assert "40/40" in err


def test_async_client_runs_calls_concurrently(server: LiveServer) -> None:
    texts = [f"a photo of thing {index}" for index in range(40)]

    async def run() -> list[np.ndarray]:
        async with AsyncClient(server.url) as client:
            return list(
                await asyncio.gather(
                    client.encode(texts[:20], batch_size=3), client.encode(texts[20:], batch_size=7)
                )
            )

    first, second = asyncio.run(run())
    expected = server_vectors(server.url, [{"text": text} for text in texts])
    np.testing.assert_allclose(np.concatenate([first, second]), expected, atol=ATOL)


def test_package_exports_the_clients_lazily() -> None:
    assert clipserve.Client is Client
    assert clipserve.AsyncClient is AsyncClient
    with pytest.raises(ValueError, match="grpc://"):
        Client("ftp://example.com")


# ------------------------------------------------------------------ errors
def test_bad_input_is_a_typed_error_and_is_not_retried(
    client: Client, server: LiveServer, shape_pngs: list[bytes]
) -> None:
    before = encode_requests(server.url, "400")
    with pytest.raises(InvalidImageError, match="not an image") as caught:
        client.encode(["a text", shape_pngs[0], b"these bytes are no image"], batch_size=2)
    assert "items[2:3]" in str(caught.value)  # the batch, by position in the call
    assert encode_requests(server.url, "400") - before == 1
    before_404 = encode_requests(server.url, "404")
    with pytest.raises(ModelNotFoundError, match="not served"):
        client.encode(["a text"], model="no-such-model")
    assert encode_requests(server.url, "404") - before_404 == 1


def test_inputs_the_client_cannot_send_fail_before_any_request(
    client: Client, server: LiveServer
) -> None:
    before = metric(server.url, "clipserve_http_requests_total", route="/v1/encode")
    with pytest.raises(InvalidInputError, match=r"items\[1\]: a dict is not an input"):
        client.encode(["a text", {"text": "no"}])  # type: ignore[list-item]
    with pytest.raises(InvalidInputError, match="must be a list"):
        client.encode("a bare string")
    with pytest.raises(InvalidInputError, match="must not be empty"):
        client.encode([])
    with pytest.raises(InvalidImageError, match="uint8"):
        client.encode([np.zeros((4, 4, 3), np.float32)])
    with pytest.raises(InvalidInputError, match="cannot read"):
        client.encode([Path("/nonexistent/clipserve-test.png")])
    assert metric(server.url, "clipserve_http_requests_total", route="/v1/encode") == before


def test_api_key_header_from_argument_or_environment(
    make_settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CLIPSERVE_API_KEY", raising=False)
    with live_server(make_settings(api_keys=["s3cret"])) as server:
        headers = {"Authorization": "Bearer s3cret"}
        for key in (None, "wrong"):
            with Client(server.url, api_key=key) as client, pytest.raises(AuthenticationError):
                client.encode(["a text"])
        # Refused keys are not retried: one request each.
        assert encode_requests(server.url, "401", key="s3cret") == 2
        expected = server_vectors(server.url, [{"text": "a text"}], **headers)
        with Client(server.url, api_key="s3cret") as client:
            np.testing.assert_allclose(client.encode(["a text"]), expected, atol=ATOL)
            assert client.models()[0].default
        monkeypatch.setenv("CLIPSERVE_API_KEY", "s3cret")
        with Client(server.url) as client:
            np.testing.assert_allclose(client.encode(["a text"]), expected, atol=ATOL)


# --------------------------------------------------- rank, classify, models, health
def test_rank_matches_the_server(client: Client, server: LiveServer) -> None:
    image = png(shape_image("red", "circle", 1))
    captions = [caption_for(color, "circle") for color in list(COLORS)[:4]]
    body = {"query": image_input(image), "candidates": [{"text": c} for c in captions]}
    expected = httpx.post(f"{server.url}/v1/rank", json=body, timeout=60).json()
    result = client.rank(image, captions)
    assert result.model == expected["model"]
    assert [score.index for score in result.scores] == [r["index"] for r in expected["results"]]
    assert captions[result.best.index] == caption_for("red", "circle")
    for score, row in zip(result.scores, expected["results"], strict=True):
        assert score.probability == pytest.approx(row["probability"], abs=ATOL)
        assert score.cosine == pytest.approx(row["cosine"], abs=ATOL)
    # A text query against images, given as PIL images.
    images = [shape_image(color, "square", 10 + i) for i, color in enumerate(list(COLORS)[:3])]
    ranked = client.rank(caption_for(list(COLORS)[1], "square"), images)
    assert ranked.best.index == 1


def test_classify_matches_the_server(client: Client, server: LiveServer) -> None:
    images = [png(shape_image("blue", "triangle", 5)), png(shape_image("green", "square", 6))]
    labels = [f"{color} {shape}" for color in list(COLORS)[:4] for shape in SHAPES[:3]]
    templates = ["a photo of a {}", "a picture of a {}"]
    body = {
        "images": [image_input(image) for image in images],
        "labels": labels,
        "templates": templates,
    }
    expected = httpx.post(f"{server.url}/v1/classify", json=body, timeout=60).json()["results"]
    results = client.classify(images, labels, templates)
    assert [(r.index, r.label) for r in results] == [(e["index"], e["label"]) for e in expected]
    assert [r.label for r in results] == ["blue triangle", "green square"]
    for result, row in zip(results, expected, strict=True):
        assert [s.label for s in result.scores] == [s["label"] for s in row["scores"]]
    with pytest.raises(InvalidInputError, match="classify takes images"):
        client.classify(["a text, not an image"], labels)


def test_models_and_health(client: Client, server: LiveServer) -> None:
    expected = httpx.get(f"{server.url}/v1/models").json()["data"]
    models = client.models()
    assert [vars(model) for model in models] == expected
    health = client.health()
    assert health.ready
    assert health.status == "ready"
    assert health.models == tuple(model.name for model in models)


def test_a_server_whose_model_failed_to_load(make_settings: Any) -> None:
    # Neither a directory, a registry name nor a repo id: loading fails at once.
    settings = make_settings(models=["no-such-model"])
    with (
        live_server(settings, ready=False) as server,
        Client(server.url, retry=Retry(attempts=1)) as client,
    ):
        wait_for(lambda: client.health().status == "failed", "the load to fail")
        health = client.health()
        assert not health.ready
        assert health.error
        with pytest.raises(ServiceUnavailableError, match="failed to load"):
            client.encode(["a text"])


def test_profile_reports_round_trip_and_server_timings(
    client: Client, server: LiveServer, shape_pngs: list[bytes]
) -> None:
    report = client.profile()
    assert report["transport"] == "http"
    assert report["items"] == 2
    assert report["requests"] == 3
    assert report["unavailable"] == []
    for key in ("server_queue_ms", "server_prepare_ms", "server_inference_ms", "overhead_ms"):
        assert report[key] >= 0
    assert report["server_inference_ms"] > 0
    # The server's own time is part of the round trip the client measured.
    assert report["server_total_ms"] <= report["round_trip_ms"]
    custom = client.profile(["a text", shape_pngs[0], shape_pngs[1]], repeat=1)
    assert (custom["items"], custom["requests"]) == (3, 1)


def test_server_timing_header_on_encode(server: LiveServer) -> None:
    response = httpx.post(f"{server.url}/v1/encode", json={"inputs": ["a", "b"]}, timeout=60)
    names = [part.split(";")[0].strip() for part in response.headers["server-timing"].split(",")]
    assert names == ["queue", "prepare", "inference", "total"]


def test_health_of_an_unreachable_server_raises() -> None:
    client = Client(f"http://127.0.0.1:{free_port()}")
    with client, pytest.raises(ServiceUnavailableError, match="ConnectError"):
        client.health()  # a probe: one attempt, no retries
