"""``EncodeStream``: every item answered once, in the order sent, equal to unary ``Encode``;
failing items get their own error and the stream goes on; a bounded window of items in flight;
a client that cancels stops the work."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from servertools import GatedSession, LiveServer, grpc_input, live_server, unpack

from clipserve.server.rpc import stream as rpc_stream
from clipserve.v1 import clip_pb2, clip_pb2_grpc

STREAM_ITEMS = 10_000
CORRUPT_EVERY = 997
IMAGE_EVERY = 250
UNKNOWN_MODEL_EVERY = 2_003


@pytest.fixture()
def stub(grpc_server: LiveServer) -> Iterator[clip_pb2_grpc.ClipStub]:
    with grpc_server.grpc_channel() as channel:
        yield clip_pb2_grpc.ClipStub(channel)


def _request(index: int, item: str | bytes, **fields: Any) -> clip_pb2.EncodeStreamRequest:
    return clip_pb2.EncodeStreamRequest(id=index, input=grpc_input(item), **fields)


def test_items_of_every_kind_equal_unary_encode(
    stub: clip_pb2_grpc.ClipStub, shape_pngs: list[bytes]
) -> None:
    items: list[str | bytes] = ["a red square", shape_pngs[0], "https://example.com/a.png"]
    requests = [_request(7 * i + 1, item) for i, item in enumerate(items)]
    requests.append(_request(100, "a red square", normalize=False))
    requests.append(clip_pb2.EncodeStreamRequest(id=101, input=clip_pb2.Input(url="http://x/y")))
    requests.append(clip_pb2.EncodeStreamRequest(id=102))  # no input at all
    replies = list(stub.EncodeStream(iter(requests)))
    assert [reply.id for reply in replies] == [1, 8, 15, 100, 101, 102]
    unary = stub.Encode(clip_pb2.EncodeRequest(inputs=[grpc_input(item) for item in items]))
    for reply, embedding in zip(replies[:3], unary.embeddings, strict=True):
        assert not reply.HasField("error")
        assert reply.modality == embedding.modality
        assert reply.dim == unary.dim
        np.testing.assert_allclose(unpack(reply.vector), unpack(embedding.vector), atol=1e-6)
    raw = stub.Encode(clip_pb2.EncodeRequest(inputs=[grpc_input("a red square")], normalize=False))
    np.testing.assert_allclose(
        unpack(replies[3].vector), unpack(raw.embeddings[0].vector), rtol=1e-5, atol=1e-6
    )
    assert replies[4].error.code == "INVALID_ARGUMENT"
    assert "CLIPSERVE_ALLOW_URL_FETCH" in replies[4].error.message
    assert not replies[4].vector
    assert replies[5].error.code == "INVALID_ARGUMENT"


def _stream_item(index: int, images: list[bytes]) -> clip_pb2.EncodeStreamRequest:
    if index % CORRUPT_EVERY == 0:
        return _request(index, b"\x89PNG\r\n\x1a\n but truncated")
    if index % UNKNOWN_MODEL_EVERY == 0:
        return _request(index, "a red square", model="no-such-model")
    if index % IMAGE_EVERY == 1:
        return _request(index, images[index % len(images)])
    return _request(index, f"shape number {index % 50}")


def test_ten_thousand_items_each_answered_once_in_order(
    stub: clip_pb2_grpc.ClipStub, shape_pngs: list[bytes]
) -> None:
    """The client sends while it reads (grpc sends from a thread); a few items fail."""
    sent = (_stream_item(index, shape_pngs) for index in range(STREAM_ITEMS))
    replies = list(stub.EncodeStream(sent, timeout=300))
    assert [reply.id for reply in replies] == list(range(STREAM_ITEMS))
    corrupt = [i for i in range(STREAM_ITEMS) if i % CORRUPT_EVERY == 0]
    unknown = [i for i in range(STREAM_ITEMS) if i % UNKNOWN_MODEL_EVERY == 0 and i not in corrupt]
    failed = {reply.id: reply.error for reply in replies if reply.HasField("error")}
    assert sorted(failed) == sorted(corrupt + unknown)
    assert all(failed[i].code == "INVALID_ARGUMENT" for i in corrupt)
    assert all(failed[i].code == "NOT_FOUND" and failed[i].message for i in unknown)
    dim = replies[2].dim
    for reply in replies:
        if reply.id not in failed:
            assert reply.dim == dim
            assert len(reply.vector) == 4 * dim
            image = reply.id % IMAGE_EVERY == 1
            wanted = clip_pb2.MODALITY_IMAGE if image else clip_pb2.MODALITY_TEXT
            assert reply.modality == wanted
    # The same text has the same embedding wherever it was in the stream, and as in Encode.
    unary = stub.Encode(clip_pb2.EncodeRequest(inputs=[grpc_input("shape number 2")]))
    for index in (2, 52, 9952):
        np.testing.assert_allclose(
            unpack(replies[index].vector), unpack(unary.embeddings[0].vector), atol=1e-5
        )


def _metric(text: str, name: str, **labels: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def _cancelled_streams(http: httpx.Client) -> float:
    text = http.get("/metrics").text
    name = "clipserve_grpc_requests_total"
    return _metric(text, name, method="EncodeStream", code="CANCELLED")


def _wait_for(condition: Any, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def _settled(count: list[int], quiet: float = 0.5) -> int:
    """``count[0]`` once it has stopped changing for ``quiet`` seconds."""
    last = -1
    while count[0] != last:
        last = count[0]
        time.sleep(quiet)
    return last


def test_the_window_bounds_work_in_flight_and_a_cancel_drops_it(
    make_settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    window, total = 32, 20_000
    monkeypatch.setattr(rpc_stream, "WINDOW", window)
    padding = "x" * 2_000  # big items: the transport's buffers hold a bounded number
    with live_server(make_settings(grpc_port=0, max_batch_size=4)) as server:
        engine = server.app.state.clipserve.engine
        clip = engine.model()
        gate = threading.Event()
        clip.textual = session = GatedSession(clip.textual, gate)
        batcher = engine.batcher(None, "text")
        pulled = [0]

        def requests() -> Iterator[clip_pb2.EncodeStreamRequest]:
            for index in range(total):
                pulled[0] += 1
                yield _request(index, f"text {index} {padding}")

        with server.grpc_channel() as channel, httpx.Client(base_url=server.url) as http:
            stub = clip_pb2_grpc.ClipStub(channel)
            before = http.get("/metrics").text
            call = stub.EncodeStream(requests())
            try:
                assert session.entered.wait(30)
                # Held at the gate, once the sender is stalled too: the server has read no
                # further than its window (one batch in the model, one prepared, one held by
                # the collector, the rest queued). Unbounded, it would fill the batch queue
                # (1024) and keep the rest waiting in memory.
                assert _settled(pulled) < total
                assert 0 < batcher.queue_depth <= window
                call.cancel()
                # The server counts the call once it has cancelled every item in flight.
                _wait_for(lambda: _cancelled_streams(http) == 1)
            finally:
                gate.set()
            # A probe makes the batcher go through what was queued: dropped, not run.
            stub.Encode(clip_pb2.EncodeRequest(inputs=[grpc_input("probe")]))
            after = http.get("/metrics").text
    encoded = _metric(after, "clipserve_items_encoded_total", modality="text") - _metric(
        before, "clipserve_items_encoded_total", modality="text"
    )
    # The batch that was in the model when the client left, and the probe; nothing else.
    assert 1 <= encoded <= 4 + 1
    assert _metric(after, "clipserve_items_dropped_total", modality="text") >= 1
    assert call.code() == grpc.StatusCode.CANCELLED
