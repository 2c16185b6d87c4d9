"""Load: a full queue answers 503; a client that leaves has its items dropped."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from servertools import GatedSession, data_uri, live_server, png


def _noise_pngs(count: int, side: int) -> list[str]:
    rng = np.random.default_rng(0)
    return [
        data_uri(png(Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8))))
        for _ in range(count)
    ]


async def _flood(url: str, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(bodies))
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        return await asyncio.gather(*(http.post("/v1/encode", json=body) for body in bodies))


def test_a_full_queue_answers_503_with_retry_after(make_settings: Any) -> None:
    settings = make_settings(max_queue=4, max_batch_size=2, preprocess_workers=1)
    images = _noise_pngs(4, 384)
    bodies = [{"inputs": [images[i % 4], images[(i + 1) % 4]]} for i in range(48)]
    with live_server(settings) as server:
        responses = asyncio.run(_flood(server.url, bodies))
        statuses = [response.status_code for response in responses]
        assert set(statuses) <= {200, 503}, statuses
        assert 200 in statuses
        assert 503 in statuses
        for response in responses:
            if response.status_code == 503:
                assert response.json()["error"]["type"] == "overloaded"
                assert int(response.headers["retry-after"]) >= 1
        # Once the flood is over the server serves again.
        with server.client() as http:
            assert http.post("/v1/encode", json=bodies[0]).status_code == 200


def _metric(text: str, name: str, **labels: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def _closed(http: httpx.Client) -> float:
    """Requests answered 499 (client closed the connection) so far."""
    text = http.get("/metrics").text
    return _metric(text, "clipserve_http_requests_total", route="/v1/encode", status="499")


def test_a_client_that_leaves_costs_no_inference(make_settings: Any) -> None:
    with live_server(make_settings()) as server, server.client() as http:
        clip = server.app.state.clipserve.engine.model()
        gate = threading.Event()
        clip.visual = session = GatedSession(clip.visual, gate)
        before = _metric(http.get("/metrics").text, "clipserve_items_encoded_total")
        try:
            images = _noise_pngs(6, 64)
            # The first request occupies the model; the second waits behind it, then its
            # client gives up.
            first = threading.Thread(
                target=http.post, args=("/v1/encode",), kwargs={"json": {"inputs": images[:1]}}
            )
            first.start()
            assert session.entered.wait(30)
            with pytest.raises(httpx.ReadTimeout), server.client(timeout=1.0) as impatient:
                impatient.post("/v1/encode", json={"inputs": images[1:]})
            # Hold the model until the server has seen the client go (a 499), as it would
            # under real load; releasing it earlier races the disconnect notice.
            deadline = time.monotonic() + 30
            while _closed(http) < 1:
                assert time.monotonic() < deadline, "the server never noticed the client leave"
                time.sleep(0.02)
        finally:
            gate.set()
        first.join(60)
        text = http.get("/metrics").text
        # Only the first request's image ran; the five of the client that left never did.
        assert _metric(text, "clipserve_items_encoded_total") - before == 1
        assert _metric(text, "clipserve_items_dropped_total", modality="image") <= 5
        assert _closed(http) == 1
