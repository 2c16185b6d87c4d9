"""URL inputs: off by default; when on, loopback and private addresses are refused unless
allowed, the allow-list is checked on every redirect, redirects and sizes are bounded."""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from servertools import LiveServer, live_server, png

from clipserve.engine import Engine
from clipserve.server.fetch import address_refusal, host_allowed

IMAGE = png(Image.new("RGB", (48, 40), (30, 160, 90)))
BIG = b"\x89PNG" + b"\x00" * 300_000


class ImageServer:
    """A loopback HTTP server: ``/img.png``, ``/big.png``, ``/hop/N`` (N redirects to the image),
    ``/to-localhost`` (a redirect to the same image under the name ``localhost``)."""

    def __init__(self) -> None:
        self.http = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.port = self.http.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.path == "/img.png":
                    self._send(200, IMAGE)
                elif self.path == "/big.png":
                    self._send(200, BIG)
                elif self.path.startswith("/hop/"):
                    left = int(self.path.rsplit("/", 1)[1])
                    self._redirect("/img.png" if left <= 1 else f"/hop/{left - 1}")
                elif self.path == "/to-localhost":
                    self._redirect(f"http://localhost:{outer.port}/img.png")
                else:
                    self._send(404, b"no")

            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _redirect(self, location: str) -> None:
                self.send_response(302)
                self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

        return Handler


@pytest.fixture(scope="module")
def images() -> Iterator[ImageServer]:
    server = ImageServer()
    server.thread.start()
    yield server
    server.http.shutdown()


def _encode(server: LiveServer, url: str) -> httpx.Response:
    with server.client() as http:
        return http.post("/v1/encode", json={"inputs": [url]})


def test_url_fetching_is_off_by_default(client: httpx.Client, images: ImageServer) -> None:
    response = client.post("/v1/encode", json={"inputs": [f"{images.url}/img.png"]})
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "url_not_allowed"
    assert "CLIPSERVE_ALLOW_URL_FETCH=1" in response.json()["error"]["message"]


def test_loopback_is_refused_when_fetching_is_on(make_settings: Any, images: ImageServer) -> None:
    with live_server(make_settings(allow_url_fetch=True)) as server:
        response = _encode(server, f"{images.url}/img.png")
        assert response.status_code == 400
        message = response.json()["error"]["message"]
        assert "loopback" in message and "CLIPSERVE_ALLOW_PRIVATE_URLS" in message
        with server.client() as http:
            body = {"query": {"url": f"{images.url}/img.png"}, "candidates": ["a"]}
            assert http.post("/v1/rank", json=body).status_code == 400


@pytest.fixture(scope="module")
def private_ok(make_settings: Any) -> Iterator[LiveServer]:
    settings = make_settings(
        allow_url_fetch=True,
        allow_private_urls=True,
        url_allowlist=["127.0.0.1"],
        url_max_bytes=200_000,
    )
    with live_server(settings) as running:
        yield running


def test_allowed_private_url_is_fetched(
    private_ok: LiveServer, images: ImageServer, tiny_engine: Engine
) -> None:
    for url in (f"{images.url}/img.png", f"{images.url}/hop/3"):
        response = _encode(private_ok, url)
        assert response.status_code == 200, response.text
        got = np.array(response.json()["data"][0]["embedding"], np.float32)
        np.testing.assert_allclose(got, tiny_engine.encode_images([IMAGE])[0], atol=1e-5)


def test_url_errors(private_ok: LiveServer, images: ImageServer) -> None:
    too_many = _encode(private_ok, f"{images.url}/hop/4")
    assert too_many.status_code == 400
    assert "more than 3 redirects" in too_many.json()["error"]["message"]
    # The redirect's host is checked again: "localhost" is not on the allow-list.
    elsewhere = _encode(private_ok, f"{images.url}/to-localhost")
    assert elsewhere.status_code == 400
    assert "CLIPSERVE_URL_ALLOWLIST" in elsewhere.json()["error"]["message"]
    missing = _encode(private_ok, f"{images.url}/nothing.png")
    assert missing.status_code == 400
    assert "HTTP 404" in missing.json()["error"]["message"]
    big = _encode(private_ok, f"{images.url}/big.png")
    assert big.status_code == 413
    closed = _encode(private_ok, "http://127.0.0.1:9/img.png")  # the discard port: nobody there
    assert closed.status_code == 400


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("10.1.2.3", "private"),
        ("192.168.0.1", "private"),
        ("169.254.169.254", "link-local"),
        ("100.64.0.1", "non-global"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("fe80::1", "link-local"),
        ("fd00::1", "private"),
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
    ],
)
def test_address_refusal(address: str, reason: str | None) -> None:
    assert address_refusal(ipaddress.ip_address(address)) == reason


def test_host_allowlist() -> None:
    assert host_allowed("images.example.com", [".example.com"])
    assert host_allowed("example.com", [".example.com"])
    assert host_allowed("a.example.com", ["*.example.com"])
    assert host_allowed("Example.COM.", ["example.com"])
    assert not host_allowed("a.example.com", ["example.com"])
    assert not host_allowed("evilexample.com", [".example.com"])
