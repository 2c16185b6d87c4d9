"""The FastAPI application: :func:`create_app` and the lifespan that loads and warms models."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from PIL import Image
from pydantic.json_schema import models_json_schema
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.gzip import GZipMiddleware

import clipserve
from clipserve.engine import Engine
from clipserve.server import compat
from clipserve.server.errors import install_error_handlers
from clipserve.server.fetch import UrlFetcher
from clipserve.server.middleware import RequestBodyMiddleware, RequestContextMiddleware
from clipserve.server.routes import ROUTERS, encode
from clipserve.server.settings import ServerSettings
from clipserve.server.state import ServerState

if TYPE_CHECKING:
    from clipserve.server.rpc import GrpcServer

log = logging.getLogger("clipserve.server")

# Responses smaller than this are not worth compressing.
_GZIP_MINIMUM_BYTES = 1024
# Float-list JSON of 8 x 512 embeddings (85 kB): level 1 -> 41 kB in 1.5 ms, level 6 -> 39 kB
# in 7.7 ms, level 9 (Starlette's default) -> 39 kB in 12 ms. The CPU is the scarce resource.
_GZIP_LEVEL = 1
_WARM_TEXT = "a photo of a cat"


def create_app(settings: ServerSettings, engine: Engine | None = None) -> FastAPI:
    """Build the HTTP application.

    The models are loaded (when ``engine`` is not given) in a worker thread after the server
    starts, so ``/healthz`` answers at once; each model then encodes one text and one image,
    and ``/readyz`` turns 200. Until then the API answers 503 with ``Retry-After``. On
    shutdown the engine is closed — the app owns it, given or not. With
    ``settings.grpc_port`` set, the lifespan also serves gRPC (:mod:`clipserve.server.rpc`)
    on the same event loop and engine; its bound port is ``app.state.clipserve.grpc_port``.

    Args:
        settings: Server and engine settings.
        engine: An engine to serve instead of building one from ``settings`` (tests, embedding
            the server in another program). Its own settings govern its limits.

    Returns:
        The FastAPI app, ready for any ASGI server.

    Example::

        app = create_app(ServerSettings(models=["ViT-B-32::openai"]))
        uvicorn.run(app, host="127.0.0.1", port=8000)
    """
    state = ServerState(settings)
    app = FastAPI(
        title="clipserve",
        version=clipserve.__version__,
        summary="CLIP embeddings: encode, rank and classify texts and images.",
        lifespan=_lifespan(state, engine),
    )
    app.state.clipserve = state
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    for router in compat.enabled_routers(settings):
        app.include_router(router)
    # Added innermost first: request context (ids, logs, metrics) sees every answer,
    # including the 413s of the body limit and the compressed bodies of gzip.
    app.add_middleware(RequestBodyMiddleware, limit=settings.max_body_bytes)
    app.add_middleware(GZipMiddleware, minimum_size=_GZIP_MINIMUM_BYTES, compresslevel=_GZIP_LEVEL)
    app.add_middleware(RequestContextMiddleware, metrics=state.metrics)
    if settings.cors_origins:
        # Outermost, so that preflights are answered before auth and every answer (413s
        # included) carries the headers a browser needs to read it.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["Server-Timing", "X-Request-ID"],
        )
    app.openapi = _openapi_with_extra_schemas(app)  # type: ignore[method-assign]
    return app


def _lifespan(
    state: ServerState, engine: Engine | None
) -> Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if state.settings.allow_url_fetch:
            state.fetcher = UrlFetcher(state.settings)
        grpc_server = await _start_grpc(state)
        loading = asyncio.create_task(
            _load_and_announce(state, engine, grpc_server), name="clipserve-load"
        )
        try:
            yield
        finally:
            if grpc_server is not None:
                # Uvicorn has drained HTTP by now; gRPC calls in flight get the same grace.
                await grpc_server.stop(state.settings.graceful_shutdown_seconds)
            loading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loading
            state.ready = False
            loaded = state.engine or engine
            if loaded is not None:
                await loaded.aclose()
            if state.fetcher is not None:
                await state.fetcher.aclose()
            if state.catalog is not None:
                await asyncio.to_thread(state.catalog.close)  # saves index snapshots
            log.info("server stopped")

    return lifespan


async def _start_grpc(state: ServerState) -> GrpcServer | None:
    if state.settings.grpc_port is None:
        return None
    # Imported here: an HTTP-only server never loads grpc.
    from clipserve.server.rpc import start_grpc_server

    return await start_grpc_server(state)


async def _load_and_announce(
    state: ServerState, engine: Engine | None, grpc_server: GrpcServer | None
) -> None:
    await _load_and_warm(state, engine)
    if grpc_server is not None:
        await grpc_server.update_health(state)  # gRPC health follows /readyz


async def _load_and_warm(state: ServerState, engine: Engine | None) -> None:
    try:
        if engine is None:
            log.info("loading models: %s", ", ".join(state.settings.models))
            # Loading reads (and may export) graphs for seconds: keep the loop answering.
            engine = await asyncio.to_thread(Engine, state.settings)
        state.engine = engine
        for name in engine.model_names:
            # Straight to the batchers, without the request timeout: a cold first run may
            # take longer than a request is allowed to.
            await engine.batcher(name, "text").submit([_WARM_TEXT], None)
            await engine.batcher(name, "image").submit([_warm_image()], None)
        state.ready = True
        log.info("ready: %s", ", ".join(engine.model_names))
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        # /healthz and /readyz report the failure; `clipserve serve` also exits (with it).
        state.load_error = f"{type(exc).__name__}: {exc}"
        log.exception("loading the models failed")
        if state.on_load_failure is not None:
            state.on_load_failure()


def _warm_image() -> bytes:
    # Small: it must pass even a strict CLIPSERVE_MAX_IMAGE_PIXELS.
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (128, 96, 64)).save(buffer, format="PNG")
    return buffer.getvalue()


def _openapi_with_extra_schemas(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """``app.openapi`` plus the schemas of bodies that routes read by hand (``$ref`` targets)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = build()
        _, extra = models_json_schema(
            [(model, "validation") for model in encode.EXTRA_SCHEMAS],
            ref_template="#/components/schemas/{model}",
        )
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        for name, schema in extra.get("$defs", {}).items():
            schemas.setdefault(name, schema)
        app.openapi_schema = document
        return document

    return openapi
