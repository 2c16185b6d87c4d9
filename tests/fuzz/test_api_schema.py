"""Schema-driven fuzzing of the whole HTTP API with schemathesis.

Every operation of the server's own OpenAPI document — the native routes, the index routes
and every compatibility router (all mounted by default) — gets generated requests, valid
and invalid (schemathesis' examples, coverage and fuzzing phases), sent to a real server on
loopback that serves the tiny test model with API keys on. Each answer must:

* not be a 5xx. A 503 is documented (overload, loading), but it cannot happen here: the
  fuzzer sends one request at a time to a warm server whose queue holds 1024 items, so a
  503 would be a bug like any other 5xx;
* carry a documented status code, content type and headers, and a body that matches the
  documented schema of that status;
* reject invalid data — a 4xx, 413 included — for every negative case (a dropped or wrong
  ``Authorization`` header among them: a 401);
* accept valid data short of a 422: a schema-valid request may still get a 400 (base64 that
  is no image), a 404 (no such model or index) or a 409 (the index exists) — the schema
  cannot say those — but a validation error would mean the schema lets through what the
  server refuses;
* arrive within :data:`REQUEST_TIMEOUT` (a hang fails the test instead of stalling the run).

Part of the time the generated requests name real things, so that the fuzzer gets past
the first check of each route: the served model, the index ``fuzz`` (re-seeded before each
operation's test with a text, an image and a vector item) and its item ids.

The examples run per operation and the statuses answered are written to a JSON report:
``$CLIPSERVE_FUZZ_REPORT`` if set, else ``fuzz-report.json`` in pytest's temporary directory
(its path is printed). ``CLIPSERVE_FUZZ_EXAMPLES`` changes the examples per operation of the
default run; the ``slow`` variant runs :data:`DEEP_EXAMPLES`.
"""

from __future__ import annotations

import base64
import io
import json
import os
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from PIL import Image
from schemathesis import Case, Response
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import AcceptedNegativeData, Failure
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from clipserve.server.app import create_app
from clipserve.server.settings import COMPAT_NAMES, ServerSettings
from clipserve.testing.models import TINY_CLIP_NAME, cache_root

sys.path.insert(0, str(Path(__file__).parents[1] / "integration" / "server"))
from servertools import LiveServer, live_server

#: Examples per operation in the default run (the fuzzing phase; examples from the schema and
#: the coverage phase's boundary cases come on top).
EXAMPLES = int(os.environ.get("CLIPSERVE_FUZZ_EXAMPLES", "25"))
#: Examples per operation of the slow, deep run.
DEEP_EXAMPLES = 400
#: Seconds one request may take before the test fails as a hang.
REQUEST_TIMEOUT = 60.0
#: The index the generated requests name part of the time, and the ids of its items.
INDEX = "fuzz"
ITEM_IDS = ("text-1", "image-1", "vector-1")
#: The name the server knows the tiny model by (the directory it was given).
MODEL = str(cache_root() / TINY_CLIP_NAME)
#: The server is fuzzed with API keys on, as deployed: requests carry this one, except the
#: negative cases that drop or spoil the ``Authorization`` header (they must get a 401).
KEY = "fuzz-key"

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    positive_data_acceptance,
]


def _settings(**overrides: Any) -> ServerSettings:
    # Every compat router explicitly: a CLIPSERVE_COMPAT in the environment must not shrink
    # what is fuzzed.
    return ServerSettings(models=[MODEL], compat=list(COMPAT_NAMES), **overrides)


#: The document fuzzed: the server's own (a test checks the live /openapi.json is identical).
DOCUMENT: dict[str, Any] = create_app(_settings()).openapi()
CONFIG = schemathesis.Config.from_dict(
    {
        "headers": {"Authorization": f"Bearer {KEY}"},
        "generation": {"mode": "all"},
        "phases": {
            "examples": {"enabled": True},
            "coverage": {"enabled": True},
            "fuzzing": {"enabled": True},
            "stateful": {"enabled": False},
        },
        # immich's ``entries`` is JSON inside a form field: its shape is described in words,
        # not in the schema, and immich answers a malformed one with 422 (as we do).
        "operations": [
            {
                "include-path": "/predict",
                "checks": {
                    "positive_data_acceptance": {
                        "expected-statuses": ["2xx", 400, 401, 404, 409, 413, 422]
                    }
                },
            }
        ],
        "checks": {
            # A 413 (too large, too many) is a rejection too.
            "negative_data_rejection": {
                "expected-statuses": [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429]
            },
            # Schema-valid requests may still name no served model (404), hold bytes that are
            # no image (400) or name an index that exists (409) — the schema cannot say so —
            # but never fail validation: a 422 would mean the schema lets through what the
            # server refuses.
            "positive_data_acceptance": {"expected-statuses": ["2xx", 400, 401, 404, 409, 413]},
        },
    }
)
schema = schemathesis.openapi.from_dict(DOCUMENT, config=CONFIG)


# --------------------------------------------------------------- real names, part of the time
@schema.hook
def flatmap_path_parameters(
    context: schemathesis.HookContext, path_parameters: dict[str, Any] | None
) -> st.SearchStrategy[dict[str, Any] | None]:
    """As generated, or naming the seeded index and one of its items."""
    if not path_parameters or "name" not in path_parameters:
        return st.just(path_parameters)
    if not all(_text(value) for value in path_parameters.values()):
        return st.just(path_parameters)  # a negative case's violation stays
    real = {"name": INDEX}
    with_item = st.sampled_from(ITEM_IDS).map(
        lambda item: {**path_parameters, **real, **_item(path_parameters, item)}
    )
    # Mostly real: a made-up index name only ever meets the first check (a 400 or 404).
    return st.sampled_from([False, True, True, True]).flatmap(
        lambda use_real: with_item if use_real else st.just(path_parameters)
    )


def _item(path_parameters: dict[str, Any], item: str) -> dict[str, Any]:
    return {"item_id": item} if "item_id" in path_parameters else {}


def _text(value: Any) -> bool:
    return isinstance(value, str)


def _text_or_null(value: Any) -> bool:
    return value is None or isinstance(value, str)


def _ids(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(item, str | int) and not isinstance(item, bool) for item in value
    )


#: Top-level fields (of bodies and query strings) that name something: real values for them,
#: and what a generated value must be for it to be replaced. A value of the wrong type is a
#: negative case's violation, which must stay in the request.
_REAL_FIELDS: dict[str, tuple[st.SearchStrategy[Any], Callable[[Any], bool]]] = {
    "model": (st.just(MODEL), _text_or_null),
    "indice_name": (st.just(INDEX), _text_or_null),  # clip-retrieval
    "name": (st.just(INDEX), _text),  # creating the seeded index again: the 409 path
    # A search by an item's id; a null id stays null (the query is the input or vector).
    "id": (st.sampled_from(ITEM_IDS), _text),
    "ids": (st.lists(st.sampled_from(ITEM_IDS), min_size=1, max_size=3), _ids),  # clip-retrieval
}


@schema.hook
def flatmap_body(context: schemathesis.HookContext, body: Any) -> st.SearchStrategy[Any]:
    """As generated, or with its naming fields (``model``, ``indice_name``, ...) made real."""
    return _maybe_real(body)


@schema.hook
def flatmap_query(
    context: schemathesis.HookContext, query: dict[str, Any] | None
) -> st.SearchStrategy[dict[str, Any] | None]:
    """As generated, or with ``model`` (``/v1/encode``'s query) naming the served model."""
    return _maybe_real(query)


def _maybe_real(values: Any) -> st.SearchStrategy[Any]:
    if not isinstance(values, dict):
        return st.just(values)
    named = {
        key: real
        for key, (real, replaceable) in _REAL_FIELDS.items()
        if key in values and replaceable(values[key])
    }
    if not named:
        return st.just(values)
    chosen = st.fixed_dictionaries(named)
    return st.one_of(st.just(values), chosen.map(lambda real: {**values, **real}))


@schema.hook
def filter_failure(
    context: schemathesis.HookContext, failure: Failure, case: Case, response: Response
) -> bool:
    """Every failure but one multipart cannot carry: a form field is text, so a negative
    case's number, boolean or empty list arrives as a valid string, or as no field at all."""
    return not (
        isinstance(failure, AcceptedNegativeData)
        and (case.media_type or "").startswith("multipart/")
        and "violates `type`" in failure.message
    )


# ------------------------------------------------------------------------------- the server
@dataclass
class FuzzServer:
    """The live server under fuzzing, sessions to it, and what was sent."""

    live: LiveServer
    #: Sends the generated requests as they are (no default headers: no key added back).
    session: requests.Session
    #: The fixtures' own requests, with the key.
    admin: requests.Session
    #: Per suite (test), per operation label: examples run and statuses answered.
    examples: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    statuses: dict[str, dict[str, Counter[int]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(Counter))
    )

    def check(self, case: Case, suite: str) -> None:
        """Send ``case`` and run every check on the answer."""
        label = case.operation.label
        self.examples[suite][label] += 1
        response = case.call(base_url=self.live.url, session=self.session, timeout=REQUEST_TIMEOUT)
        self.statuses[suite][label][response.status_code] += 1
        case.validate_response(response, checks=CHECKS)

    def report(self) -> dict[str, Any]:
        """Examples and statuses per operation, and totals, for each suite that ran."""
        out: dict[str, Any] = {}
        for suite, counts in self.examples.items():
            operations = {
                label: {
                    "examples": counts[label],
                    "statuses": dict(sorted(self.statuses[suite][label].items())),
                }
                for label in sorted(counts)
            }
            out[suite] = {
                "operations": len(operations),
                "requests": sum(counts.values()),
                "per_operation": operations,
            }
        return out


def _png_data_uri() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), (200, 40, 40)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _seed_index(http: requests.Session, url: str, dim: int) -> None:
    """The index ``fuzz`` with one item of each kind (replaced if the fuzzer changed them)."""
    created = http.post(f"{url}/v1/indexes", json={"name": INDEX}, timeout=REQUEST_TIMEOUT)
    assert created.status_code in (201, 409), created.text
    items = [
        {"id": "text-1", "input": {"text": "a red square"}, "metadata": {"year": 2020}},
        {"id": "image-1", "input": _png_data_uri(), "metadata": {"tag": "red"}},
        {"id": "vector-1", "vector": [1.0] + [0.0] * (dim - 1), "metadata": {}},
    ]
    added = http.post(
        f"{url}/v1/indexes/{INDEX}/items", json={"items": items}, timeout=REQUEST_TIMEOUT
    )
    assert added.status_code == 200, added.text


@pytest.fixture(scope="module")
def fuzz(
    tiny_clip_dir: Path, clipserve_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FuzzServer]:
    """The server being fuzzed (tiny model, default limits, every router); writes the report."""
    assert str(tiny_clip_dir) == MODEL, "the tiny model is not where the fuzzer expects it"
    data_dir = tmp_path_factory.mktemp("fuzz-data")
    server_settings = _settings(cache_dir=clipserve_cache, data_dir=data_dir, api_keys=[KEY])
    with (
        live_server(server_settings) as live,
        requests.Session() as session,
        requests.Session() as admin,
    ):
        admin.headers["Authorization"] = f"Bearer {KEY}"
        state = FuzzServer(live, session, admin)
        yield state
    _write_report(state.report(), tmp_path_factory)


def _write_report(report: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> None:
    if not report:
        return
    configured = os.environ.get("CLIPSERVE_FUZZ_REPORT")
    path = Path(configured) if configured else tmp_path_factory.getbasetemp() / "fuzz-report.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    totals = ", ".join(
        f"{suite}: {entry['operations']} operations, {entry['requests']} requests"
        for suite, entry in report.items()
    )
    print(f"\nschemathesis report ({totals}): {path}")


@pytest.fixture()
def seeded(fuzz: FuzzServer) -> FuzzServer:
    """The fuzz server with the index ``fuzz`` holding its three items."""
    models = fuzz.admin.get(f"{fuzz.live.url}/v1/models", timeout=REQUEST_TIMEOUT).json()
    dim = models["data"][0]["dim"]
    _seed_index(fuzz.admin, fuzz.live.url, dim)
    return fuzz


# ------------------------------------------------------------------------------- the tests
def test_the_fuzzed_document_is_the_servers_and_lists_every_route(fuzz: FuzzServer) -> None:
    live = fuzz.admin.get(f"{fuzz.live.url}/openapi.json", timeout=REQUEST_TIMEOUT).json()
    assert live == DOCUMENT
    documented = {
        (method.upper(), path) for path, item in DOCUMENT["paths"].items() for method in item
    }
    # Every HTTP route the app serves is documented, hence fuzzed; only the documented
    # exceptions are not: the docs themselves, photofield's HEAD probes and the WebSocket.
    served = {
        (method, route.path)
        for route in fuzz.live.app.routes
        for method in getattr(route, "methods", None) or ()
        if method != "HEAD"
        and route.path not in {"/openapi.json", "/docs", "/redoc"}
        and not route.path.startswith("/docs/")
    }
    assert served - documented == set()
    assert len(documented) >= 29


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_conforms(case: Case, seeded: FuzzServer) -> None:
    seeded.check(case, "default")


@pytest.mark.slow
@schema.parametrize()
@settings(
    max_examples=DEEP_EXAMPLES,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_conforms_deep(case: Case, seeded: FuzzServer) -> None:
    seeded.check(case, "deep")


#: Operations that must have answered 2xx at least once in the default run: the generated
#: requests reached the seeded index and its items, not only the first 404.
REACH_REAL_DATA = {
    "GET /v1/indexes/{name}",
    "POST /v1/indexes/{name}/items",
    "GET /v1/indexes/{name}/items/{item_id}",
    "GET /v1/indexes/{name}/items/{item_id}/thumbnail",
    "DELETE /v1/indexes/{name}/items/{item_id}",
    "POST /v1/indexes/{name}/search",
}


def test_every_operation_was_fuzzed(fuzz: FuzzServer) -> None:
    """Runs after the default fuzz run (file order): every documented operation got examples,
    and the index routes reached real data."""
    examples = fuzz.examples.get("default")
    if not examples:
        pytest.skip("the default fuzz run did not run in this session")
    documented = {
        f"{method.upper()} {path}" for path, item in DOCUMENT["paths"].items() for method in item
    }
    assert set(examples) == documented
    statuses = fuzz.statuses["default"]
    for label in REACH_REAL_DATA:
        assert any(200 <= status < 300 for status in statuses[label]), (label, statuses[label])
