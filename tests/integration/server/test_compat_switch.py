"""``CLIPSERVE_COMPAT`` switches compat routers off; with API keys set, every compat route but
immich's ``/ping`` needs the key and refuses without it in its own system's error shape."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from compattools import assert_json_error, served_model
from pydantic import ValidationError
from servertools import LiveServer, live_server

from clipserve.server.settings import COMPAT_NAMES, ServerSettings

KEY = "compat-s3cret"


@pytest.fixture(scope="module")
def openai_only(make_settings: Any) -> Iterator[LiveServer]:
    with live_server(make_settings(compat="openai")) as running:
        yield running


@pytest.fixture(scope="module")
def keyed(make_settings: Any) -> Iterator[LiveServer]:
    with live_server(make_settings(api_keys=[KEY])) as running:
        yield running


def test_setting_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIPSERVE_COMPAT", "openai, immich")
    assert ServerSettings().compat == ["openai", "immich"]
    monkeypatch.setenv("CLIPSERVE_COMPAT", "none")
    assert ServerSettings().compat == []
    monkeypatch.setenv("CLIPSERVE_COMPAT", "all")
    assert ServerSettings().compat == list(COMPAT_NAMES)
    monkeypatch.delenv("CLIPSERVE_COMPAT")
    assert ServerSettings().compat == list(COMPAT_NAMES)
    monkeypatch.setenv("CLIPSERVE_COMPAT", "openai,bento")
    with pytest.raises(ValidationError, match=r"unknown compat router.*bento.*choose from"):
        ServerSettings()


def test_disabled_routers_answer_404(openai_only: LiveServer) -> None:
    with openai_only.client() as http:
        model = served_model(http)
        assert http.post("/encode_text", json={"items": ["a"]}).status_code == 404
        assert http.post("/post", json={"data": [{"text": "a"}]}).status_code == 404
        assert http.post("/text-embeddings", json={"texts": ["a"]}).status_code == 404
        assert http.get("/ping").status_code == 404
        assert http.post("/predict", data={"entries": "{}"}).status_code == 404
        enabled = http.post("/v1/embeddings", json={"model": model, "input": "a"})
        assert enabled.status_code == 200, enabled.text
        paths = {path for path in http.get("/openapi.json").json()["paths"]}
    assert "/v1/embeddings" in paths and "/encode_image" not in paths


def test_keys_apply_in_each_systems_shape(keyed: LiveServer) -> None:
    with keyed.client() as http:
        model = served_model_with_key(http)
        entries = json.dumps({"clip": {"textual": {"modelName": model}}})
        calls: list[tuple[str, dict[str, Any]]] = [
            ("/encode_text", {"json": {"items": ["a"]}}),
            ("/post", {"json": {"data": [{"text": "a"}], "execEndpoint": "/"}}),
            ("/text-embeddings", {"json": {"texts": ["a"]}}),
            ("/predict", {"data": {"entries": entries, "text": "a"}}),
            ("/v1/embeddings", {"json": {"model": model, "input": "a"}}),
        ]
        bodies = {}
        for path, request in calls:
            refused = http.post(path, **request)
            bodies[path] = assert_json_error(refused, 401)
            assert refused.headers["www-authenticate"].startswith("Bearer")
            allowed = http.post(path, headers={"authorization": f"Bearer {KEY}"}, **request)
            assert allowed.status_code == 200, (path, allowed.text)
        assert http.get("/ping").text == "pong"  # immich's health probe needs no key
    assert set(bodies["/encode_text"]) == {"error"}
    assert set(bodies["/post"]["header"]["status"]) == {"code", "description", "exception"}
    assert set(bodies["/text-embeddings"]) == {"detail"}
    assert set(bodies["/predict"]) == {"detail"}
    error = bodies["/v1/embeddings"]["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_api_key")


def test_openai_sdk_sends_the_key(keyed: LiveServer) -> None:
    with keyed.client(headers={"authorization": f"Bearer {KEY}"}) as http:
        model = served_model(http)
    base = f"{keyed.url}/v1"
    with openai.OpenAI(base_url=base, api_key=KEY, max_retries=0) as sdk:
        assert len(sdk.embeddings.create(model=model, input="a").data) == 1
    with (
        openai.OpenAI(base_url=base, api_key="wrong", max_retries=0) as sdk,
        pytest.raises(openai.AuthenticationError) as refused,
    ):
        sdk.embeddings.create(model=model, input="a")
    assert refused.value.body["code"] == "invalid_api_key"  # type: ignore[index]


def served_model_with_key(http: httpx.Client) -> str:
    response = http.get("/v1/models", headers={"authorization": f"Bearer {KEY}"})
    assert response.status_code == 200, response.text
    name: str = response.json()["data"][0]["name"]
    return name
