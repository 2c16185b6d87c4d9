"""``clipserve serve`` as a child process, for the tests a thread cannot stand in for: a kill,
a signal, a file size limit, a start that must fail."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from servertools import READY_TIMEOUT

from clipserve.testing.disk import with_file_size_limit


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ServerProcess:
    """``python -m clipserve.cli serve --model MODEL`` on fixed loopback ports, so a second
    process can take over the first one's ports; stderr goes to ``log`` (a file: a full pipe
    would stall the server)."""

    def __init__(
        self,
        model: Path,
        cache: Path,
        log: Path,
        *,
        port: int | None = None,
        grpc_port: int | None = None,
        env: dict[str, str] | None = None,
        options: Sequence[str] = (),
        file_size_limit: int | None = None,
    ) -> None:
        self.port = port or free_port()
        self.grpc_port = grpc_port
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.command = [sys.executable, "-m", "clipserve.cli", "serve", "--model", str(model)]
        self.command += ["--host", "127.0.0.1", "--port", str(self.port), *options]
        if grpc_port is not None:
            self.command += ["--grpc-port", str(grpc_port)]
        if file_size_limit is not None:  # a disk that fills up at this size (per file)
            self.command = with_file_size_limit(self.command, file_size_limit)
        self.env = {
            **os.environ,
            "CLIPSERVE_CACHE_DIR": str(cache),
            "CLIPSERVE_LOG_LEVEL": "warning",
            **(env or {}),
        }
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def grpc_target(self) -> str:
        assert self.grpc_port is not None, "started without a gRPC port"
        return f"127.0.0.1:{self.grpc_port}"

    def start(self) -> ServerProcess:
        with self.log.open("ab") as log_file:
            self.process = subprocess.Popen(self.command, env=self.env, stderr=log_file)
        return self

    def wait_ready(self) -> ServerProcess:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            assert self.running, f"the server exited early:\n{self.log.read_text()}"
            try:
                if httpx.get(f"{self.url}/readyz").status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError("the server did not become ready")

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def client(self, **kwargs: Any) -> httpx.Client:
        kwargs.setdefault("timeout", 120)
        return httpx.Client(base_url=self.url, **kwargs)

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        """Send ``sig`` and wait for the exit status."""
        assert self.process is not None
        if self.running:
            self.process.send_signal(sig)
        return self.process.wait(60)

    def wait_exit(self, seconds: float) -> int:
        """The exit status of a server expected to stop by itself within ``seconds``."""
        assert self.process is not None
        try:
            return self.process.wait(seconds)
        except subprocess.TimeoutExpired:
            self.stop(signal.SIGKILL)
            raise AssertionError(f"the server did not exit:\n{self.log.read_text()}") from None

    def __enter__(self) -> ServerProcess:
        return self.start().wait_ready()

    def __exit__(self, *exc: object) -> None:
        if self.running:
            self.stop(signal.SIGKILL)
