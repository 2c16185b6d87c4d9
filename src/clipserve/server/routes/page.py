"""``GET /``: the search page — one self-contained HTML file, no CDN, works offline."""

from __future__ import annotations

from functools import cache
from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter(tags=["search page"])


@cache
def _page() -> str:
    return resources.files("clipserve.server").joinpath("static/search.html").read_text("utf-8")


@router.get(
    "/",
    response_class=HTMLResponse,
    summary="The search page",
    responses={200: {"content": {"text/html": {"example": "<!doctype html>…"}}}},
)
async def search_page() -> HTMLResponse:
    """A page to search the indexes by text or by image, in the browser.

    It holds no data: it calls the ``/v1/indexes`` API, sending the API key typed into it
    (kept for the browser session only).
    """
    return HTMLResponse(_page(), headers={"Cache-Control": "no-cache"})
