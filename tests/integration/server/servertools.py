"""Helpers for the server tests: a live uvicorn server on loopback (HTTP, and gRPC when its
settings have a ``grpc_port``), image encodings."""

from __future__ import annotations

import base64
import contextlib
import io
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import uvicorn
from PIL import Image

from clipserve.engine import Engine
from clipserve.models.runtime import EmbeddingSession
from clipserve.server.app import create_app
from clipserve.server.settings import ServerSettings
from clipserve.v1 import clip_pb2

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

    @property
    def grpc_port(self) -> int:
        """The bound gRPC port (the settings need ``grpc_port``, e.g. 0 for a free one)."""
        port: int | None = self.app.state.clipserve.grpc_port
        if port is None:
            raise RuntimeError("this server serves no gRPC: give its settings a grpc_port")
        return port

    @property
    def grpc_target(self) -> str:
        """``127.0.0.1:PORT`` of the gRPC server, for ``grpc.insecure_channel``."""
        return f"127.0.0.1:{self.grpc_port}"

    def grpc_channel(self, options: Sequence[tuple[str, Any]] = (), **kwargs: Any) -> grpc.Channel:
        """A plain-text channel to the gRPC server (``options``: channel arguments)."""
        return grpc.insecure_channel(self.grpc_target, options=list(options), **kwargs)

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


def grpc_input(item: str | bytes) -> clip_pb2.Input:
    """A text (``str``) or image bytes as a gRPC ``Input``."""
    return clip_pb2.Input(text=item) if isinstance(item, str) else clip_pb2.Input(image=item)


def unpack(vector: bytes) -> np.ndarray:
    """A packed little-endian float32 embedding as an array."""
    return np.frombuffer(vector, "<f4")


def grpc_failure(code: grpc.StatusCode, call: Callable[[], object]) -> grpc.Call:
    """Run ``call``, which must fail with ``code``; returns the failed call (details, trailers)."""
    with pytest.raises(grpc.RpcError) as caught:
        call()
    error = caught.value
    assert isinstance(error, grpc.Call)
    assert error.code() == code, (error.code(), error.details())
    assert error.details()
    return error


def trailer(call: grpc.Call, key: str) -> str | None:
    """One trailing metadata value of a finished call."""
    for name, value in call.trailing_metadata() or ():
        if name == key:
            return str(value)
    return None
