"""``clipserve.Client`` over gRPC (``grpc://``) against the real server's gRPC port.

The same server answers HTTP too, so its ``/v1/encode`` vectors are the expected ones.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from servertools import GatedSession, LiveServer, live_server, png
from test_client import (
    ATOL,
    AppServer,
    Background,
    free_port,
    image_input,
    metric,
    mixed_items,
    server_vectors,
    shape_image,
    wait_for,
)

from clipserve.client import AuthenticationError, Client, Retry
from clipserve.errors import InvalidInputError, ModelNotFoundError
from clipserve.models.runtime import EmbeddingSession
from clipserve.testing.synthetic import COLORS, caption_for


def grpc_url(server: LiveServer) -> str:
    return f"grpc://127.0.0.1:{server.grpc_port}"


def grpc_calls(server: LiveServer, code: str, key: str | None = None) -> float:
    """How many ``Encode`` calls the server ended with status ``code``."""
    return metric(server.url, "clipserve_grpc_requests_total", key, method="Encode", code=code)


@pytest.fixture()
def client(grpc_server: LiveServer) -> Iterator[Client]:
    with Client(grpc_url(grpc_server)) as running:
        yield running


def test_mixed_inputs_in_order_equal_http_encode(
    client: Client, grpc_server: LiveServer, shape_pngs: list[bytes]
) -> None:
    items, inputs = mixed_items(300, shape_pngs)
    expected = server_vectors(grpc_server.url, inputs)
    got = client.encode(items, batch_size=16)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=ATOL)
    raw = client.encode(items[:2], normalize=False)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)


def test_rank_classify_models_health(client: Client, grpc_server: LiveServer) -> None:
    image = png(shape_image("red", "circle", 1))
    captions = [caption_for(color, "circle") for color in list(COLORS)[:4]]
    ranked = client.rank(image, captions)
    with Client(grpc_server.url) as http:
        expected = http.rank(image, captions)
        assert client.classify([image], captions) == http.classify([image], captions)
        assert client.models() == http.models()
    assert [score.index for score in ranked.scores] == [s.index for s in expected.scores]
    for score, other in zip(ranked.scores, expected.scores, strict=True):
        assert score.cosine == pytest.approx(other.cosine, abs=ATOL)
    assert captions[ranked.best.index] == caption_for("red", "circle")
    health = client.health()
    assert health.ready
    assert health.models == tuple(model.name for model in client.models())


def test_errors_are_typed_and_bad_input_is_not_retried(
    client: Client, grpc_server: LiveServer, shape_pngs: list[bytes]
) -> None:
    before = grpc_calls(grpc_server, "INVALID_ARGUMENT")
    with pytest.raises(InvalidInputError, match="INVALID_ARGUMENT"):
        client.encode([shape_pngs[0], b"these bytes are no image"])
    assert grpc_calls(grpc_server, "INVALID_ARGUMENT") - before == 1
    with pytest.raises(ModelNotFoundError):
        client.encode(["a text"], model="no-such-model")


def test_api_key_goes_as_metadata(make_settings: Any) -> None:
    with live_server(make_settings(grpc_port=0, api_keys=["s3cret"])) as server:
        for key in (None, "wrong"):
            with (
                Client(grpc_url(server), api_key=key) as client,
                pytest.raises(AuthenticationError),
            ):
                client.encode(["a text"])
        assert grpc_calls(server, "UNAUTHENTICATED", key="s3cret") == 2
        expected = server_vectors(server.url, [{"text": "a text"}], Authorization="Bearer s3cret")
        with Client(grpc_url(server), api_key="s3cret") as client:
            np.testing.assert_allclose(client.encode(["a text"]), expected, atol=ATOL)


def test_profile_says_what_grpc_does_not_report(client: Client) -> None:
    report = client.profile(repeat=2)
    assert report["transport"] == "grpc"
    assert report["round_trip_ms"] > 0
    assert report["server_inference_ms"] is None
    assert "server_queue_ms" in report["unavailable"]


def test_resource_exhausted_is_retried_until_served(
    make_settings: Any, grpc_server: LiveServer, shape_pngs: list[bytes]
) -> None:
    settings = make_settings(grpc_port=0, max_queue=2, max_batch_size=2, preprocess_workers=1)
    images = [shape_pngs[index % 8] for index in range(24)]
    # A queue of 2 cannot take the reference request: the shared server answers that.
    expected = server_vectors(grpc_server.url, [image_input(data) for data in images])
    with live_server(settings) as small:
        clip = small.app.state.clipserve.engine.model()
        gate = threading.Event()
        clip.visual = session = GatedSession(clip.visual, gate)
        before = grpc_calls(small, "RESOURCE_EXHAUSTED")
        retry = Retry(attempts=50, deadline=300)
        with Client(grpc_url(small), max_concurrency=8, retry=retry) as client:
            call = Background(lambda: client.encode(images, batch_size=2))
            try:
                assert session.entered.wait(60)
                wait_for(lambda: grpc_calls(small, "RESOURCE_EXHAUSTED") > before, "a full queue")
            finally:
                gate.set()
            vectors = call.result()
    np.testing.assert_allclose(vectors, expected, atol=ATOL)


class _StallAfter:
    """Model sessions that run ``count`` batches (counted across the towers sharing it), then
    stall every later batch until ``release`` is set."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.runs = 0
        self.stalled = 0
        self.release = threading.Event()
        self._lock = threading.Lock()

    def wrap(self, inner: EmbeddingSession) -> Any:
        outer = self

        class Session:
            def run(self, batch: np.ndarray) -> np.ndarray:
                with outer._lock:
                    outer.runs += 1
                    stall = outer.runs > outer.count
                    outer.stalled += stall
                if stall:
                    outer.release.wait(120)
                return inner.run(batch)

        return Session()


def test_a_restart_mid_run_loses_and_repeats_nothing(
    make_settings: Any, shape_pngs: list[bytes]
) -> None:
    port = free_port()
    settings = make_settings(grpc_port=port, graceful_shutdown_seconds=1)
    items, inputs = mixed_items(400, shape_pngs)
    first = AppServer(settings).start().wait_ready()
    stall = _StallAfter(count=10)
    clip = first.engine.model()
    clip.visual, clip.textual = stall.wrap(clip.visual), stall.wrap(clip.textual)
    retry = Retry(attempts=60, max_backoff=1.0, deadline=300)
    with Client(f"grpc://127.0.0.1:{port}", retry=retry, max_concurrency=4) as client:
        call = Background(lambda: client.encode(items, batch_size=8))
        try:
            wait_for(lambda: stall.stalled >= 1, "a call stalled on the dying server")
            first.stop()  # calls in flight are cancelled after the 1 s grace
        finally:
            stall.release.set()
        second = AppServer(settings).start()
        try:
            vectors = call.result()
            served = metric(second.url, "clipserve_grpc_requests_total", method="Encode", code="OK")
            expected = server_vectors(second.url, inputs)
        finally:
            second.stop()
    assert served > 0
    assert vectors.shape == expected.shape
    np.testing.assert_allclose(vectors, expected, atol=ATOL)
