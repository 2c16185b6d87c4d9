"""Cross-origin access: off by default; with CLIPSERVE_CORS_ORIGINS a browser page from a listed
origin (e.g. the hosted clip-retrieval front end) may call the API, API keys included."""

from __future__ import annotations

from typing import Any

from servertools import live_server

FRONT = "https://rom1504.github.io"
PREFLIGHT = {
    "Origin": FRONT,
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization, content-type",
}


def test_no_cross_origin_headers_unless_configured(make_settings: Any) -> None:
    with live_server(make_settings()) as server, server.client() as http:
        answer = http.get("/indices-list", headers={"Origin": FRONT})
        assert answer.status_code == 200
        assert "access-control-allow-origin" not in answer.headers


def test_listed_origin_passes_preflight_and_reads_answers(make_settings: Any) -> None:
    settings = make_settings(cors_origins=[FRONT], api_keys=["k1"])
    with live_server(settings) as server, server.client() as http:
        # The preflight carries no key (browsers never send one) and must still pass.
        preflight = http.options("/knn-service", headers=PREFLIGHT)
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == FRONT
        assert "authorization" in preflight.headers["access-control-allow-headers"].lower()

        keyed = {"Origin": FRONT, "Authorization": "Bearer k1"}
        listed = http.get("/indices-list", headers=keyed)
        assert listed.status_code == 200 and listed.headers["access-control-allow-origin"] == FRONT
        refused = http.get("/indices-list", headers={"Origin": FRONT})
        # An error answer is readable by the page too, so it can show why.
        assert refused.status_code == 401
        assert refused.headers["access-control-allow-origin"] == FRONT

        other = http.options("/knn-service", headers={**PREFLIGHT, "Origin": "https://evil.test"})
        assert other.status_code == 400
        assert "access-control-allow-origin" not in other.headers


def test_origins_from_the_environment(monkeypatch: Any, make_settings: Any) -> None:
    monkeypatch.setenv("CLIPSERVE_CORS_ORIGINS", f"{FRONT}, http://localhost:3000")
    assert make_settings().cors_origins == [FRONT, "http://localhost:3000"]
