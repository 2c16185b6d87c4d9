"""``clipserve serve`` as a process: flags and environment, JSON logs, graceful SIGTERM (one slow
request; HTTP and gRPC calls under load)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
from PIL import Image
from processtools import ServerProcess, free_port
from servertools import READY_TIMEOUT, png

from clipserve.v1 import clip_pb2, clip_pb2_grpc


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        assert process.poll() is None, "the server exited early"
        try:
            if httpx.get(f"{url}/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("the server did not become ready")


def _in_progress(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    match = re.search(r"^clipserve_http_requests_in_progress (\S+)$", text, re.MULTILINE)
    assert match is not None
    return float(match.group(1)) - 1  # not counting this scrape


def _slow_images() -> list[bytes]:
    # Large, cheap to send (smooth, so PNG compresses well), slow to decode and resize.
    ramp = np.linspace(0, 255, 1800, dtype=np.uint8)
    pixels = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], ramp[None, ::-1]), -1)
    return [png(Image.fromarray(np.ascontiguousarray(pixels)))] * 64


def test_sigterm_lets_in_flight_requests_finish(
    tiny_clip_dir: Path, clipserve_cache: Path, tmp_path: Path
) -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "CLIPSERVE_CACHE_DIR": str(clipserve_cache),
        "CLIPSERVE_PORT": str(port),  # from the environment; the model from a flag
        "CLIPSERVE_LOG_JSON": "1",
    }
    command = [sys.executable, "-m", "clipserve.server.cli", "--model", str(tiny_clip_dir)]
    log_path = tmp_path / "server.log"  # a file, not a pipe: a full pipe would stall the server
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(command, env=env, stderr=log_file)
    outcome: dict[str, httpx.Response] = {}
    try:
        _wait_ready(url, process)
        files = [("file", (f"{i}.png", data, "image/png")) for i, data in enumerate(_slow_images())]

        def slow_request() -> None:
            outcome["response"] = httpx.post(f"{url}/v1/encode", files=files, timeout=120)

        sender = threading.Thread(target=slow_request)
        sender.start()
        while _in_progress(url) < 1:
            assert sender.is_alive(), "the request finished before SIGTERM could be sent"
            time.sleep(0.005)
        process.send_signal(signal.SIGTERM)
        sender.join(120)
        # uvicorn re-raises the signal once it has shut down, for the supervisor to see.
        assert process.wait(60) in (0, -signal.SIGTERM)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    response = outcome["response"]
    assert response.status_code == 200, response.text
    assert len(response.json()["data"]) == 64
    lines = log_path.read_text().splitlines()
    logs = [json.loads(line) for line in lines if line.startswith("{")]
    access = [entry for entry in logs if entry["logger"] == "clipserve.server.access"]
    encode = [entry for entry in access if entry["route"] == "/v1/encode"]
    assert encode and encode[-1]["status"] == 200
    assert {"request_id", "method", "status", "duration_ms"} <= set(encode[-1])
    assert any(entry["message"] == "server stopped" for entry in logs)


def test_sigterm_under_load_finishes_every_call_in_flight_over_http_and_grpc(
    tiny_clip_dir: Path, clipserve_cache: Path, tmp_path: Path
) -> None:
    log = tmp_path / "server.log"
    server = ServerProcess(tiny_clip_dir, clipserve_cache, log, grpc_port=free_port())
    images = _slow_images()[:16]
    outcomes: dict[str, Any] = {}

    def over_http(name: str) -> None:
        files = [("file", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]
        outcomes[name] = httpx.post(f"{server.url}/v1/encode", files=files, timeout=120)

    def over_grpc() -> None:
        request = clip_pb2.EncodeRequest(inputs=[clip_pb2.Input(image=data) for data in images])
        options = [("grpc.max_send_message_length", 64 * 1024 * 1024)]
        with grpc.insecure_channel(server.grpc_target, options=options) as channel:
            outcomes["grpc"] = clip_pb2_grpc.ClipStub(channel).Encode(request, timeout=120)

    with server:
        senders = [threading.Thread(target=over_http, args=(f"http{n}",)) for n in range(3)]
        senders.append(threading.Thread(target=over_grpc))
        for sender in senders:
            sender.start()
        while _in_progress(server.url) < 3 or _grpc_in_progress(server.url) < 1:
            assert all(sender.is_alive() for sender in senders), "a call ended before SIGTERM"
            time.sleep(0.005)
        status = server.stop(signal.SIGTERM)
        for sender in senders:
            sender.join(120)
    assert status in (0, -signal.SIGTERM), server.log.read_text()
    for name in ("http0", "http1", "http2"):
        assert outcomes[name].status_code == 200, outcomes[name].text
        assert len(outcomes[name].json()["data"]) == len(images)
    assert len(outcomes["grpc"].embeddings) == len(images)


def _grpc_in_progress(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    match = re.search(r"^clipserve_grpc_requests_in_progress (\S+)$", text, re.MULTILINE)
    assert match is not None
    return float(match.group(1))
