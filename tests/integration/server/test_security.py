"""Security through the public interfaces, on one hardened server (API keys, URL fetching on,
tight limits, gRPC beside HTTP):

* API keys: every documented HTTP route but the probes answers with the key, and documents
  its 401; every method of every gRPC service of ``clip.proto``, enumerated from the
  descriptor, refuses a call without the key before looking at the request. (Refusals
  without the key, route by route and in each compat system's shape, are in
  ``test_server_ops.py::test_every_route_in_the_openapi_document_needs_the_key``,
  ``test_compat_switch.py`` and ``test_grpc_ops.py``.)
* URL fetching (SSRF): image URLs naming loopback, private, link-local, unspecified or
  IPv4-mapped addresses — in any spelling — and a public URL that redirects to one are
  refused with a 400 that says why, and nothing is fetched from the internal server.
* Limits: every route that takes a body (enumerated from the OpenAPI document, so a new one
  without an entry here fails) refuses an oversized body, too many items, a too-long text
  and a too-large image with a 4xx naming the limit — never a 500.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import grpc
import httpx
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor
from PIL import Image
from servertools import LiveServer, data_uri, live_server, png

from clipserve.server import fetch
from clipserve.v1 import clip_pb2

KEY = "security-s3cret"
AUTH = {"Authorization": f"Bearer {KEY}"}
BODY_LIMIT = 160 * 1024
ITEM_LIMIT = 4
PIXEL_LIMIT = 100_000
#: The default text limit (``CLIPSERVE_MAX_TEXT_CHARS``); the fixture checks it is in force.
TEXT_LIMIT = 100_000
INDEX = "secure"
#: Routes that answer without a key (see ``clipserve.server.auth``): the probes, the search
#: page (it holds no data) and immich's health probe.
OPEN_ROUTES = {"/healthz", "/readyz", "/", "/ping"}

SMALL_PNG = png(Image.new("RGB", (16, 16), (30, 160, 90)))
#: 400 x 400 = 160,000 pixels, over PIXEL_LIMIT (and about a kilobyte as a PNG).
BIG_PNG = png(Image.new("RGB", (400, 400), (200, 10, 10)))
LONG_TEXT = "a" * (TEXT_LIMIT + 1)


@pytest.fixture(scope="module")
def hardened(make_settings: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    settings = make_settings(
        api_keys=[KEY],
        allow_url_fetch=True,
        url_timeout=5.0,
        max_body_bytes=BODY_LIMIT,
        max_items_per_request=ITEM_LIMIT,
        max_image_pixels=PIXEL_LIMIT,
        data_dir=tmp_path_factory.mktemp("security"),
        grpc_port=0,
    )
    assert settings.max_text_chars == TEXT_LIMIT
    with live_server(settings) as running, running.client(headers=AUTH) as http:
        assert http.post("/v1/indexes", json={"name": INDEX}).status_code == 201
        item = {"id": "a", "input": "a red square"}
        assert http.post(f"/v1/indexes/{INDEX}/items", json={"items": [item]}).is_success
        yield running


@pytest.fixture()
def http(hardened: LiveServer) -> Iterator[httpx.Client]:
    with hardened.client(headers=AUTH) as client:
        yield client


def _operations(http: httpx.Client) -> dict[tuple[str, str], dict[str, Any]]:
    document = http.get("/openapi.json").json()
    return {
        (method.upper(), path): operation
        for path, item in document["paths"].items()
        for method, operation in item.items()
    }


def _concrete(path: str) -> str:
    return path.replace("{name}", INDEX).replace("{item_id}", "a")


def message_of(response: httpx.Response) -> str:
    """The error message of any router's error body (native, OpenAI, BentoML, Jina, ...)."""
    body = response.json()
    error = body.get("error")
    if isinstance(error, dict):
        return str(error["message"])
    if isinstance(error, str):
        return error
    for key in ("detail", "message"):
        if isinstance(body.get(key), str):
            return str(body[key])
    return str(body["header"]["status"]["description"])


# ------------------------------------------------------------------------------ API keys
def test_every_keyed_route_answers_with_the_key_and_documents_its_401(http: httpx.Client) -> None:
    checked = 0
    for (method, path), operation in _operations(http).items():
        if path in OPEN_ROUTES:
            continue
        assert "401" in operation["responses"], f"{method} {path} does not document its 401"
        response = http.request(method, _concrete(path), json={})
        assert response.status_code != 401, (method, path, response.text)
        assert response.status_code < 500, (method, path, response.text)
        checked += 1
    assert checked >= 25


def _grpc_call(
    channel: grpc.Channel, method: MethodDescriptor
) -> Callable[[tuple[tuple[str, str], ...]], Any]:
    """Call ``method`` with an empty request (and an empty stream of one), by its descriptor."""
    request_type = message_factory.GetMessageClass(method.input_type)
    response_type = message_factory.GetMessageClass(method.output_type)
    path = f"/{method.containing_service.full_name}/{method.name}"
    kinds = {
        (False, False): channel.unary_unary,
        (False, True): channel.unary_stream,
        (True, False): channel.stream_unary,
        (True, True): channel.stream_stream,
    }
    make = kinds[(method.client_streaming, method.server_streaming)]
    stub = make(
        path,
        request_serializer=request_type.SerializeToString,
        response_deserializer=response_type.FromString,
    )
    request = iter([request_type()]) if method.client_streaming else request_type()

    def call(metadata: tuple[tuple[str, str], ...]) -> Any:
        answer = stub(request, metadata=metadata, timeout=60)
        return list(answer) if method.server_streaming else answer

    return call


def test_every_grpc_method_refuses_a_call_without_the_key(hardened: LiveServer) -> None:
    methods = [
        method
        for service in clip_pb2.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    ]
    assert len(methods) >= 10
    with hardened.grpc_channel() as channel:
        for method in methods:
            # Fresh request iterators each time: a stream is used up by one call.
            with pytest.raises(grpc.RpcError) as refused:
                _grpc_call(channel, method)(())
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, method.full_name
            wrong = (("authorization", "Bearer not-the-key"),)
            with pytest.raises(grpc.RpcError) as refused:
                _grpc_call(channel, method)(wrong)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, method.full_name
            # With the key, the empty request gets past auth (it may well be invalid).
            try:
                _grpc_call(channel, method)((("authorization", f"Bearer {KEY}"),))
            except grpc.RpcError as error:
                assert error.code() != grpc.StatusCode.UNAUTHENTICATED, method.full_name
                assert error.code() != grpc.StatusCode.INTERNAL, (method.full_name, error)


# ----------------------------------------------------------------------------------- SSRF
class Recorder:
    """A loopback HTTP server that logs every request: ``/img.png`` is an image,
    ``/redirect?to=URL`` a 302 to ``URL``."""

    def __init__(self, host: str) -> None:
        self.hits: list[str] = []
        self.http = ThreadingHTTPServer((host, 0), self._handler())
        self.port = self.http.server_address[1]
        self.url = f"http://{host}:{self.port}"
        self._thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self._thread.start()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hits = self.hits

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                hits.append(self.path)
                parts = urlsplit(self.path)
                if parts.path == "/redirect":
                    self.send_response(302)
                    self.send_header("Location", parse_qs(parts.query)["to"][0])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = SMALL_PNG if parts.path == "/img.png" else b"internal secrets"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture(scope="module")
def internal() -> Iterator[Recorder]:
    """The server's own network: a loopback server nothing may fetch from."""
    server = Recorder("127.0.0.1")
    yield server
    server.close()


#: An internal address in a spelling, and the refusal's reason (``PORT``: the internal server).
INTERNAL_URLS = [
    ("http://127.0.0.1:PORT/img.png", "loopback"),
    ("http://localhost:PORT/img.png", "loopback"),
    ("http://127.1:PORT/img.png", "loopback"),
    ("http://2130706433:PORT/img.png", "loopback"),  # decimal
    ("http://0x7f000001:PORT/img.png", "loopback"),  # hexadecimal
    ("http://0x7f.0.0.1:PORT/img.png", "loopback"),
    ("http://0177.0.0.1:PORT/img.png", "not a valid URL"),  # octal: refused unparsed
    ("http://[::1]:PORT/img.png", "loopback"),
    ("http://[::ffff:127.0.0.1]:PORT/img.png", "loopback"),  # IPv4-mapped IPv6
    ("http://[::ffff:7f00:1]:PORT/img.png", "loopback"),
    ("http://0.0.0.0:PORT/img.png", "unspecified"),
    ("http://[::]:PORT/img.png", "unspecified"),
    ("http://10.0.0.1/img.png", "private"),
    ("http://10.255.255.254/img.png", "private"),
    ("http://172.16.0.1/img.png", "private"),
    ("http://172.31.255.254/img.png", "private"),
    ("http://192.168.0.1/img.png", "private"),
    ("http://169.254.169.254/latest/meta-data/", "link-local"),  # cloud metadata
    ("http://[fe80::1]/img.png", "link-local"),
    ("http://[fd00::1]/img.png", "private"),
    ("http://100.64.0.1/img.png", "non-global"),  # carrier-grade NAT
]


def _refused(response: httpx.Response, reason: str) -> str:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "url_not_allowed", error
    assert reason in error["message"], error
    return str(error["message"])


@pytest.mark.parametrize(("template", "reason"), INTERNAL_URLS, ids=[u for u, _ in INTERNAL_URLS])
def test_urls_to_internal_addresses_are_refused(
    http: httpx.Client, internal: Recorder, template: str, reason: str
) -> None:
    url = template.replace("PORT", str(internal.port))
    message = _refused(http.post("/v1/encode", json={"inputs": ["a", url]}), reason)
    assert message.startswith("inputs[1]: ")
    if reason != "not a valid URL":
        assert "CLIPSERVE_ALLOW_PRIVATE_URLS" in message
    assert internal.hits == []


def test_every_route_that_fetches_refuses_internal_urls(
    http: httpx.Client, internal: Recorder
) -> None:
    url = f"{internal.url}/img.png"
    model = http.get("/v1/models").json()["data"][0]["name"]
    requests: list[tuple[str, dict[str, Any]]] = [
        ("/v1/rank", {"json": {"query": {"url": url}, "candidates": ["a"]}}),
        ("/v1/classify", {"json": {"images": [url], "labels": ["a"]}}),
        ("/v1/indexes/secure/items", {"json": {"items": [{"id": "u", "input": {"url": url}}]}}),
        ("/v1/indexes/secure/search", {"json": {"input": url}}),
        ("/v1/embeddings", {"json": {"model": model, "input": [url]}}),
        ("/post", {"json": {"data": [{"uri": url}]}}),
        ("/knn-service", {"json": {"image_url": url, "modality": "image", "num_images": 1}}),
        ("/encode_image", {"data": {"items": url}}),
    ]
    for path, request in requests:
        response = http.post(path, **request)
        assert response.status_code == 400, (path, response.text)
        assert "loopback" in message_of(response), path
    assert internal.hits == []


@pytest.fixture()
def public(monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorder]:
    """A stand-in for a public web server: a loopback server on 127.0.0.2 that the URL rules
    treat as public. There is no internet here; the rules stay real for every other address."""
    server = Recorder("127.0.0.2")
    stand_in = ipaddress.ip_address("127.0.0.2")
    real = fetch.address_refusal
    monkeypatch.setattr(
        fetch, "address_refusal", lambda address: None if address == stand_in else real(address)
    )
    yield server
    server.close()


def test_a_public_url_that_redirects_inside_is_refused(
    http: httpx.Client, internal: Recorder, public: Recorder
) -> None:
    def via_public(target: str) -> httpx.Response:
        url = httpx.URL(f"{public.url}/redirect", params={"to": target})
        return http.post("/v1/encode", json={"inputs": [str(url)]})

    # The control: a redirect that stays on the public host is followed and fetched.
    followed = via_public(f"{public.url}/img.png")
    assert followed.status_code == 200, followed.text
    assert public.hits[-1] == "/img.png"
    inside = [
        (f"{internal.url}/img.png", "loopback"),
        (f"http://localhost:{internal.port}/img.png", "loopback"),
        (f"http://2130706433:{internal.port}/img.png", "loopback"),
        (f"http://[::ffff:127.0.0.1]:{internal.port}/img.png", "loopback"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://10.0.0.1/img.png", "private"),
    ]
    for target, reason in inside:
        before = len(public.hits)
        _refused(via_public(target), reason)
        assert len(public.hits) == before + 1  # the first hop was fetched, and answered 302
    assert internal.hits == []


# --------------------------------------------------------------------------------- limits
Request = dict[str, Any]


@dataclass(frozen=True)
class Over:
    """A request over one limit (or a function of the served model's name making it), and
    the answer it must get: a status, and words in the message (the setting to raise, or what
    was wrong)."""

    request: Request | Callable[[str], Request]
    status: int = 413
    says: str = ""

    def build(self, model: str) -> Request:
        return self.request(model) if callable(self.request) else self.request


def _form(*parts: tuple[str, bytes | str]) -> Request:
    """A multipart body: ``bytes`` values as image files, ``str`` values as plain fields."""
    files = [
        (name, (f"{i}.png", value, "image/png") if isinstance(value, bytes) else (None, value))
        for i, (name, value) in enumerate(parts)
    ]
    return {"files": files}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _entries(kind: str, model: str) -> str:
    return json.dumps({"clip": {kind: {"modelName": model}}})


ITEMS = "CLIPSERVE_MAX_ITEMS_PER_REQUEST"
TEXT = "CLIPSERVE_MAX_TEXT_CHARS"
PIXELS = "CLIPSERVE_MAX_IMAGE_PIXELS"
MANY = ITEM_LIMIT + 1


@dataclass(frozen=True)
class BodyRoute:
    """How a route with a body is pushed over each limit; ``None``: the limit cannot apply
    (the comment in :data:`LIMITS` says why)."""

    media: str
    items: Over | None
    text: Over | None
    image: Over | None


#: Every route with a request body. A route missing here fails
#: ``test_every_route_with_a_body_is_listed``.
LIMITS: dict[str, BodyRoute] = {
    "POST /v1/encode": BodyRoute(
        "application/json",
        Over({"json": {"inputs": ["t"] * MANY}}, says=ITEMS),
        Over({"json": {"inputs": ["ok", LONG_TEXT]}}, says=TEXT),
        Over({"json": {"inputs": [data_uri(BIG_PNG)]}}, says=PIXELS),
    ),
    "POST /v1/rank": BodyRoute(
        "application/json",
        Over({"json": {"query": "q", "candidates": ["c"] * ITEM_LIMIT}}, says=ITEMS),
        Over({"json": {"query": LONG_TEXT, "candidates": ["c"]}}, says=TEXT),
        Over({"json": {"query": data_uri(BIG_PNG), "candidates": ["c"]}}, says=PIXELS),
    ),
    "POST /v1/classify": BodyRoute(
        "application/json",
        Over({"json": {"images": [data_uri(SMALL_PNG)], "labels": ["l"] * MANY}}, says=ITEMS),
        Over({"json": {"images": [data_uri(SMALL_PNG)], "labels": [LONG_TEXT]}}, says=TEXT),
        Over({"json": {"images": [data_uri(BIG_PNG)], "labels": ["l"]}}, says=PIXELS),
    ),
    # Creates an empty index: no items, texts or images; its name has its own limit.
    "POST /v1/indexes": BodyRoute(
        "application/json",
        None,
        Over({"json": {"name": LONG_TEXT}}, status=400, says="1 to 64"),
        None,
    ),
    "POST /v1/indexes/{name}/items": BodyRoute(
        "application/json",
        Over({"json": {"items": [{"id": f"{i}", "input": "t"} for i in range(MANY)]}}, says=ITEMS),
        Over({"json": {"items": [{"id": "t", "input": {"text": LONG_TEXT}}]}}, says=TEXT),
        Over({"json": {"items": [{"id": "i", "input": data_uri(BIG_PNG)}]}}, says=PIXELS),
    ),
    # One query; "too many" is asking for too many results.
    "POST /v1/indexes/{name}/search": BodyRoute(
        "application/json",
        Over({"json": {"input": "q", "k": 1001}}, status=422, says="1000"),
        Over({"json": {"input": LONG_TEXT}}, says=TEXT),
        Over({"json": {"input": data_uri(BIG_PNG)}}, says=PIXELS),
    ),
    # BentoML: images only.
    "POST /encode_image": BodyRoute(
        "multipart/form-data",
        Over(_form(*[("items", SMALL_PNG)] * MANY), says=ITEMS),
        None,
        Over(_form(("items", BIG_PNG)), says=PIXELS),
    ),
    # BentoML: texts only.
    "POST /encode_text": BodyRoute(
        "application/json",
        Over({"json": {"items": ["t"] * MANY}}, says=ITEMS),
        Over({"json": {"items": [LONG_TEXT]}}, says=TEXT),
        None,
    ),
    "POST /rank": BodyRoute(
        "multipart/form-data",
        Over(
            _form(("queries", SMALL_PNG), ("candidates", json.dumps(["c"] * ITEM_LIMIT))),
            says=ITEMS,
        ),
        Over(_form(("queries", SMALL_PNG), ("candidates", json.dumps([LONG_TEXT]))), says=TEXT),
        Over(_form(("queries", BIG_PNG)), says=PIXELS),
    ),
    "POST /post": BodyRoute(
        "application/json",
        Over({"json": {"data": [{"text": "t"}] * MANY}}, says=ITEMS),
        Over({"json": {"data": [{"text": LONG_TEXT}]}}, says=TEXT),
        Over({"json": {"data": [{"blob": _b64(BIG_PNG)}]}}, says=PIXELS),
    ),
    # photofield: texts only.
    "POST /text-embeddings": BodyRoute(
        "application/json",
        Over({"json": {"texts": ["t"] * MANY}}, says=ITEMS),
        Over({"json": {"texts": [LONG_TEXT]}}, says=TEXT),
        None,
    ),
    # photofield: images only.
    "POST /image-embeddings": BodyRoute(
        "multipart/form-data",
        Over(_form(*[("image", SMALL_PNG)] * MANY), says=ITEMS),
        None,
        Over(_form(("image", BIG_PNG)), says=PIXELS),
    ),
    # immich: one input per request; "too many" is too many form parts.
    "POST /predict": BodyRoute(
        "multipart/form-data",
        Over(
            lambda m: _form(("entries", _entries("textual", m)), *[("text", "t")] * ITEM_LIMIT),
            says=ITEMS,
        ),
        Over(lambda m: _form(("entries", _entries("textual", m)), ("text", LONG_TEXT)), says=TEXT),
        Over(lambda m: _form(("entries", _entries("visual", m)), ("image", BIG_PNG)), says=PIXELS),
    ),
    "POST /v1/embeddings": BodyRoute(
        "application/json",
        Over(lambda m: {"json": {"model": m, "input": ["t"] * MANY}}, says=ITEMS),
        Over(lambda m: {"json": {"model": m, "input": LONG_TEXT}}, says=TEXT),
        Over(lambda m: {"json": {"model": m, "input": data_uri(BIG_PNG)}}, says=PIXELS),
    ),
    # clip-retrieval: one query; "too many" is asking for too many results.
    "POST /knn-service": BodyRoute(
        "application/json",
        Over(
            {"json": {"text": "q", "modality": "text", "num_images": 10_001}},
            status=400,
            says="at most 10000",
        ),
        Over({"json": {"text": LONG_TEXT, "modality": "image", "num_images": 1}}, says=TEXT),
        Over({"json": {"image": _b64(BIG_PNG), "modality": "text", "num_images": 1}}, says=PIXELS),
    ),
    # clip-retrieval: ids to look up, nothing embedded (a long id is merely not found).
    "POST /metadata": BodyRoute(
        "application/json",
        Over({"json": {"ids": ["a"] * MANY, "indice_name": INDEX}}, says=ITEMS),
        None,
        None,
    ),
}


def test_every_route_with_a_body_is_listed(http: httpx.Client) -> None:
    with_body = {
        f"{method} {path}"
        for (method, path), operation in _operations(http).items()
        if method in ("POST", "PUT", "PATCH") or "requestBody" in operation
    }
    assert with_body == set(LIMITS)


def _oversized(limit: int) -> Iterator[bytes]:
    # No Content-Length: the server must count what arrives.
    for _ in range(limit // 8192 + 1):
        yield b"x" * 8192


@pytest.mark.parametrize("route", sorted(LIMITS))
def test_limits_hold_on_every_route_with_a_body(http: httpx.Client, route: str) -> None:
    method, path = route.split(" ", 1)
    url = _concrete(path)
    spec = LIMITS[route]
    media = spec.media + ("; boundary=b" if spec.media.startswith("multipart/") else "")
    headers = {"Content-Type": media}
    declared = http.request(method, url, content=b"x" * (BODY_LIMIT + 1), headers=headers)
    assert declared.status_code == 413, declared.text
    assert "CLIPSERVE_MAX_BODY_BYTES" in message_of(declared)
    streamed = http.request(method, url, content=_oversized(BODY_LIMIT), headers=headers)
    assert streamed.status_code == 413, streamed.text
    model = http.get("/v1/models").json()["data"][0]["name"]
    for kind, over in (("items", spec.items), ("text", spec.text), ("image", spec.image)):
        if over is None:
            continue
        response = http.request(method, url, **over.build(model))
        assert response.status_code == over.status, (kind, response.text)
        assert over.says in message_of(response), (kind, response.text)
