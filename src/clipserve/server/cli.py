"""``clipserve serve``: run the HTTP server with uvicorn.

Register it on the main group with ``main.add_command(serve)``. Every option is also a
``CLIPSERVE_*`` environment variable (read through :class:`ServerSettings`); an option given on
the command line wins. Also runnable as ``python -m clipserve.server.cli``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from pydantic import ValidationError

from clipserve.server.settings import ServerSettings

_HELP_ENV = "(env CLIPSERVE_{})"
_F = TypeVar("_F", bound=Callable[..., Any])


def _option(*names: str, env: str, help: str, **kwargs: Any) -> Callable[[_F], _F]:
    # Defaults stay None: a missing option must not override the environment.
    return click.option(*names, default=None, help=f"{help} {_HELP_ENV.format(env)}", **kwargs)


@click.command("serve")
@_option(
    "--model",
    "-m",
    "models",
    env="MODELS",
    multiple=True,
    help="Model to serve; repeat for several, the first is the default.",
)
@_option(
    "--precision",
    "-p",
    env="PRECISION",
    type=click.Choice(["fp32", "int8"]),
    help="Inference precision.",
)
@_option("--host", env="HOST", help="Interface to listen on [127.0.0.1].")
@_option("--port", env="PORT", type=int, help="HTTP port [8000].")
@_option(
    "--grpc-port",
    env="GRPC_PORT",
    type=int,
    help="Also serve gRPC (clipserve.v1.Clip) on this port; 0 picks a free one [off].",
)
@_option(
    "--cache-dir",
    env="CACHE_DIR",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where exported ONNX graphs are kept.",
)
@_option("--max-batch-size", env="MAX_BATCH_SIZE", type=int, help="Largest model batch.")
@_option("--max-wait-ms", env="MAX_WAIT_MS", type=float, help="Batching wait while busy.")
@_option("--max-queue", env="MAX_QUEUE", type=int, help="Queued items before 503s.")
@_option("--request-timeout", env="REQUEST_TIMEOUT", type=float, help="Seconds per request.")
@_option(
    "--allow-url-fetch/--no-allow-url-fetch",
    env="ALLOW_URL_FETCH",
    help="Fetch images named by URL.",
)
@_option(
    "--tls-cert",
    env="TLS_CERT",
    type=click.Path(dir_okay=False, path_type=Path),
    help="PEM certificate: serve HTTPS.",
)
@_option(
    "--tls-key",
    env="TLS_KEY",
    type=click.Path(dir_okay=False, path_type=Path),
    help="PEM key of --tls-cert.",
)
@_option("--log-json/--log-text", "log_json", env="LOG_JSON", help="Log format.")
@_option(
    "--log-level",
    env="LOG_LEVEL",
    type=click.Choice(["debug", "info", "warning", "error"]),
    help="Lowest level logged.",
)
@_option(
    "--graceful-shutdown-seconds",
    env="GRACEFUL_SHUTDOWN_SECONDS",
    type=int,
    help="On SIGTERM, time given to in-flight requests.",
)
def serve(**options: Any) -> None:
    """Serve the HTTP API (OpenAPI docs at /docs), and gRPC with --grpc-port.

    Models load in the background: /healthz answers at once, /readyz once every model is
    warm; a model that cannot be loaded (a missing or truncated file) stops the server with
    exit status 1 and the error. SIGTERM (or Ctrl-C) stops accepting connections, lets
    in-flight requests finish, then exits. API keys, limits and URL fetching are set through
    the environment, e.g. CLIPSERVE_API_KEYS=key1,key2 (see docs/server.md).

    \b
    clipserve serve --model ViT-B-32::openai --port 8000
    clipserve serve --port 8000 --grpc-port 50051
    CLIPSERVE_API_KEYS=s3cret clipserve serve --host 0.0.0.0
    """
    given = {key: value for key, value in options.items() if value not in (None, ())}
    if "models" in given:
        given["models"] = list(given["models"])
    try:
        settings = ServerSettings(**given)
    except ValidationError as exc:
        raise click.UsageError(_settings_problem(exc)) from exc
    run(settings)


def run(settings: ServerSettings) -> None:
    """Serve ``settings`` with uvicorn until SIGTERM/SIGINT; blocks.

    Logging goes to stderr as configured by ``log_json`` and ``log_level``. A model that
    cannot be loaded (missing, truncated or corrupt files) stops the server as soon as loading
    fails: ``click.ClickException`` (exit status 1) with the loader's error, which names the
    file — a supervisor sees the crash at start, not at the first request.
    """
    from clipserve.server import require_server_extra

    require_server_extra()
    import uvicorn

    from clipserve.server.app import create_app
    from clipserve.server.logs import configure_logging
    from clipserve.server.state import ServerState

    configure_logging(json_lines=settings.log_json, level=settings.log_level)
    app = create_app(settings)
    state: ServerState = app.state.clipserve
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        ssl_certfile=settings.tls_cert,
        ssl_keyfile=settings.tls_key,
        log_config=None,  # configure_logging did it
        access_log=False,  # the app writes its own access line, with the request id
        timeout_graceful_shutdown=settings.graceful_shutdown_seconds,
        lifespan="on",
        server_header=False,
    )
    server = uvicorn.Server(config)
    # Set on the event loop; uvicorn's main loop checks the flag ten times a second.
    state.on_load_failure = lambda: setattr(server, "should_exit", True)
    server.run()
    if state.load_error is not None:
        raise click.ClickException(f"the models failed to load: {state.load_error}")


def _settings_problem(exc: ValidationError) -> str:
    problems = [
        f"{'.'.join(str(part) for part in error['loc']) or 'settings'}: {error['msg']}"
        for error in exc.errors()
    ]
    return "invalid settings: " + "; ".join(problems)


if __name__ == "__main__":
    sys.exit(serve())
