"""``/v1/stream``: streaming encode over a real WebSocket on loopback."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from servertools import GatedSession, LiveServer, b64, data_uri, live_server
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from clipserve.server.routes import stream as stream_route

STREAM_ITEMS = 10_000
CORRUPT_EVERY = 997


def _ws_url(server: LiveServer, query: str = "") -> str:
    return server.url.replace("http://", "ws://") + "/v1/stream" + (f"?{query}" if query else "")


def _open(server: LiveServer, query: str = "", **kwargs: Any) -> ClientConnection:
    return connect(_ws_url(server, query), open_timeout=30, max_size=None, **kwargs)


def _replies(ws: ClientConnection) -> Iterator[dict[str, Any]]:
    while True:
        message = json.loads(ws.recv(timeout=120))
        yield message
        if message.get("done"):
            return


def _native(server: LiveServer, inputs: list[Any]) -> np.ndarray:
    with server.client() as http:
        response = http.post("/v1/encode", json={"inputs": inputs})
    assert response.status_code == 200, response.text
    return np.array([row["embedding"] for row in response.json()["data"]], dtype=np.float32)


def test_items_of_every_form_come_back_in_order_equal_to_v1_encode(
    server: LiveServer, shape_pngs: list[bytes]
) -> None:
    texts = ["a red circle", "a blue square"]
    with _open(server) as ws:
        ws.send(json.dumps({"id": "t0", "input": texts[0]}))
        ws.send(json.dumps({"id": {"any": "json"}, "input": data_uri(shape_pngs[0])}))
        ws.send(shape_pngs[1])  # a binary frame: one image file
        ws.send(json.dumps({"input": {"image": b64(shape_pngs[2])}}))
        ws.send(json.dumps({"id": 9, "input": {"text": texts[1]}}))
        ws.send(json.dumps({"end": True}))
        replies = list(_replies(ws))
    done = replies.pop()
    assert done == {"done": True, "items": 5, "errors": 0}
    assert [reply["index"] for reply in replies] == [0, 1, 2, 3, 4]
    assert [reply["id"] for reply in replies] == ["t0", {"any": "json"}, 2, 3, 9]
    assert [reply["modality"] for reply in replies] == ["text", "image", "image", "image", "text"]
    images = [data_uri(data) for data in shape_pngs[:3]]
    expected = _native(server, [texts[0], *images, texts[1]])
    got = np.array([reply["embedding"] for reply in replies], dtype=np.float32)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_base64_encoding_and_options_come_from_the_query(server: LiveServer) -> None:
    with _open(server, "encoding=base64&normalize=false") as ws:
        ws.send(json.dumps({"input": "a green triangle"}))
        ws.send(json.dumps({"end": True}))
        reply, done = list(_replies(ws))
    assert done["items"] == 1
    vector = np.frombuffer(base64.b64decode(reply["embedding"]), dtype="<f4")
    with server.client() as http:
        body = {"inputs": ["a green triangle"], "normalize": False}
        native = http.post("/v1/encode", json=body).json()["data"][0]["embedding"]
    np.testing.assert_allclose(vector, native, atol=1e-5)
    assert abs(float(np.linalg.norm(vector)) - 1.0) > 1e-3  # really not normalised


def test_a_bad_item_gets_its_own_error_and_the_stream_goes_on(server: LiveServer) -> None:
    with _open(server) as ws:
        ws.send(b"this is not an image")
        ws.send("{not json")
        ws.send(json.dumps({"id": 1, "input": 42}))
        ws.send(json.dumps({"id": 2, "input": "ok", "extra": True}))
        ws.send(json.dumps({"id": 3, "input": "data:image/png;base64,@@@"}))
        ws.send(json.dumps({"id": 4, "input": "still fine"}))
        ws.send(json.dumps({"end": True}))
        replies = list(_replies(ws))
    done = replies.pop()
    assert done == {"done": True, "items": 6, "errors": 5}
    kinds = [reply.get("error", {}).get("type") for reply in replies]
    assert kinds == [
        "invalid_image",
        "validation_error",
        "validation_error",
        "validation_error",
        "invalid_image",
        None,
    ]
    assert "malformed JSON" in replies[1]["error"]["message"]
    assert "unknown fields ['extra']" in replies[3]["error"]["message"]
    np.testing.assert_allclose(
        replies[5]["embedding"], _native(server, ["still fine"])[0], atol=1e-5
    )


def test_ten_thousand_items_each_answered_once_in_order(
    server: LiveServer, shape_pngs: list[bytes]
) -> None:
    """Sender and reader run at once, as a real feeder does; a few items are corrupt."""

    def item(index: int) -> str | bytes:
        if index % CORRUPT_EVERY == 0:
            return b"\x89PNG but truncated"
        if index % 100 == 1:
            return shape_pngs[index % len(shape_pngs)]
        return json.dumps({"id": f"item-{index}", "input": f"shape number {index % 50}"})

    with _open(server) as ws:

        def send_all() -> None:
            for index in range(STREAM_ITEMS):
                ws.send(item(index))
            ws.send(json.dumps({"end": True}))

        sender = threading.Thread(target=send_all, daemon=True)
        sender.start()
        replies = list(_replies(ws))
        sender.join(60)
    done = replies.pop()
    corrupt = [index for index in range(STREAM_ITEMS) if index % CORRUPT_EVERY == 0]
    assert done == {"done": True, "items": STREAM_ITEMS, "errors": len(corrupt)}
    assert [reply["index"] for reply in replies] == list(range(STREAM_ITEMS))
    failed = [reply["index"] for reply in replies if "error" in reply]
    assert failed == corrupt
    for reply in replies[2:200:7]:
        if reply["index"] % 100 != 1 and "error" not in reply:
            assert reply["id"] == f"item-{reply['index']}"
            assert reply["modality"] == "text"
    images = [reply for reply in replies if reply["index"] % 100 == 1]
    assert all(reply["modality"] == "image" for reply in images)
    # Texts with the same words have the same embedding wherever they were in the stream.
    same = [replies[i]["embedding"] for i in (2, 52, 9952)]
    np.testing.assert_allclose(same[0], same[1], atol=1e-5)
    np.testing.assert_allclose(same[0], same[2], atol=1e-5)


def test_the_window_bounds_what_a_fast_sender_has_in_flight(
    make_settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    window, sent_total = 8, 200
    monkeypatch.setattr(stream_route, "WINDOW", window)
    with live_server(make_settings(max_batch_size=4)) as server:
        engine = server.app.state.clipserve.engine
        clip = engine.model()
        gate = threading.Event()
        clip.textual = session = GatedSession(clip.textual, gate)
        batcher = engine.batcher(None, "text")
        try:
            with _open(server) as ws:

                def send_all() -> None:
                    for index in range(sent_total):
                        ws.send(json.dumps({"input": f"text {index}"}))
                    ws.send(json.dumps({"end": True}))

                sender = threading.Thread(target=send_all, daemon=True)
                sender.start()
                assert session.entered.wait(30)
                deepest = _deepest_queue(batcher, seconds=1.0)
                gate.set()
                replies = list(_replies(ws))
                sender.join(30)
        finally:
            gate.set()
    # Held at the gate: one batch in the model, the rest of the window queued, no more.
    assert 0 < deepest <= window
    assert replies[-1] == {"done": True, "items": sent_total, "errors": 0}


def _deepest_queue(batcher: Any, seconds: float) -> int:
    deepest, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        deepest = max(deepest, batcher.queue_depth)
        time.sleep(0.01)
    return deepest


def test_api_keys_by_header_or_subprotocol(make_settings: Any) -> None:
    with live_server(make_settings(api_keys=["s3cret"])) as server:
        with _open(server) as ws:
            refusal = json.loads(ws.recv(timeout=30))
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=30)
        assert refusal["error"]["type"] == "unauthorized"
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008

        with _open(server, additional_headers={"Authorization": "Bearer wrong"}) as ws:
            assert json.loads(ws.recv(timeout=30))["error"]["message"] == "invalid API key"

        for kwargs in (
            {"additional_headers": {"Authorization": "Bearer s3cret"}},
            {"subprotocols": ["clipserve", "bearer.s3cret"]},
            {"subprotocols": ["bearer.s3cret"]},
        ):
            with _open(server, **kwargs) as ws:
                ws.send(json.dumps({"input": "a cat"}))
                ws.send(json.dumps({"end": True}))
                replies = list(_replies(ws))
            assert replies[-1]["items"] == 1 and "embedding" in replies[0]
        # The answer names an offered subprotocol (browsers fail the connection otherwise).
        with _open(server, subprotocols=["clipserve", "bearer.s3cret"]) as ws:
            assert ws.subprotocol == "clipserve"
        with _open(server, subprotocols=["bearer.s3cret"]) as ws:
            assert ws.subprotocol == "bearer.s3cret"


@pytest.mark.parametrize(
    ("query", "kind"),
    [("encoding=hex", "validation_error"), ("model=no-such-model", "model_not_found")],
)
def test_bad_query_parameters_are_refused_with_a_reason(
    server: LiveServer, query: str, kind: str
) -> None:
    with _open(server, query) as ws:
        refusal = json.loads(ws.recv(timeout=30))
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=30)
    assert refusal["error"]["type"] == kind
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


def test_a_client_that_leaves_mid_stream_leaves_the_server_serving(server: LiveServer) -> None:
    with _open(server) as ws:
        for index in range(300):
            ws.send(json.dumps({"input": f"text {index}"}))
        ws.socket.shutdown(socket.SHUT_RDWR)  # gone without a closing handshake
    with _open(server) as again:
        again.send(json.dumps({"input": "after"}))
        again.send(json.dumps({"end": True}))
        assert list(_replies(again))[-1]["items"] == 1
    with server.client() as http:
        assert http.get("/readyz").status_code == 200
