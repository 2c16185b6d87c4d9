"""Soak test of ``clipserve serve``: mixed load for a bounded time; errors, latency, memory.

Starts the real server (``clipserve serve`` in a subprocess, HTTP and gRPC on loopback, an
index created and filled first) and keeps closed-loop clients of every kind busy for
``--duration`` seconds:

* ``encode_image`` (multipart JPEG), ``encode_text`` (JSON), ``rank`` (an image against
  captions), ``search`` (a text query on the index), ``grpc_stream`` (``EncodeStream``, eight
  items), ``websocket`` (``/v1/stream``, eight items);
* clients that leave mid-request, one of each leaving every second: ``abort_body`` (half a
  body — a declared length or chunks — then the socket closes), ``abort_request`` (a whole
  request, closed before the answer), ``abort_grpc_stream`` (a stream cancelled after its
  first answer), ``abort_websocket`` (a stream whose TCP connection is dropped without a
  close frame).

Prints one JSON document: requests served per kind; errors per kind by HTTP status, gRPC code
or exception class; p50/p99 latency per kind per ``--window``; the server's RSS (VmRSS) at
start, after ``--warmup`` and at the end, and its growth after warm-up; the server's in-flight
gauges once the load stops, and its own counts of answers and of items encoded or dropped
(a departed client's items leave the queue unrun). RSS "after warm-up" and "at the end" are
each the peak over the ``--rss-span`` seconds before that moment, under load: a batch of
images alone moves RSS by tens of MB, a leak moves the peak.

Targets (exit status 1 if one is missed): no unexpected errors — no 5xx other than the
deliberate 503 of a full queue (and RESOURCE_EXHAUSTED, its gRPC twin), no dropped connection,
no 4xx; RSS growth after warm-up below 5 %; every kind of request served; no request or queued
item left in flight once the load stops.

Model: the random-initialised ViT-B/32 (the real model's cost) by default; ``--model
tiny-clip`` for the small test model, or a model directory. Usage:
``python bench/soak.py [--duration 600] [--warmup 60] [--window 60]``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import random
import re
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import httpx
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample as MetricSample
from websockets.asyncio.client import ClientConnection, connect

from clipserve.testing.models import ensure_random_vit_b32, ensure_tiny_clip
from clipserve.testing.photos import make_jpegs
from clipserve.v1 import clip_pb2, clip_pb2_grpc
from serve import free_port, percentile, server_process

RSS_GROWTH_TARGET_PCT = 5.0
INDEX = "soak"
STREAM_ITEMS = 8
#: Closed-loop clients per kind, and each one's pause between requests (seconds).
CLIENTS: dict[str, tuple[int, float]] = {
    "encode_image": (2, 0.0),
    "encode_text": (2, 0.0),
    "rank": (1, 0.0),
    "search": (1, 0.0),
    "grpc_stream": (1, 0.0),
    "websocket": (1, 0.0),
    # A second between departures: enough to exercise every disconnect path hundreds of times
    # in ten minutes without the departed clients' work being most of the load.
    "abort_body": (1, 1.0),
    "abort_request": (1, 1.0),
    "abort_grpc_stream": (1, 1.0),
    "abort_websocket": (1, 1.0),
}
ABORTS = frozenset(kind for kind in CLIENTS if kind.startswith("abort_"))
#: Outcomes that are the server's deliberate backpressure, not failures.
BACKPRESSURE = frozenset({"http_503", "grpc_RESOURCE_EXHAUSTED"})
WORDS = (
    "red", "green", "blue", "circle", "square", "triangle", "photo", "drawing", "small", "large",
    "dog", "cat", "car",
)  # fmt: skip


@dataclass
class Sample:
    """One finished request: its kind, when it started (seconds into the run), its latency
    (seconds) and its outcome (``ok``, ``http_503``, ``grpc_INTERNAL``, ``exc_ReadTimeout``)."""

    kind: str
    started: float
    seconds: float
    outcome: str


@dataclass
class Load:
    """What the clients share: the server's addresses, payloads, and the samples."""

    url: str
    jpegs: list[bytes]
    http: httpx.AsyncClient
    stub: clip_pb2_grpc.ClipAsyncStub
    t0: float
    stop_at: float
    samples: list[Sample] = field(default_factory=list)
    rng: random.Random = field(default_factory=lambda: random.Random(0))

    def text(self) -> str:
        return " ".join(self.rng.choice(WORDS) for _ in range(self.rng.randint(3, 12)))

    def jpeg(self) -> bytes:
        return self.rng.choice(self.jpegs)


# ------------------------------------------------------------------ the clients
async def encode_image(load: Load) -> str:
    files = {"file": ("photo.jpg", load.jpeg(), "image/jpeg")}
    return _status((await load.http.post("/v1/encode", files=files)).status_code)


async def encode_text(load: Load) -> str:
    body = {"inputs": [load.text() for _ in range(load.rng.randint(1, 4))]}
    return _status((await load.http.post("/v1/encode", json=body)).status_code)


async def rank(load: Load) -> str:
    image = base64.b64encode(load.jpeg()).decode()
    body = {"query": {"image": image}, "candidates": [load.text() for _ in range(4)]}
    return _status((await load.http.post("/v1/rank", json=body)).status_code)


async def search(load: Load) -> str:
    body = {"input": load.text(), "k": 10}
    return _status((await load.http.post(f"/v1/indexes/{INDEX}/search", json=body)).status_code)


def _status(code: int) -> str:
    return "ok" if code in (200, 201) else f"http_{code}"


def _stream_requests(load: Load) -> list[clip_pb2.EncodeStreamRequest]:
    requests = []
    for number in range(STREAM_ITEMS):
        item = (
            clip_pb2.Input(image=load.jpeg())
            if number % 4 == 0
            else clip_pb2.Input(text=load.text())
        )
        requests.append(clip_pb2.EncodeStreamRequest(id=number, input=item))
    return requests


async def grpc_stream(load: Load) -> str:
    try:
        responses = [r async for r in load.stub.EncodeStream(iter(_stream_requests(load)))]
    except grpc.aio.AioRpcError as exc:
        return f"grpc_{exc.code().name}"
    return _stream_outcome([r.error.code for r in responses if r.HasField("error")], responses)


def _stream_outcome(errors: list[str], answers: list[Any]) -> str:
    if errors:
        return f"item_{errors[0]}"
    return "ok" if len(answers) == STREAM_ITEMS else "short_stream"


async def websocket(load: Load) -> str:
    async with _ws(load) as ws:
        await _ws_send_items(load, ws)
        await ws.send(json.dumps({"end": True}))
        replies = [json.loads(message) async for message in ws]
    done = replies.pop() if replies and replies[-1].get("done") else None
    if done is None:
        return "short_stream"
    errors = [reply["error"]["type"] for reply in replies if "error" in reply]
    return _stream_outcome(errors, replies)


def _ws(load: Load) -> Any:
    return connect(load.url.replace("http://", "ws://") + "/v1/stream", max_size=None)


async def _ws_send_items(load: Load, ws: ClientConnection) -> None:
    for number in range(STREAM_ITEMS):
        if number % 4 == 0:
            await ws.send(load.jpeg())  # a binary frame: one image file
        else:
            await ws.send(json.dumps({"id": number, "input": load.text()}))


async def abort_body(load: Load) -> str:
    """Declare a body (by length, or as chunks), send half of it, close the socket."""
    body = json.dumps({"inputs": [load.text() for _ in range(64)]}).encode()
    half = body[: len(body) // 2]
    if load.rng.random() < 0.5:
        head = f"Content-Length: {len(body)}\r\n"
        sent = half
    else:
        head = "Transfer-Encoding: chunked\r\n"
        sent = f"{len(half):x}\r\n".encode() + half + b"\r\n"
    await _send_and_close(load, _request_head(head) + sent, linger=0.0)
    return "ok"


async def abort_request(load: Load) -> str:
    """A whole request (images to encode), then the socket closes before the answer."""
    images = [f"data:image/jpeg;base64,{base64.b64encode(load.jpeg()).decode()}"]
    body = json.dumps({"inputs": images * 2}).encode()
    head = _request_head(f"Content-Length: {len(body)}\r\n")
    await _send_and_close(load, head + body, linger=load.rng.uniform(0.0, 0.05))
    return "ok"


def _request_head(length_header: str) -> bytes:
    return (
        "POST /v1/encode HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"{length_header}\r\n"
    ).encode()


async def _send_and_close(load: Load, data: bytes, linger: float) -> None:
    host, port = load.url.removeprefix("http://").split(":")
    _, writer = await asyncio.open_connection(host, int(port))
    writer.write(data)
    await writer.drain()
    await asyncio.sleep(linger)
    writer.transport.abort()  # no FIN handshake wait, as a crashed client


async def abort_grpc_stream(load: Load) -> str:
    """Send a stream's items, read one answer, cancel the call."""
    call = load.stub.EncodeStream(iter(_stream_requests(load) * 2))
    try:
        await call.read()
    except grpc.aio.AioRpcError as exc:
        return f"grpc_{exc.code().name}"
    call.cancel()
    return "ok"


async def abort_websocket(load: Load) -> str:
    """Send a stream's items, then drop the TCP connection without a close frame."""
    ws = await _ws(load)
    await _ws_send_items(load, ws)
    await asyncio.sleep(load.rng.uniform(0.0, 0.05))
    ws.transport.abort()
    return "ok"


CALLS: dict[str, Callable[[Load], Awaitable[str]]] = {
    "encode_image": encode_image,
    "encode_text": encode_text,
    "rank": rank,
    "search": search,
    "grpc_stream": grpc_stream,
    "websocket": websocket,
    "abort_body": abort_body,
    "abort_request": abort_request,
    "abort_grpc_stream": abort_grpc_stream,
    "abort_websocket": abort_websocket,
}


async def client(load: Load, kind: str, pause: float) -> None:
    """Send ``kind`` requests back to back (``pause`` between) until the run ends."""
    call = CALLS[kind]
    while time.monotonic() < load.stop_at:
        started = time.perf_counter()
        try:
            outcome = await call(load)
        except Exception as exc:
            outcome = f"exc_{type(exc).__name__}"
        load.samples.append(Sample(kind, started - load.t0, time.perf_counter() - started, outcome))
        await asyncio.sleep(pause)


# ------------------------------------------------------------------ the run
@dataclass
class Rss:
    """VmRSS samples of one process: ``(seconds into the run, bytes)``."""

    pid: int
    samples: list[tuple[float, int]] = field(default_factory=list)
    #: RSS when the server had just become ready (before the index was filled).
    ready: int = 0

    def __post_init__(self) -> None:
        self.ready = self.read()

    def read(self) -> int:
        status = Path(f"/proc/{self.pid}/status").read_text()
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        assert match is not None, "no VmRSS in /proc/PID/status"
        return int(match.group(1)) * 1024

    async def sample_until(self, t0: float, stop_at: float, every: float) -> None:
        while time.monotonic() < stop_at:
            self.samples.append((time.perf_counter() - t0, self.read()))
            await asyncio.sleep(every)

    def peak(self, start: float, end: float) -> int:
        inside = [rss for at, rss in self.samples if start <= at <= end]
        return max(inside) if inside else self.samples[-1][1]


async def fill_index(http: httpx.AsyncClient, jpegs: list[bytes]) -> None:
    """Create the index and add 96 texts and 16 images to it."""
    response = await http.post("/v1/indexes", json={"name": INDEX})
    response.raise_for_status()
    rng = random.Random(1)
    texts = [" ".join(rng.choice(WORDS) for _ in range(6)) for _ in range(96)]
    items: list[dict[str, Any]] = [
        {"id": f"t{i}", "input": text, "metadata": {"n": i}} for i, text in enumerate(texts)
    ]
    items += [
        {"id": f"i{i}", "input": {"image": base64.b64encode(jpegs[i % len(jpegs)]).decode()}}
        for i in range(16)
    ]
    for start in range(0, len(items), 16):
        chunk = items[start : start + 16]
        (await http.post(f"/v1/indexes/{INDEX}/items", json={"items": chunk})).raise_for_status()


async def run_load(
    url: str, grpc_port: int, rss: Rss, jpegs: list[bytes], args: argparse.Namespace
) -> list[Sample]:
    """Fill the index, then run every client for ``args.duration`` seconds (sampling RSS into
    ``rss``); returns the samples."""
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    async with (
        httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http,
        grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel,
    ):
        await fill_index(http, jpegs)
        stub = clip_pb2_grpc.ClipStub(channel)
        t0 = time.perf_counter()
        load = Load(url, jpegs, http, stub, t0, time.monotonic() + args.duration)
        tasks = [
            client(load, kind, pause)
            for kind, (count, pause) in CLIENTS.items()
            for _ in range(count)
        ]
        await asyncio.gather(rss.sample_until(t0, load.stop_at, args.rss_every), *tasks)
    return load.samples


# ------------------------------------------------------------------ the report
def latency_windows(samples: list[Sample], window: float) -> dict[str, list[dict[str, Any]]]:
    """p50/p99 (ms) of the successful requests of each kind, per window of the run."""
    grouped: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for sample in samples:
        if sample.kind not in ABORTS and sample.outcome == "ok":
            grouped[sample.kind][int(sample.started // window)].append(sample.seconds)
    return {
        kind: [
            {
                "window": number,
                "start_s": number * window,
                "requests": len(values),
                "p50_ms": percentile(values, 50),
                "p99_ms": percentile(values, 99),
            }
            for number, values in sorted(windows.items())
        ]
        for kind, windows in grouped.items()
    }


def outcome_counts(samples: list[Sample]) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    """Requests served per kind, and the other outcomes per kind."""
    served: dict[str, int] = dict.fromkeys(CLIENTS, 0)
    errors: dict[str, dict[str, int]] = defaultdict(dict)
    for sample in samples:
        if sample.outcome == "ok":
            served[sample.kind] += 1
        else:
            counts = errors[sample.kind]
            counts[sample.outcome] = counts.get(sample.outcome, 0) + 1
    return served, dict(errors)


async def settled_gauges(url: str, seconds: float = 30.0) -> tuple[dict[str, float], str]:
    """The server's in-flight gauges, polled until they are zero (or ``seconds`` pass), and
    the last ``/metrics`` text."""
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        while True:
            text = (await http.get("/metrics")).text
            gauges = {
                # Less the scrape reading it.
                "http_in_progress": _metric_sum(text, "clipserve_http_requests_in_progress") - 1,
                "grpc_in_progress": _metric_sum(text, "clipserve_grpc_requests_in_progress"),
                "queue_depth": _metric_sum(text, "clipserve_queue_depth"),
            }
            if not any(gauges.values()) or time.monotonic() > deadline:
                return gauges, text
            await asyncio.sleep(0.2)


def _samples(text: str) -> list[MetricSample]:
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def _metric_sum(text: str, name: str) -> float:
    return sum(sample.value for sample in _samples(text) if sample.name == name)


def _server_counts(text: str) -> dict[str, int]:
    """The server's own counts: answers (HTTP by route and status, gRPC by method and code),
    and items run through the model or dropped before it (their client gone), by modality."""
    counts: dict[str, int] = {}
    for sample in _samples(text):
        labels = sample.labels
        if sample.name == "clipserve_http_requests_total":
            key = f"http {labels['route']} {labels['status']}"
        elif sample.name == "clipserve_grpc_requests_total":
            key = f"grpc {labels['method']} {labels['code']}"
        elif sample.name in ("clipserve_items_encoded_total", "clipserve_items_dropped_total"):
            key = f"items {sample.name.split('_')[2]} {labels['modality']}"
        else:
            continue
        counts[key] = counts.get(key, 0) + int(sample.value)
    return counts


def report(
    samples: list[Sample],
    rss: Rss,
    gauges: dict[str, float],
    metrics: str,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """The JSON document: counts, errors, latency windows, memory, targets."""
    served, errors = outcome_counts(samples)
    backpressure = {
        kind: sum(n for outcome, n in outcomes.items() if outcome in BACKPRESSURE)
        for kind, outcomes in errors.items()
    }
    unexpected = sum(
        n
        for outcomes in errors.values()
        for outcome, n in outcomes.items()
        if outcome not in BACKPRESSURE
    )
    span = min(args.rss_span, args.warmup)
    after_warmup = rss.peak(args.warmup - span, args.warmup)
    end = rss.peak(args.duration - span, args.duration)
    growth = (end - after_warmup) / after_warmup * 100
    targets = {
        "unexpected_errors": unexpected,
        "unexpected_errors_target": 0,
        "rss_growth_after_warmup_pct": growth,
        "rss_growth_after_warmup_target_pct": RSS_GROWTH_TARGET_PCT,
        "kinds_not_served": [kind for kind, count in served.items() if not count],
        "left_in_flight": gauges,
    }
    targets["met"] = (
        unexpected == 0
        and growth < RSS_GROWTH_TARGET_PCT
        and not targets["kinds_not_served"]
        and not any(gauges.values())
    )
    mb = 1024 * 1024
    return {
        "benchmark": "soak",
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
        },
        "model": args.model,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "window_s": args.window,
        "clients": {kind: {"count": n, "pause_s": pause} for kind, (n, pause) in CLIENTS.items()},
        "requests": served,
        "backpressure": backpressure,
        "errors": errors,
        "latency": latency_windows(samples, args.window),
        "rss_mb": {
            "ready": rss.ready / mb,
            "start": rss.samples[0][1] / mb,
            "after_warmup": after_warmup / mb,
            "end": end / mb,
            "peak": max(value for _, value in rss.samples) / mb,
            "growth_after_warmup_pct": growth,
            "span_s": span,
        },
        "server_counts": _server_counts(metrics),
        "targets": targets,
    }


def model_directory(name: str) -> Path:
    """``random-vit-b32``, ``tiny-clip`` (built on first use, no network) or a directory."""
    if name == "random-vit-b32":
        return ensure_random_vit_b32()
    if name == "tiny-clip":
        return ensure_tiny_clip()
    return Path(name)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load")
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds before RSS counts")
    parser.add_argument("--window", type=float, default=60.0, help="latency window, seconds")
    parser.add_argument("--rss-span", type=float, default=30.0, help="RSS peak span, seconds")
    parser.add_argument("--rss-every", type=float, default=1.0, help="RSS sampling, seconds")
    parser.add_argument(
        "--model", default="random-vit-b32", help="random-vit-b32, tiny-clip or DIR"
    )
    parser.add_argument("--cache", type=Path, help="ONNX export cache [a temporary directory's]")
    args = parser.parse_args(argv)
    if not 0 < args.warmup < args.duration:
        parser.error("--warmup must be between 0 and --duration")
    return args


def main() -> int:
    args = parse_args()
    model = model_directory(args.model)
    cache = (
        args.cache
        or Path(os.environ.get("CLIPSERVE_BENCH_CACHE", tempfile.gettempdir())) / "clipserve-bench"
    )
    jpegs = make_jpegs(12, long_side=640)
    grpc_port = free_port()
    with (
        tempfile.TemporaryDirectory(prefix="clipserve-soak-") as data,
        server_process(
            model,
            cache,
            options=["--grpc-port", str(grpc_port)],
            env={"CLIPSERVE_DATA_DIR": data},
        ) as (url, process),
    ):
        rss = Rss(process.pid)
        samples = asyncio.run(run_load(url, grpc_port, rss, jpegs, args))
        gauges, metrics = asyncio.run(settled_gauges(url))
    result = report(samples, rss, gauges, metrics, args)
    print(json.dumps(result, indent=2))
    return 0 if result["targets"]["met"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
