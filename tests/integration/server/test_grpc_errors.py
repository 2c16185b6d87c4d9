"""gRPC errors: every failure has its documented status code and a message naming the input;
limits match HTTP's; overload and loading carry ``retry-after``; a bug is INTERNAL and reveals
nothing; the server keeps serving after each."""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from PIL import Image
from servertools import (
    GatedSession,
    LiveServer,
    grpc_failure,
    grpc_input,
    live_server,
    png,
    trailer,
)

from clipserve.errors import (
    ClipServeError,
    ExportUnavailableError,
    ImageTooLargeError,
    InvalidImageError,
    InvalidInputError,
    ModelNotFoundError,
    ModelUnavailableError,
    OverloadedError,
    RequestTimeoutError,
    TextTooLongError,
)
from clipserve.server.errors import (
    NotReadyError,
    PayloadTooLargeError,
    TooManyItemsError,
    UnauthorizedError,
    UrlFetchError,
    UrlNotAllowedError,
)
from clipserve.server.rpc.codes import code_of
from clipserve.v1 import clip_pb2, clip_pb2_grpc

Code = grpc.StatusCode
BODY_LIMIT = 64 * 1024
ITEM_LIMIT = 8
PIXEL_LIMIT = 100_000
TEXT_LIMIT = 200


@pytest.fixture()
def stub(grpc_server: LiveServer) -> Iterator[clip_pb2_grpc.ClipStub]:
    with grpc_server.grpc_channel() as channel:
        yield clip_pb2_grpc.ClipStub(channel)


@pytest.fixture(scope="module")
def limited(make_settings: Any) -> Iterator[LiveServer]:
    settings = make_settings(
        grpc_port=0,
        max_body_bytes=BODY_LIMIT,
        max_items_per_request=ITEM_LIMIT,
        max_image_pixels=PIXEL_LIMIT,
        max_text_chars=TEXT_LIMIT,
    )
    with live_server(settings) as running:
        yield running


@pytest.fixture()
def limited_stub(limited: LiveServer) -> Iterator[clip_pb2_grpc.ClipStub]:
    with limited.grpc_channel() as channel:
        yield clip_pb2_grpc.ClipStub(channel)


def _encode(*items: str | bytes | clip_pb2.Input, model: str = "") -> clip_pb2.EncodeRequest:
    inputs = [item if isinstance(item, clip_pb2.Input) else grpc_input(item) for item in items]
    return clip_pb2.EncodeRequest(inputs=inputs, model=model)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InvalidInputError("x"), Code.INVALID_ARGUMENT),
        (InvalidImageError("x"), Code.INVALID_ARGUMENT),
        (UrlNotAllowedError("x"), Code.INVALID_ARGUMENT),
        (UrlFetchError("x"), Code.INVALID_ARGUMENT),
        (PayloadTooLargeError("x"), Code.RESOURCE_EXHAUSTED),
        (TooManyItemsError("x"), Code.RESOURCE_EXHAUSTED),
        (ImageTooLargeError("x"), Code.RESOURCE_EXHAUSTED),
        (TextTooLongError("x"), Code.RESOURCE_EXHAUSTED),
        (OverloadedError("x"), Code.RESOURCE_EXHAUSTED),
        (ModelNotFoundError("x"), Code.NOT_FOUND),
        (RequestTimeoutError("x"), Code.DEADLINE_EXCEEDED),
        (NotReadyError("x"), Code.UNAVAILABLE),
        (ModelUnavailableError("x"), Code.UNAVAILABLE),
        (UnauthorizedError("x"), Code.UNAUTHENTICATED),
        (ExportUnavailableError("x"), Code.INTERNAL),
    ],
)
def test_error_table(error: ClipServeError, code: grpc.StatusCode) -> None:
    assert code_of(error) == code


def test_bad_inputs_are_invalid_argument_naming_the_input(
    stub: clip_pb2_grpc.ClipStub, shape_pngs: list[bytes]
) -> None:
    truncated = shape_pngs[0][:40]
    cases: list[tuple[Any, Any, str]] = [
        (stub.Encode, _encode("fine", b"not an image at all"), "inputs[1]: not an image"),
        (stub.Encode, _encode(shape_pngs[0], b""), "inputs[1]: image is empty"),
        (stub.Encode, _encode("a", "b", clip_pb2.Input()), "inputs[2]: an input needs one of"),
        (stub.Encode, _encode(), "must not be empty"),
        (stub.Encode, _encode(truncated), "image"),
        (stub.Rank, clip_pb2.RankRequest(candidates=[grpc_input("a")]), "query: an input"),
        (stub.Rank, clip_pb2.RankRequest(query=grpc_input("a")), "must not be empty"),
        (
            stub.Classify,
            clip_pb2.ClassifyRequest(images=[grpc_input("a cat")], labels=["cat"]),
            "images[0] is a text",
        ),
        (
            stub.Classify,
            clip_pb2.ClassifyRequest(
                images=[grpc_input(shape_pngs[0])], labels=["cat"], templates=["no placeholder"]
            ),
            "must be a string with one '{}' for the label",
        ),
        (
            stub.Classify,
            clip_pb2.ClassifyRequest(images=[grpc_input(shape_pngs[0])]),
            "labels must not be empty",
        ),
    ]
    for method, request, message in cases:
        failed = grpc_failure(Code.INVALID_ARGUMENT, lambda m=method, r=request: m(r))
        assert message in failed.details(), (message, failed.details())
    # Still serving.
    assert len(stub.Encode(_encode("a red square")).embeddings) == 1


def test_an_unknown_model_is_not_found(stub: clip_pb2_grpc.ClipStub) -> None:
    calls = [
        lambda: stub.Encode(_encode("a", model="no-such-model")),
        lambda: stub.Rank(
            clip_pb2.RankRequest(
                query=grpc_input("a"), candidates=[grpc_input("b")], model="no-such-model"
            )
        ),
    ]
    for call in calls:
        failed = grpc_failure(Code.NOT_FOUND, call)
        assert "no-such-model" in failed.details()


def test_limits_are_resource_exhausted(limited_stub: clip_pb2_grpc.ClipStub) -> None:
    too_many = _encode(*[f"text {i}" for i in range(ITEM_LIMIT + 1)])
    failed = grpc_failure(Code.RESOURCE_EXHAUSTED, lambda: limited_stub.Encode(too_many))
    assert "CLIPSERVE_MAX_ITEMS_PER_REQUEST" in failed.details()
    ranked = clip_pb2.RankRequest(
        query=grpc_input("q"), candidates=[grpc_input(str(i)) for i in range(ITEM_LIMIT)]
    )
    grpc_failure(Code.RESOURCE_EXHAUSTED, lambda: limited_stub.Rank(ranked))
    too_long = _encode("ok", "x" * (TEXT_LIMIT + 1))
    failed = grpc_failure(Code.RESOURCE_EXHAUSTED, lambda: limited_stub.Encode(too_long))
    assert "inputs[1]" in failed.details()
    assert "CLIPSERVE_MAX_TEXT_CHARS" in failed.details()
    big = png(Image.new("RGB", (400, 300), (1, 2, 3)))  # 120,000 pixels, a small file
    failed = grpc_failure(Code.RESOURCE_EXHAUSTED, lambda: limited_stub.Encode(_encode(big)))
    assert "CLIPSERVE_MAX_IMAGE_PIXELS" in failed.details()
    assert len(limited_stub.Encode(_encode("x" * TEXT_LIMIT)).embeddings) == 1


def test_the_message_size_limit_is_max_body_bytes(
    limited: LiveServer, limited_stub: clip_pb2_grpc.ClipStub
) -> None:
    noise = np.random.default_rng(0).integers(0, 255, BODY_LIMIT, dtype=np.uint8).tobytes()
    grpc_failure(Code.RESOURCE_EXHAUSTED, lambda: limited_stub.Encode(_encode(noise)))
    # Compression does not get past it: the limit holds for the decompressed message.
    zeros = _encode(b"\0" * (4 * BODY_LIMIT))
    assert len(gzip.compress(zeros.SerializeToString())) < BODY_LIMIT // 64
    grpc_failure(
        Code.RESOURCE_EXHAUSTED,
        lambda: limited_stub.Encode(zeros, compression=grpc.Compression.Gzip),
    )
    assert len(limited_stub.Encode(_encode("still serving")).embeddings) == 1


def _noise_png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    return png(Image.fromarray(pixels))


def test_a_full_queue_is_resource_exhausted_with_retry_after(make_settings: Any) -> None:
    # One image at a time: one in the model (held at the gate), one prepared and waiting for
    # it, one prepared by the collector, one in the queue — which is then full.
    settings = make_settings(grpc_port=0, max_batch_size=1, max_queue=1, preprocess_workers=1)
    with live_server(settings) as server, server.grpc_channel() as channel:
        stub = clip_pb2_grpc.ClipStub(channel)
        engine = server.app.state.clipserve.engine
        clip = engine.model()
        gate = threading.Event()
        clip.visual = session = GatedSession(clip.visual, gate)
        try:
            first = stub.Encode.future(_encode(_noise_png(0)))
            assert session.entered.wait(30)
            batcher = engine.batcher(None, "image")
            # One at a time, each settled in its stage before the next is sent: sent at once,
            # a second could find the first still queued and be refused early.
            waiting = []
            for i, settled in ((1, (0, 2)), (2, (0, 3)), (3, (1, 3))):
                waiting.append(stub.Encode.future(_encode(_noise_png(i))))
                deadline = time.monotonic() + 30
                while (batcher.queue_depth, batcher.in_flight) != settled:
                    assert time.monotonic() < deadline, (batcher.queue_depth, batcher.in_flight)
                    time.sleep(0.01)
            failed = grpc_failure(
                Code.RESOURCE_EXHAUSTED, lambda: stub.Encode(_encode(_noise_png(4)))
            )
            assert "queued" in failed.details()
            assert int(trailer(failed, "retry-after") or 0) >= 1
        finally:
            gate.set()
        for call in (first, *waiting):
            assert len(call.result(timeout=60).embeddings) == 1
        assert len(stub.Encode(_encode(_noise_png(5))).embeddings) == 1


def test_no_result_within_the_request_timeout_is_deadline_exceeded(make_settings: Any) -> None:
    with live_server(make_settings(grpc_port=0, request_timeout=0.5)) as server:
        clip = server.app.state.clipserve.engine.model()
        gate = threading.Event()
        clip.visual = GatedSession(clip.visual, gate)
        with server.grpc_channel() as channel:
            stub = clip_pb2_grpc.ClipStub(channel)
            try:
                failed = grpc_failure(
                    Code.DEADLINE_EXCEEDED, lambda: stub.Encode(_encode(_noise_png(0)))
                )
                assert "no result within" in failed.details()
            finally:
                gate.set()


class _Broken:
    """A text tower with a bug: it raises an error that must never reach the client."""

    def run(self, batch: Any) -> Any:
        raise RuntimeError("secret internals: /srv/model.onnx at 0xdeadbeef")


def test_a_bug_is_internal_and_reveals_nothing(
    limited: LiveServer, limited_stub: clip_pb2_grpc.ClipStub, caplog: pytest.LogCaptureFixture
) -> None:
    clip = limited.app.state.clipserve.engine.model()
    working = clip.textual
    clip.textual = _Broken()
    try:
        failed = grpc_failure(Code.INTERNAL, lambda: limited_stub.Encode(_encode("a cat")))
    finally:
        clip.textual = working
    assert "secret" not in failed.details()
    assert "0xdeadbeef" not in failed.details()
    assert "internal server error" in failed.details()
    incident = failed.details().rsplit(" ", 1)[-1].rstrip(")")
    assert any(incident in record.getMessage() for record in caplog.records)
    assert len(limited_stub.Encode(_encode("a cat")).embeddings) == 1
