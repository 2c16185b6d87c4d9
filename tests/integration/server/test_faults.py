"""Faults around the server: clients that vanish mid-request, a server killed and restarted
under load, a disk that fills up under index writes, model files truncated or missing.

(SIGTERM under load is in test_server_shutdown.py; the index and ``clipserve embed`` on a full
disk, without a server, in tests/integration/index and tests/integration/embed.)
"""

from __future__ import annotations

import asyncio
import functools
import json
import shutil
import signal
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from processtools import ServerProcess, free_port
from servertools import GatedSession, LiveServer, data_uri, grpc_failure, grpc_input, live_server
from test_client import (
    ATOL,
    Background,
    encode_requests,
    metric,
    mixed_items,
    server_vectors,
    wait_for,
)
from websockets.sync.client import connect

from clipserve.client import Client, Retry
from clipserve.models.loader import prepare_export
from clipserve.settings import Settings
from clipserve.v1 import clip_pb2, clip_pb2_grpc

Code = grpc.StatusCode


# ------------------------------------------------------------------ clients that vanish
QUEUE = 8  # the image queue limit: a request of this many images needs every slot free


def _gauge(server: LiveServer, name: str, **labels: str) -> float:
    return metric(server.url, name, **labels)


def _queued_images(server: LiveServer) -> float:
    return _gauge(server, "clipserve_queue_depth", modality="image")


def _in_progress(server: LiveServer) -> float:
    """HTTP requests being handled, not counting the scrape asking."""
    return _gauge(server, "clipserve_http_requests_in_progress") - 1


def _closed_requests(server: LiveServer) -> float:
    """HTTP requests whose client went away before the answer (logged as 499)."""
    return metric(server.url, "clipserve_http_requests_total", status="499")


def _closed_is(server: LiveServer, count: int) -> bool:
    return _closed_requests(server) == count


def _stream_tasks(server: LiveServer) -> int:
    """Tasks of the WebSocket and gRPC stream handlers alive on the server's event loop."""
    loop = server._server.servers[0].get_loop()

    async def count() -> int:
        return sum(1 for task in asyncio.all_tasks() if _is_stream_task(task))

    return asyncio.run_coroutine_threadsafe(count(), loop).result(30)


def _is_stream_task(task: asyncio.Task[Any]) -> bool:
    code = getattr(task.get_coro(), "cr_code", None)
    return code is not None and code.co_filename.endswith(("routes/stream.py", "rpc/stream.py"))


def _ws_url(server: LiveServer) -> str:
    return server.url.replace("http://", "ws://") + "/v1/stream"


def _crash(sock: socket.socket) -> None:
    """Close like a client that crashed: a reset, no orderly goodbye."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _send_raw(server: LiveServer, data: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.sendall(data)
    return sock


def _encode_head(length_header: str) -> bytes:
    return (
        "POST /v1/encode HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"{length_header}\r\n"
    ).encode()


def _held_requests(
    images: list[bytes], release: threading.Event
) -> Iterator[clip_pb2.EncodeStreamRequest]:
    """A gRPC stream's items, then a stream that stays open until ``release``."""
    for number, data in enumerate(images):
        yield clip_pb2.EncodeStreamRequest(id=number, input=grpc_input(data))
    release.wait(60)


def test_clients_that_vanish_mid_request_leave_nothing_behind(
    make_settings: Any, shape_pngs: list[bytes]
) -> None:
    settings = make_settings(grpc_port=0, max_queue=QUEUE, max_batch_size=2, preprocess_workers=1)
    images = [data_uri(data) for data in shape_pngs]
    with live_server(settings) as server, server.client() as http:
        clip = server.app.state.clipserve.engine.model()
        gate, release = threading.Event(), threading.Event()
        clip.visual = session = GatedSession(clip.visual, gate)
        channel = server.grpc_channel()
        encoded, dropped = "clipserve_items_encoded_total", "clipserve_items_dropped_total"
        before = {name: _gauge(server, name, modality="image") for name in (encoded, dropped)}
        try:
            # Six images fill the pipeline: two at the gated model, two prepared and waiting,
            # two more prepared by a collector now blocked. Later items stay in the queue.
            patient = Background(lambda: http.post("/v1/encode", json={"inputs": images[:6]}))
            assert session.entered.wait(60)
            wait_for(lambda: _queued_images(server) == 0, "the pipeline to fill")

            # 1. A whole request, then the client is gone before the answer.
            body = json.dumps({"inputs": images[:2]}).encode()
            sock = _send_raw(server, _encode_head(f"Content-Length: {len(body)}\r\n") + body)
            wait_for(lambda: _queued_images(server) == 2, "its images to be queued")
            _crash(sock)
            wait_for(lambda: _closed_requests(server) == 1, "the server to see it go")
            # 2. Half a body of a declared length; 3. half a chunked body. (Crashed only once
            # the server is reading the body: a reset discards data not yet read.)
            chunk = b"%x\r\n%s\r\n" % (99, body[:99])
            for closed, head, part in (
                (2, f"Content-Length: {len(body)}\r\n", body[:99]),
                (3, "Transfer-Encoding: chunked\r\n", chunk),
            ):
                sock = _send_raw(server, _encode_head(head) + part)
                wait_for(lambda: _in_progress(server) == 2, "the server to read the body")
                _crash(sock)
                wait_for(functools.partial(_closed_is, server, closed), "it to see it go")
            # 4. A WebSocket stream whose connection drops with items in flight.
            with connect(_ws_url(server), open_timeout=30) as ws:
                ws.send(shape_pngs[0])
                ws.send(shape_pngs[1])
                wait_for(lambda: _queued_images(server) == 4, "its images to be queued")
                _crash(ws.socket)
            wait_for(lambda: _stream_tasks(server) == 0, "the WebSocket handler to end")
            # 5. A gRPC stream cancelled with items in flight.
            stub = clip_pb2_grpc.ClipStub(channel)
            call = stub.EncodeStream(_held_requests(shape_pngs[:2], release))
            wait_for(lambda: _queued_images(server) == 6, "its images to be queued")
            call.cancel()
            wait_for(lambda: _stream_tasks(server) == 0, "the gRPC stream handler to end")
            cancelled = {"method": "EncodeStream", "code": "CANCELLED"}
            wait_for(
                lambda: metric(server.url, "clipserve_grpc_requests_total", **cancelled) == 1,
                "the cancelled call to be counted",
            )
        finally:
            gate.set()
            release.set()
        response = patient.result()
        assert response.status_code == 200, response.text
        assert len(response.json()["data"]) == 6

        # Every slot is free again: nothing in progress, nothing queued, and none of the
        # vanished clients' items cost inference.
        wait_for(lambda: _queued_images(server) == 0, "the queue to drain")
        wait_for(lambda: _in_progress(server) == 0, "requests in progress to end")
        assert _gauge(server, "clipserve_grpc_requests_in_progress") == 0
        for name in (encoded, dropped):
            assert _gauge(server, name, modality="image") - before[name] == 6, name
        # A request needing the whole queue is served: no slot leaked.
        for inputs in ([images[i % 8] for i in range(QUEUE)], [f"text {i}" for i in range(QUEUE)]):
            assert http.post("/v1/encode", json={"inputs": inputs}).status_code == 200
        # Both stream transports still serve.
        with connect(_ws_url(server), open_timeout=30) as ws:
            ws.send(shape_pngs[2])
            ws.send(json.dumps({"end": True}))
            replies = [json.loads(ws.recv(timeout=60)) for _ in range(2)]
        assert "embedding" in replies[0] and replies[1]["done"] is True
        requests = [clip_pb2.EncodeStreamRequest(id=1, input=grpc_input(shape_pngs[3]))]
        (answer,) = list(stub.EncodeStream(iter(requests), timeout=60))
        assert not answer.HasField("error") and len(answer.vector) == 4 * answer.dim
        channel.close()
        assert _stream_tasks(server) == 0
        assert metric(server.url, "clipserve_http_requests_total", status="500") == 0
        assert metric(server.url, "clipserve_grpc_requests_total", code="INTERNAL") == 0


# ------------------------------------------------------------------ a restart under load
def _served(server: ServerProcess) -> float:
    """Encode calls the server answered, over HTTP and gRPC."""
    grpc_ok = metric(server.url, "clipserve_grpc_requests_total", method="Encode", code="OK")
    return encode_requests(server.url, "200") + grpc_ok


def test_a_server_killed_and_restarted_under_load_loses_and_repeats_nothing(
    tiny_clip_dir: Path, clipserve_cache: Path, shape_pngs: list[bytes], tmp_path: Path
) -> None:
    port, grpc_port = free_port(), free_port()

    def server(name: str) -> ServerProcess:
        log = tmp_path / f"{name}.log"
        return ServerProcess(tiny_clip_dir, clipserve_cache, log, port=port, grpc_port=grpc_port)

    items, inputs = mixed_items(400, shape_pngs)
    retry = Retry(attempts=100, max_backoff=1.0, deadline=300)
    first = server("first").start().wait_ready()
    clients = [
        Client(first.url, retry=retry, max_concurrency=2),
        Client(f"grpc://{first.grpc_target}", retry=retry, max_concurrency=2),
    ]
    try:
        calls = [Background(functools.partial(c.encode, items, batch_size=4)) for c in clients]
        wait_for(lambda: _served(first) >= 10, "some batches answered before the kill")
        first.stop(signal.SIGKILL)
        # Same ports, a new process: it loads first (connections refused, then 503s).
        with server("second") as second:
            results = [call.result() for call in calls]
            served_by_second = {
                "http": encode_requests(second.url, "200"),
                "grpc": metric(second.url, "clipserve_grpc_requests_total", code="OK"),
            }
            expected = server_vectors(second.url, inputs)
    finally:
        for client in clients:
            client.close()
        if first.running:
            first.stop(signal.SIGKILL)
    # Each client's run was split across the two processes...
    assert all(count >= 1 for count in served_by_second.values()), served_by_second
    # ...and still every input has exactly its own vector, in order.
    for vectors in results:
        assert vectors.shape == expected.shape
        np.testing.assert_allclose(vectors, expected, atol=ATOL)


# ------------------------------------------------------------------ a full disk
DISK_LIMIT = 512 * 1024
ITEMS_PER_WRITE = 10


def _write(http: httpx.Client, step: int, dim: int, rng: np.random.Generator) -> httpx.Response:
    rows = rng.normal(size=(ITEMS_PER_WRITE, dim))
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    items = [
        {"id": f"s{step}-{i}", "vector": row.tolist(), "metadata": {"note": rng.bytes(1000).hex()}}
        for i, row in enumerate(rows)
    ]
    return http.post("/v1/indexes/full/items", json={"items": items})


def test_a_full_disk_answers_507_and_loses_no_acknowledged_write(
    tiny_clip_dir: Path, clipserve_cache: Path, tmp_path: Path
) -> None:
    env = {"CLIPSERVE_DATA_DIR": str(tmp_path / "data")}
    limited = ServerProcess(
        tiny_clip_dir,
        clipserve_cache,
        tmp_path / "limited.log",
        grpc_port=free_port(),
        env=env,
        file_size_limit=DISK_LIMIT,
    )
    rng = np.random.default_rng(5)
    acknowledged: list[str] = []
    with limited, limited.client() as http:
        created = http.post("/v1/indexes", json={"name": "full"})
        assert created.status_code == 201, created.text
        dim = created.json()["dim"]
        for step in range(200):
            response = _write(http, step, dim, rng)
            if response.status_code != 200:
                break
            acknowledged += [f"s{step}-{i}" for i in range(ITEMS_PER_WRITE)]
        assert response.status_code == 507, response.text
        error = response.json()["error"]
        assert error["type"] == "storage"
        assert "items.sqlite" in error["message"]
        assert "the disk is full, a file size limit was reached" in error["message"]
        assert len(acknowledged) >= 3 * ITEMS_PER_WRITE
        failed = [f"s{step}-{i}" for i in range(ITEMS_PER_WRITE)]
        # The server goes on serving: reads, searches, encodes.
        assert http.get("/v1/indexes/full").json()["count"] == len(acknowledged)
        assert http.get(f"/v1/indexes/full/items/{failed[0]}").status_code == 404
        encoded = http.post("/v1/encode", json={"inputs": ["a red circle"]})
        assert encoded.status_code == 200
        # The same write over gRPC: RESOURCE_EXHAUSTED, naming the disk.
        vector = (np.ones(dim) / np.sqrt(dim)).astype("<f4").tobytes()
        note = json.dumps({"note": rng.bytes(60_000).hex()})
        item = clip_pb2.IndexItem(id="grpc-1", vector=vector, metadata_json=note)
        request = clip_pb2.AddItemsRequest(index="full", items=[item])
        with grpc.insecure_channel(limited.grpc_target) as channel:
            stub = clip_pb2_grpc.ClipStub(channel)
            failure = grpc_failure(Code.RESOURCE_EXHAUSTED, lambda: stub.AddItems(request))
        assert "the disk is full" in failure.details()
        # SIGTERM: closing the index (its snapshot may not fit) must not crash the exit.
        assert limited.stop() in (0, -signal.SIGTERM), limited.log.read_text()

    # Space freed: the same data, no limit. Every acknowledged write is there, no failed one.
    freed = ServerProcess(tiny_clip_dir, clipserve_cache, tmp_path / "freed.log", env=env)
    with freed, freed.client() as http:
        assert http.get("/v1/indexes/full").json()["count"] == len(acknowledged)
        for item_id in acknowledged:
            assert http.get(f"/v1/indexes/full/items/{item_id}").status_code == 200
        for item_id in [*failed, "grpc-1"]:
            assert http.get(f"/v1/indexes/full/items/{item_id}").status_code == 404
        assert _write(http, 999, dim, rng).status_code == 200


# ------------------------------------------------------------------ broken model files
def _export_copy(tiny_clip_dir: Path, cache: Path, destination: Path) -> Path:
    _, export = prepare_export(str(tiny_clip_dir), Settings(cache_dir=cache))
    return Path(shutil.copytree(export, destination))


def _checkpoint_copy(tiny_clip_dir: Path, destination: Path) -> Path:
    return Path(shutil.copytree(tiny_clip_dir, destination))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


BROKEN_MODELS = {
    # name: (damage done to a copy of the model, what the error must say)
    "truncated graph": ("export", "textual.onnx", "truncate", ["textual.onnx", "truncated"]),
    "missing graph": ("export", "visual.onnx", "delete", ["visual.onnx missing"]),
    "checkpoint without config": ("checkpoint", "config.json", "delete", ["config.json"]),
    "truncated weights": ("checkpoint", "model.safetensors", "truncate", ["model.safetensors"]),
}


@pytest.mark.parametrize("case", list(BROKEN_MODELS))
def test_a_broken_model_file_stops_the_server_at_start(
    case: str, tiny_clip_dir: Path, clipserve_cache: Path, tmp_path: Path
) -> None:
    layout, name, damage, said = BROKEN_MODELS[case]
    model = tmp_path / "model"
    if layout == "export":
        _export_copy(tiny_clip_dir, clipserve_cache, model)
    else:
        _checkpoint_copy(tiny_clip_dir, model)
    if damage == "truncate":
        _truncate(model / name)
    else:
        (model / name).unlink()
    # A cache of its own: a checkpoint is exported there (and must fail to be).
    server = ServerProcess(model, tmp_path / "cache", tmp_path / "server.log")
    status = server.start().wait_exit(180)
    log = server.log.read_text()
    assert status == 1, log
    # click's last words (the loader's message may run over several lines).
    error = log[("\n" + log).rindex("\nError: ") :]
    assert error.startswith("Error: the models failed to load: ModelUnavailableError: "), log
    for fragment in said:
        assert fragment in error, error
