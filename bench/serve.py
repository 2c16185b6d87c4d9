"""Served throughput and latency of ``clipserve serve`` against the engine offline.

Prints one JSON document. Every figure comes from this one run on this machine:

* ``offline``: the engine in this process, with the server's settings — images/s on the
  1920-pixel JPEGs, and the time of one short text (median);
* ``served``: the real server (``clipserve serve`` in a subprocess, loopback), closed-loop
  load — each of ``concurrency`` clients sends its next request when the last one is answered:
  JPEGs as multipart (one image per request) and short texts as JSON (one per request), at
  concurrency 1 and 16: requests/s, p50 and p99 latency, errors;
* ``targets``: served images/s at concurrency 16 over offline images/s (target ≥ 0.9), and the
  p50 of one text at concurrency 1 minus the offline single-text time (target ≤ 5 ms).

Model: the random-initialised ViT-B/32. Usage: ``python bench/serve.py [--images 96]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from clipserve.engine import Engine
from clipserve.settings import Settings
from clipserve.testing.models import ensure_random_vit_b32
from clipserve.testing.photos import make_jpegs

SHORT_TEXT = "a photo of a dog"
READY_TIMEOUT = 600.0


def offline_figures(settings: Settings, jpegs: list[bytes], text_runs: int) -> dict[str, Any]:
    """The engine alone, in this process: images/s and one short text's latency."""
    with Engine(settings) as engine:
        engine.encode_images(jpegs[:4])  # warm-up: first-run graph optimisation
        start = time.perf_counter()
        engine.encode_images(jpegs)
        images_per_s = len(jpegs) / (time.perf_counter() - start)
        engine.encode_texts([SHORT_TEXT])
        single = [_seconds(lambda: engine.encode_texts([SHORT_TEXT])) for _ in range(text_runs)]
    return {
        "images_per_s": images_per_s,
        "single_text_ms": statistics.median(single) * 1e3,
    }


def _seconds(work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


@contextmanager
def running_server(model: Path, cache: Path) -> Iterator[str]:
    """``clipserve serve`` in a subprocess on a free loopback port; yields its URL when ready."""
    with server_process(model, cache) as (url, _):
        yield url


@contextmanager
def server_process(
    model: Path,
    cache: Path,
    *,
    options: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``clipserve serve --model MODEL [OPTIONS]`` in a subprocess on a free loopback port.

    Yields its URL and process once ``/readyz`` answers 200; sends SIGTERM on exit.
    ``env`` adds to this process's environment (``CLIPSERVE_*`` settings).
    """
    port = free_port()
    environment = {
        **os.environ,
        "CLIPSERVE_CACHE_DIR": str(cache),
        "CLIPSERVE_LOG_LEVEL": "warning",
        **(env or {}),
    }
    command = [sys.executable, "-m", "clipserve.cli", "serve", "--model", str(model)]
    command += ["--host", "127.0.0.1", "--port", str(port), *options]
    process = subprocess.Popen(command, env=environment)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process)
        yield url, process
    finally:
        process.terminate()
        process.wait(60)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    """Poll ``url/readyz`` until 200; raise if ``process`` exits or time runs out."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the server did not become ready")


async def closed_loop(url: str, requests: list[dict[str, Any]], concurrency: int) -> dict[str, Any]:
    """Send ``requests`` (httpx ``post`` keyword arguments) from ``concurrency`` clients."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    pending = iter(requests)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def client(http: httpx.AsyncClient) -> None:
        for request in pending:  # a shared iterator: each request is sent once
            start = time.perf_counter()
            try:
                response = await http.post("/v1/encode", **request)
                if response.status_code != 200:
                    errors[str(response.status_code)] = errors.get(str(response.status_code), 0) + 1
                    continue
            except httpx.HTTPError as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                continue
            latencies.append(time.perf_counter() - start)

    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as http:
        await http.get("/healthz")  # open a connection before the clock starts
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return {
        "concurrency": concurrency,
        "requests": len(requests),
        "requests_per_s": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "errors": errors,
    }


def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-th percentile of ``values`` (seconds) in milliseconds; ``None`` if empty."""
    return float(np.percentile(values, q) * 1e3) if values else None


def image_requests(jpegs: list[bytes], count: int) -> list[dict[str, Any]]:
    """Multipart bodies, one JPEG each, as a browser or curl ``-F`` sends them."""
    return [
        {"files": {"file": (f"photo{i}.jpg", jpegs[i % len(jpegs)], "image/jpeg")}}
        for i in range(count)
    ]


def text_requests(count: int) -> list[dict[str, Any]]:
    return [{"json": {"inputs": [SHORT_TEXT]}} for _ in range(count)]


def served_figures(url: str, jpegs: list[bytes], args: argparse.Namespace) -> dict[str, Any]:
    runs = {
        "images_c1": (image_requests(jpegs, args.images // 3), 1),
        "images_c16": (image_requests(jpegs, args.images), 16),
        "texts_c1": (text_requests(args.texts), 1),
        "texts_c16": (text_requests(args.texts * 2), 16),
    }
    # One short warm-up of each kind, so no run pays for the first connection or batch.
    asyncio.run(closed_loop(url, image_requests(jpegs, 2) + text_requests(4), 2))
    return {name: asyncio.run(closed_loop(url, *run)) for name, run in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96, help="requests at concurrency 16")
    parser.add_argument("--texts", type=int, default=200, help="requests at concurrency 1")
    args = parser.parse_args()

    model = ensure_random_vit_b32()
    cache = Path(os.environ.get("CLIPSERVE_BENCH_CACHE", tempfile.gettempdir())) / "clipserve-bench"
    settings = Settings(models=[str(model)], cache_dir=cache)
    jpegs = make_jpegs(min(args.images, 32))
    # The same number of images as the concurrency-16 run, so both pipelines fill up alike.
    workload = [jpegs[i % len(jpegs)] for i in range(args.images)]
    offline = offline_figures(settings, workload, text_runs=50)
    with running_server(model, cache) as url:
        served = served_figures(url, jpegs, args)
    errors = sum(sum(run["errors"].values()) for run in served.values())
    result = {
        "benchmark": "serve",
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
        },
        "model": "random ViT-B/32 (CLIPModel layout)",
        "images": {"count": len(jpegs), "size": "1920x1280 JPEG q90", "per_request": 1},
        "offline": offline,
        "served": served,
        "targets": {
            "images_c16_over_offline": served["images_c16"]["requests_per_s"]
            / offline["images_per_s"],
            "images_c16_over_offline_target": 0.9,
            "text_c1_p50_minus_offline_ms": (served["texts_c1"]["p50_ms"] or float("inf"))
            - offline["single_text_ms"],
            "text_c1_p50_minus_offline_target_ms": 5.0,
            "errors": errors,
        },
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
