"""``clipserve serve`` as a process: flags and environment, JSON logs, graceful SIGTERM."""

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

import httpx
import numpy as np
from PIL import Image
from servertools import READY_TIMEOUT, png


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
