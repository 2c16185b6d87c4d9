"""What the atheris targets share: running one, and the in-process app they send requests to.

Every target is a script: ``python fuzz/fuzz_<area>.py [libFuzzer flags] [corpus_dir ...]``.
A target treats clipserve's typed errors (:class:`~clipserve.errors.ClipServeError`, a 4xx
over HTTP) as the expected answer to bad input; any other exception, a 5xx, a blown memory
limit (``-rss_limit_mb``) or a slow input (``-timeout``) is a crash, which libFuzzer saves
to ``crash-*`` / ``oom-*`` / ``timeout-*`` files for replay
(``python fuzz/fuzz_<area>.py crash-...``).

Targets import this module, and clipserve, inside ``atheris.instrument_imports`` so that
coverage guides the fuzzer through clipserve's own code (not through Pillow, FastAPI or
the standard library, which would only slow every run down).
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import atheris
from starlette.testclient import TestClient

from clipserve.server.app import create_app
from clipserve.server.settings import ServerSettings
from clipserve.testing.models import cache_root, ensure_tiny_clip

#: Stands for the served model's name in seed bodies (see :func:`with_model`).
MODEL_PLACEHOLDER = b"@MODEL@"
#: The index the app holds for the search routes.
INDEX = "fuzz"
_READY_TIMEOUT = 180.0


def run(target: Callable[[bytes], None]) -> None:
    """Hand ``target`` and the command line (libFuzzer flags, corpus dirs) to atheris."""
    atheris.Setup(sys.argv, target)
    atheris.Fuzz()


@contextlib.contextmanager
def served_app() -> Iterator[TestClient]:
    """The real app (tiny test model, every compat router, an index named :data:`INDEX`
    with a few items) in process, its lifespan run, ready to answer.

    Requests go through the whole ASGI stack — middleware, routing, error handlers — on
    Starlette's test transport; an exception no handler turns into an answer propagates
    to the caller, which is how a target sees it as a crash.
    """
    with tempfile.TemporaryDirectory(prefix="clipserve-fuzz-") as data:
        settings = ServerSettings(
            models=[str(ensure_tiny_clip())], cache_dir=cache_root(), data_dir=Path(data)
        )
        with TestClient(create_app(settings), raise_server_exceptions=True) as client:
            _wait_ready(client)
            _fill_index(client)
            yield client


def served_model(client: TestClient) -> str:
    """The default model's name."""
    name: str = client.get("/v1/models").json()["data"][0]["name"]
    return name


def with_model(body: bytes, model: str) -> bytes:
    """``body`` with :data:`MODEL_PLACEHOLDER` replaced by the served model's name."""
    return body.replace(MODEL_PLACEHOLDER, model.encode())


def check_answer(route: str, status: int, text: str) -> None:
    """A 5xx is a crash: the server failed on input it should have refused."""
    if status >= 500:
        raise AssertionError(f"{route} answered {status}: {text[:2000]}")


def _wait_ready(client: TestClient) -> None:
    deadline = time.monotonic() + _READY_TIMEOUT
    while time.monotonic() < deadline:
        response = client.get("/readyz")
        if response.status_code == 200:
            return
        if response.json().get("status") == "failed":
            raise RuntimeError(f"the models failed to load: {response.text}")
        time.sleep(0.05)
    raise RuntimeError("the app did not become ready")


def _fill_index(client: TestClient) -> None:
    created = client.post("/v1/indexes", json={"name": INDEX})
    items = [
        {"id": "red", "input": {"text": "a red circle"}, "metadata": {"color": "red", "n": 1}},
        {"id": "blue", "input": {"text": "a blue square"}, "metadata": {"color": "blue", "n": 2}},
    ]
    added = client.post(f"/v1/indexes/{INDEX}/items", json={"items": items})
    if created.status_code != 201 or added.status_code != 200:
        raise RuntimeError(f"cannot fill the fuzz index: {created.text} {added.text}")
