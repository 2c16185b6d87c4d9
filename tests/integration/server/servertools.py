"""Helpers for the server tests: a live uvicorn server on loopback, image encodings."""

from __future__ import annotations

import base64
import contextlib
import io
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import uvicorn
from PIL import Image

from clipserve.engine import Engine
from clipserve.models.runtime import EmbeddingSession
from clipserve.server.app import create_app
from clipserve.server.settings import ServerSettings

READY_TIMEOUT = 120.0


class LiveServer:
    """A uvicorn server running ``app`` on 127.0.0.1 (a free port) in a daemon thread."""

    def __init__(self, settings: ServerSettings, engine: Engine | None = None) -> None:
        self.app = create_app(settings, engine)
        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets that say so, and
        # without it every keep-alive request waits out a 40 ms delayed ACK.
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._socket.bind(("127.0.0.1", 0))
        self.port = self._socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(self.app, log_level="warning", timeout_graceful_shutdown=5)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )

    def start(self) -> LiveServer:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        return self

    def wait_ready(self) -> LiveServer:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            response = httpx.get(f"{self.url}/readyz")
            if response.status_code == 200:
                return self
            if response.json().get("status") == "failed":
                raise RuntimeError(f"the test server failed to load: {response.text}")
            time.sleep(0.05)
        raise RuntimeError("the test server did not become ready")

    def client(self, **kwargs: Any) -> httpx.Client:
        kwargs.setdefault("timeout", 120)
        return httpx.Client(base_url=self.url, **kwargs)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(30)
        self._socket.close()


@contextlib.contextmanager
def live_server(
    settings: ServerSettings, engine: Engine | None = None, *, ready: bool = True
) -> Iterator[LiveServer]:
    """Start a server, optionally wait for ``/readyz``, stop it afterwards."""
    server = LiveServer(settings, engine).start()
    try:
        yield server.wait_ready() if ready else server
    finally:
        server.stop()


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def data_uri(data: bytes, media: str = "image/png") -> str:
    return f"data:{media};base64,{base64.b64encode(data).decode()}"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class GatedSession:
    """An image tower held at ``gate``: the model stays busy until the test releases it.

    ``entered`` is set once a batch is waiting at the gate.
    """

    def __init__(self, inner: EmbeddingSession, gate: threading.Event) -> None:
        self.inner = inner
        self.gate = gate
        self.entered = threading.Event()

    def run(self, batch: np.ndarray) -> np.ndarray:
        self.entered.set()
        self.gate.wait(60)
        return self.inner.run(batch)
