"""gRPC operations: health follows readiness and shutdown, reflection, API keys, gzip, TLS,
metrics, graceful shutdown, and the ``--grpc-port`` flag."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import itertools
import os
import re
import shutil
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
import pytest
from click.testing import CliRunner
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from servertools import (
    READY_TIMEOUT,
    GatedSession,
    LiveServer,
    grpc_failure,
    grpc_input,
    live_server,
    png,
    trailer,
)

from clipserve.engine import Engine
from clipserve.server import cli
from clipserve.v1 import clip_pb2, clip_pb2_grpc

Code = grpc.StatusCode
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE = "clipserve.v1.Clip"


def _health(channel: grpc.Channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return int(stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=30).status)


def _encode_text(text: str = "a red square") -> clip_pb2.EncodeRequest:
    return clip_pb2.EncodeRequest(inputs=[grpc_input(text)])


class _Watch:
    """A health ``Watch`` read in a thread: ``statuses`` grows as the server reports."""

    def __init__(self, channel: grpc.Channel) -> None:
        stub = health_pb2_grpc.HealthStub(channel)
        self.call = stub.Watch(health_pb2.HealthCheckRequest(service=SERVICE))
        self.statuses: list[int] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for response in self.call:
                self.statuses.append(int(response.status))
        except grpc.RpcError:
            pass  # cancelled by the test, or the server went away

    def wait_for(self, status: int, seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        while status not in self.statuses:
            assert time.monotonic() < deadline, f"no {status} in {self.statuses}"
            time.sleep(0.01)


def test_health_and_calls_follow_readiness(make_settings: Any) -> None:
    settings = make_settings(grpc_port=0)
    engine = Engine(settings)
    gate = threading.Event()
    clip = engine.model()
    clip.visual = GatedSession(clip.visual, gate)
    with live_server(settings, engine, ready=False) as server, server.grpc_channel() as channel:
        stub = clip_pb2_grpc.ClipStub(channel)
        try:
            # Warming up (the image warm-up is held at the gate): alive, not serving.
            assert _health(channel) == NOT_SERVING
            assert _health(channel, SERVICE) == NOT_SERVING
            loading = grpc_failure(Code.UNAVAILABLE, lambda: stub.Encode(_encode_text()))
            assert "loading" in loading.details()
            assert int(trailer(loading, "retry-after") or 0) >= 1
            requests = iter([clip_pb2.EncodeStreamRequest(id=1, input=grpc_input("a"))])
            grpc_failure(Code.UNAVAILABLE, lambda: list(stub.EncodeStream(requests)))
            grpc_failure(Code.UNAVAILABLE, lambda: stub.ListModels(clip_pb2.ListModelsRequest()))
            watch = _Watch(channel)
            watch.wait_for(NOT_SERVING)
        finally:
            gate.set()
        watch.wait_for(SERVING)
        watch.call.cancel()
        assert _health(channel) == SERVING
        assert len(stub.Encode(_encode_text()).embeddings) == 1
        unknown = health_pb2.HealthCheckRequest(service="no.such.Service")
        with pytest.raises(grpc.RpcError) as caught:
            health_pb2_grpc.HealthStub(channel).Check(unknown)
        assert caught.value.code() == Code.NOT_FOUND  # type: ignore[attr-defined]


def test_a_model_that_fails_to_load_is_not_serving_and_unavailable(make_settings: Any) -> None:
    settings = make_settings(grpc_port=0, models=["no-such-model-anywhere"])
    with live_server(settings, ready=False) as server, server.grpc_channel() as channel:
        with httpx.Client(base_url=server.url) as http:
            deadline = time.monotonic() + 60
            while http.get("/readyz").json()["status"] != "failed":
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert _health(channel) == NOT_SERVING
        stub = clip_pb2_grpc.ClipStub(channel)
        failed = grpc_failure(Code.UNAVAILABLE, lambda: stub.Encode(_encode_text()))
        assert "failed to load" in failed.details()


def test_reflection_lists_and_describes_the_service(grpc_server: LiveServer) -> None:
    with grpc_server.grpc_channel() as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        requests = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE),
        ]
        listed, described = list(stub.ServerReflectionInfo(iter(requests), timeout=30))
    names = {service.name for service in listed.list_services_response.service}
    assert {SERVICE, "grpc.health.v1.Health"} <= names
    files = described.file_descriptor_response.file_descriptor_proto
    assert files
    proto = descriptor_pb2.FileDescriptorProto.FromString(files[0])
    assert proto.package == "clipserve.v1"
    methods = {method.name for method in proto.service[0].method}
    assert methods == {
        "Encode",
        "EncodeStream",
        "Rank",
        "Classify",
        "ListModels",
        "CreateIndex",
        "ListIndexes",
        "AddItems",
        "DeleteItem",
        "Search",
    }


def test_api_keys_guard_every_clip_call_but_not_health_or_reflection(
    make_settings: Any, tmp_path: Path
) -> None:
    settings = make_settings(grpc_port=0, api_keys=["s3cret", "other"], data_dir=tmp_path)
    with live_server(settings) as server, server.grpc_channel() as channel:
        stub = clip_pb2_grpc.ClipStub(channel)
        stream = [clip_pb2.EncodeStreamRequest(id=1, input=grpc_input("a"))]
        index_item = clip_pb2.IndexItem(id="a", input=grpc_input("a"))
        numbers = itertools.count()
        png_bytes = png(Image.new("RGB", (8, 8), (200, 10, 10)))
        calls = {
            "CreateIndex": lambda md: stub.CreateIndex(
                clip_pb2.CreateIndexRequest(name=f"index-{next(numbers)}"), metadata=md
            ),
            "Classify": lambda md: stub.Classify(
                clip_pb2.ClassifyRequest(images=[grpc_input(png_bytes)], labels=["a", "b"]),
                metadata=md,
            ),
            "ListIndexes": lambda md: stub.ListIndexes(clip_pb2.ListIndexesRequest(), metadata=md),
            "AddItems": lambda md: stub.AddItems(
                clip_pb2.AddItemsRequest(index="keyed", items=[index_item]), metadata=md
            ),
            "Search": lambda md: stub.Search(
                clip_pb2.SearchRequest(index="keyed", input=grpc_input("a")), metadata=md
            ),
            "DeleteItem": lambda md: stub.DeleteItem(
                clip_pb2.DeleteItemRequest(index="keyed", id="a"), metadata=md
            ),
            "Encode": lambda md: stub.Encode(_encode_text(), metadata=md),
            "EncodeStream": lambda md: list(stub.EncodeStream(iter(stream), metadata=md)),
            "Rank": lambda md: stub.Rank(
                clip_pb2.RankRequest(query=grpc_input("a"), candidates=[grpc_input("b")]),
                metadata=md,
            ),
            "ListModels": lambda md: stub.ListModels(clip_pb2.ListModelsRequest(), metadata=md),
        }
        # Every method of the service is in the list: a new one cannot slip past this test.
        described = clip_pb2.DESCRIPTOR.services_by_name["Clip"].methods_by_name
        assert set(calls) == set(described)
        stub.CreateIndex(
            clip_pb2.CreateIndexRequest(name="keyed"),
            metadata=(("authorization", "Bearer s3cret"),),
        )
        for name, call in calls.items():
            missing = grpc_failure(Code.UNAUTHENTICATED, lambda c=call: c(()))
            assert "authorization: Bearer" in missing.details(), name
            wrong = (("authorization", "Bearer s3cre"),)
            failed = grpc_failure(Code.UNAUTHENTICATED, lambda c=call, md=wrong: c(md))
            assert failed.details() == "invalid API key"
            basic = (("authorization", "Basic s3cret"),)
            grpc_failure(Code.UNAUTHENTICATED, lambda c=call, md=basic: c(md))
            assert call((("authorization", "Bearer s3cret"),)), name
            assert call((("authorization", "bearer other"),)), name
        assert _health(channel) == SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        assert list(reflection.ServerReflectionInfo(iter([request]), timeout=30))


def test_no_key_needed_when_auth_is_off(grpc_server: LiveServer) -> None:
    with grpc_server.grpc_channel() as channel:
        stub = clip_pb2_grpc.ClipStub(channel)
        assert len(stub.Encode(_encode_text()).embeddings) == 1
        metadata = (("authorization", "Bearer anything"),)
        assert len(stub.Encode(_encode_text(), metadata=metadata).embeddings) == 1


class _CountingRelay:
    """A loopback TCP relay to ``port`` counting the bytes each way (``up``: to the server)."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.up = self.down = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._pipe, args=(client, server, "up"), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, "down"), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, direction: str) -> None:
        try:
            while data := source.recv(65536):
                setattr(self, direction, getattr(self, direction) + len(data))
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
                end.close()

    def close(self) -> None:
        self.listener.close()


def _through_relay(
    server: LiveServer, request: clip_pb2.EncodeRequest, options: list[tuple[str, Any]], **kw: Any
) -> tuple[clip_pb2.EncodeResponse, _CountingRelay]:
    relay = _CountingRelay(server.grpc_port)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{relay.port}", options=options) as channel:
            response = clip_pb2_grpc.ClipStub(channel).Encode(request, timeout=60, **kw)
    finally:
        relay.close()
    return response, relay


def test_gzip_responses_for_clients_that_accept_it_and_gzip_requests(
    grpc_server: LiveServer, shape_pngs: list[bytes]
) -> None:
    # The same text 256 times: identical embeddings, so compression shows on the wire.
    request = clip_pb2.EncodeRequest(inputs=[grpc_input("a red square")] * 256)
    # Every gRPC client accepts gzip by default ...
    zipped, relay_zipped = _through_relay(grpc_server, request, [])
    # ... this one only identity.
    identity_only = [("grpc.compression_enabled_algorithms_bitset", 1)]
    plain, relay_plain = _through_relay(grpc_server, request, identity_only)
    raw = 256 * plain.dim * 4
    assert relay_plain.down > raw
    assert relay_zipped.down < raw / 4
    assert zipped == plain
    # A gzip-compressed request is read as well.
    images = clip_pb2.EncodeRequest(inputs=[grpc_input(shape_pngs[0])] * 64)
    sent, relay_sent = _through_relay(grpc_server, images, [], compression=grpc.Compression.Gzip)
    assert relay_sent.up < len(shape_pngs[0]) * 64 / 4
    vectors = np.stack([np.frombuffer(e.vector, "<f4") for e in sent.embeddings])
    np.testing.assert_allclose(vectors, vectors[:1].repeat(64, axis=0), atol=1e-6)


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost and its key, as PEM files."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        openssl = shutil.which("openssl")
        if openssl is None:
            pytest.skip("needs the cryptography package or the openssl command")
        command = [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt"]
        command += ["ec_paramgen_curve:P-256", "-nodes", "-days", "1", "-subj", "/CN=localhost"]
        command += ["-keyout", str(key), "-out", str(cert)]
        command += ["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"]
        subprocess.run(command, check=True, capture_output=True)
        return cert, key
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    alt = x509.SubjectAlternativeName(
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    )
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(alt, critical=False)
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert, key


def test_tls_when_a_certificate_is_configured(make_settings: Any, tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    settings = make_settings(grpc_port=0, tls_cert=cert, tls_key=key)
    # LiveServer's uvicorn is plain HTTP whatever the settings; gRPC reads them itself.
    with live_server(settings) as server:
        credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        with grpc.secure_channel(server.grpc_target, credentials) as channel:
            stub = clip_pb2_grpc.ClipStub(channel)
            assert stub.ListModels(clip_pb2.ListModelsRequest(), timeout=30).models
            assert len(stub.Encode(_encode_text(), timeout=30).embeddings) == 1
        with server.grpc_channel() as plain:
            stub = clip_pb2_grpc.ClipStub(plain)
            grpc_failure(
                Code.UNAVAILABLE, lambda: stub.ListModels(clip_pb2.ListModelsRequest(), timeout=5)
            )


def _metric(text: str, name: str, **labels: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def test_metrics_count_calls_by_method_and_code(grpc_server: LiveServer) -> None:
    name = "clipserve_grpc_requests_total"
    with grpc_server.client() as http, grpc_server.grpc_channel() as channel:
        stub = clip_pb2_grpc.ClipStub(channel)
        before = http.get("/metrics").text
        stub.ListModels(clip_pb2.ListModelsRequest())
        stub.ListModels(clip_pb2.ListModelsRequest())
        unknown = clip_pb2.EncodeRequest(inputs=[grpc_input("a")], model="nope")
        grpc_failure(Code.NOT_FOUND, lambda: stub.Encode(unknown))
        after = http.get("/metrics").text
    ok = _metric(after, name, method="ListModels", code="OK")
    assert ok - _metric(before, name, method="ListModels", code="OK") == 2
    missing = _metric(after, name, method="Encode", code="NOT_FOUND")
    assert missing - _metric(before, name, method="Encode", code="NOT_FOUND") == 1
    assert _metric(after, "clipserve_grpc_request_duration_seconds_count", method="Encode") >= 1


def test_shutdown_reports_not_serving_and_lets_calls_in_flight_finish(
    make_settings: Any, shape_pngs: list[bytes]
) -> None:
    server = LiveServer(make_settings(grpc_port=0, graceful_shutdown_seconds=60))
    server.start().wait_ready()
    clip = server.app.state.clipserve.engine.model()
    gate = threading.Event()
    clip.visual = session = GatedSession(clip.visual, gate)
    stopper = threading.Thread(target=server.stop, daemon=True)
    try:
        with server.grpc_channel() as channel:
            stub = clip_pb2_grpc.ClipStub(channel)
            request = clip_pb2.EncodeRequest(inputs=[grpc_input(shape_pngs[0])])
            in_flight = stub.Encode.future(request)
            assert session.entered.wait(30)
            watch = _Watch(channel)
            watch.wait_for(SERVING)
            stopper.start()
            watch.wait_for(NOT_SERVING)
            watch.call.cancel()  # else the watch itself would be a call in flight
            # Stopping: new calls are refused (right after NOT_SERVING was announced) while
            # the one in flight goes on.
            assert _refused_soon(server)
            assert not in_flight.done()
            gate.set()
            assert len(in_flight.result(timeout=60).embeddings) == 1
    finally:
        gate.set()
        if stopper.ident is None:
            server.stop()
        stopper.join(60)
    assert not stopper.is_alive()


def _refused_soon(server: LiveServer, seconds: float = 30) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with server.grpc_channel() as fresh:
            try:
                clip_pb2_grpc.ClipStub(fresh).Encode(_encode_text(), timeout=10)
            except grpc.RpcError as exc:
                return exc.code() == Code.UNAVAILABLE  # type: ignore[attr-defined,no-any-return]
        time.sleep(0.02)
    return False


def test_serve_takes_the_grpc_port_from_the_flag_or_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[Any] = []
    monkeypatch.setattr(cli, "run", seen.append)
    monkeypatch.delenv("CLIPSERVE_GRPC_PORT", raising=False)
    runner = CliRunner()
    assert runner.invoke(cli.serve, []).exit_code == 0
    assert runner.invoke(cli.serve, ["--grpc-port", "50123"]).exit_code == 0
    monkeypatch.setenv("CLIPSERVE_GRPC_PORT", "0")
    assert runner.invoke(cli.serve, []).exit_code == 0
    assert runner.invoke(cli.serve, ["--grpc-port", "50124"]).exit_code == 0
    assert [settings.grpc_port for settings in seen] == [None, 50123, 0, 50124]
    refused = runner.invoke(cli.serve, ["--grpc-port", "70000"])
    assert refused.exit_code == 2
    assert "grpc_port" in refused.output


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _logged_grpc_port(log_path: Path, process: subprocess.Popen[bytes]) -> int:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        assert process.poll() is None, log_path.read_text()
        found = re.search(r"gRPC listening on grpc://127\.0\.0\.1:(\d+)", log_path.read_text())
        if found:
            return int(found.group(1))
        time.sleep(0.05)
    raise AssertionError("the server never said where gRPC listens")


def test_clipserve_serve_grpc_port_0_serves_until_sigterm(
    tiny_clip_dir: Path, clipserve_cache: Path, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "CLIPSERVE_CACHE_DIR": str(clipserve_cache),
        "CLIPSERVE_PORT": str(_free_port()),
    }
    command = [sys.executable, "-m", "clipserve.server.cli", "--model", str(tiny_clip_dir)]
    command += ["--grpc-port", "0", "--log-text"]
    log_path = tmp_path / "server.log"  # a file, not a pipe: a full pipe would stall the server
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(command, env=env, stderr=log_file)
    try:
        port = _logged_grpc_port(log_path, process)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            watch = _Watch(channel)
            watch.wait_for(SERVING, READY_TIMEOUT)
            watch.call.cancel()
            stub = clip_pb2_grpc.ClipStub(channel)
            assert len(stub.Encode(_encode_text(), timeout=60).embeddings) == 1
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) in (0, -signal.SIGTERM)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert "gRPC server stopped" in log_path.read_text()
