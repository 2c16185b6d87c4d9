"""The search page in a real browser: Debian's Chromium, driven by Playwright, on a live server.

Skipped where Chromium is not installed, unless ``CLIPSERVE_REQUIRE_BROWSER=1`` (set by CI,
which installs it) turns the skip into a failure.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from servertools import LiveServer, data_uri, live_server, png

from clipserve.testing.synthetic import caption_for, make_dataset

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(os.environ.get("CLIPSERVE_TEST_ARTIFACTS", "test-artifacts"))

if CHROMIUM is None:
    if os.environ.get("CLIPSERVE_REQUIRE_BROWSER") == "1":
        raise RuntimeError("CLIPSERVE_REQUIRE_BROWSER=1 but no chromium is installed")
    pytest.skip("no chromium here (apt-get install chromium)", allow_module_level=True)

sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def shapes_server(
    make_settings: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """A server with an index of 32 shapes (image items with thumbnails) and 4 captions."""
    settings = make_settings(data_dir=tmp_path_factory.mktemp("page"), api_keys=["page-key"])
    shapes = make_dataset(32, seed=61)
    items = [
        {
            "id": f"{item.color}-{item.shape}-{i}",
            "input": data_uri(png(item.image)),
            "metadata": {"color": item.color, "shape": item.shape},
        }
        for i, item in enumerate(shapes)
    ]
    items += [{"id": f"caption-{i}", "input": {"text": shapes[i].caption}} for i in range(4)]
    with live_server(settings) as server:
        with server.client(headers={"Authorization": "Bearer page-key"}) as http:
            assert http.post("/v1/indexes", json={"name": "shapes"}).status_code == 201
            added = http.post("/v1/indexes/shapes/items", json={"items": items})
            assert added.status_code == 200, added.text
        yield server


@pytest.fixture()
def page(shapes_server: LiveServer) -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser.new_page(viewport={"width": 1200, "height": 900})
        finally:
            browser.close()


def _first_hit(page: Any) -> dict[str, Any]:
    hit = page.locator("#results .hit").first
    hit.wait_for()
    return {"id": hit.get_attribute("data-id"), "text": hit.inner_text()}


def _results_for(page: Any, label: str) -> None:
    """Wait until the status line reports the results of the search ``label``."""
    page.wait_for_function(
        "label => document.getElementById('status').textContent.includes('results for ' + label)",
        arg=label,
    )


def test_search_by_text_upload_and_more_like_this(
    page: Any, shapes_server: LiveServer, tmp_path: Path
) -> None:
    page.goto(shapes_server.url + "/")
    # With API keys on, the page asks for one; typed in, the index list appears.
    page.locator("#status").filter(has_text="API key").wait_for()
    page.fill("#key", "page-key")
    page.locator("#key").dispatch_event("change")
    page.locator("#index option", has_text="shapes").wait_for(state="attached")

    # Keyboard only: the text box has focus on load; type and press Enter.
    page.locator("#query").focus()
    page.keyboard.type(caption_for("red", "circle"))
    page.keyboard.press("Enter")
    _results_for(page, "“" + caption_for("red", "circle") + "”")
    first = _first_hit(page)
    assert first["id"].startswith("red-circle-"), first
    image = page.locator("#results .hit img").first
    image.wait_for()
    assert image.evaluate("img => img.complete && img.naturalWidth > 0")
    assert len(page.locator("#results .hit").all()) == 12
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "search-page-text.png"), full_page=True)

    # Upload a held-out picture of a blue square: blue squares come first.
    upload = tmp_path / "blue-square.png"
    blue = next(
        item for item in make_dataset(64, seed=62) if item.caption == caption_for("blue", "square")
    )
    upload.write_bytes(png(blue.image))
    page.set_input_files("#file", str(upload))
    _results_for(page, "blue-square.png")
    assert _first_hit(page)["id"].startswith("blue-square-")

    # Click (or Enter on) a result: items like it, itself first with score 1.
    target = page.locator("#results .hit").nth(1)
    target_id = target.get_attribute("data-id")
    target.focus()
    page.keyboard.press("Enter")
    _results_for(page, f"items like {target_id}")
    again = _first_hit(page)
    assert again["id"] == target_id and again["text"].startswith("1.000")
    page.screenshot(path=str(ARTIFACTS / "search-page-like.png"), full_page=True)


def test_the_page_is_self_contained_and_escapes_metadata(
    page: Any, shapes_server: LiveServer
) -> None:
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    with shapes_server.client(headers={"Authorization": "Bearer page-key"}) as http:
        hostile = {
            "id": "xss",
            "input": {"text": "a red circle"},
            "metadata": {"caption": "<img src=x onerror=window.pwned=1>"},
        }
        assert http.post("/v1/indexes/shapes/items", json={"items": [hostile]}).status_code == 200
    page.goto(shapes_server.url + "/")
    page.fill("#key", "page-key")
    page.locator("#key").dispatch_event("change")
    page.locator("#index option", has_text="shapes").wait_for(state="attached")
    page.select_option("#modality", "text")
    page.fill("#query", "a red circle")
    page.keyboard.press("Enter")
    _results_for(page, "“a red circle”")
    assert page.locator("#results .hit[data-id='xss']").count() == 1
    assert page.evaluate("window.pwned") is None  # shown as text, never run
    origin = shapes_server.url
    assert requested and all(url.startswith(origin) for url in requested), json.dumps(requested)
