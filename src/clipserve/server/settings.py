"""Settings of the HTTP server: the engine's :class:`~clipserve.settings.Settings` plus
network, security and limit options, all read from ``CLIPSERVE_*`` environment variables too."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode

from clipserve.settings import Settings

LogLevel = Literal["debug", "info", "warning", "error"]

#: Names of the compatibility routers (``clipserve.server.compat``), for ``CLIPSERVE_COMPAT``.
COMPAT_NAMES = ("bentoml", "clip_as_service", "photofield", "immich", "openai", "clip_retrieval")


def _split_commas(value: Any) -> Any:
    # Environment variables hold lists as "a,b,c" (NoDecode keeps pydantic-settings from
    # insisting on JSON); keyword arguments pass real lists through untouched.
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class ServerSettings(Settings):
    """Configuration of ``clipserve serve``: everything the engine takes, and the server's own.

    Example::

        ServerSettings(models=["ViT-B-32::openai"], port=8080, api_keys=["s3cret"])

    or from the environment: ``CLIPSERVE_PORT=8080 CLIPSERVE_API_KEYS=key1,key2``.
    """

    host: str = Field("127.0.0.1", description="Interface to listen on (0.0.0.0 for all).")
    port: int = Field(8000, ge=0, le=65535, description="HTTP port (0 picks a free one).")
    grpc_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="gRPC port on the same host (0 picks a free one); no gRPC when unset.",
    )
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        repr=False,
        description="Bearer keys accepted (comma-separated in the environment); empty: no auth.",
    )
    max_body_bytes: int = Field(
        32 * 1024 * 1024,
        ge=1,
        description="Largest request body, checked after gzip decoding too (413 beyond).",
    )
    max_items_per_request: int = Field(
        1024, ge=1, description="Most inputs (texts + images, or labels) in one request (413)."
    )
    allow_url_fetch: bool = Field(False, description="Let requests name images by http(s) URL.")
    url_allowlist: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=(
            "Hosts URL inputs may name (comma-separated); '.example.com' also admits its "
            "subdomains. Empty: any public host."
        ),
    )
    allow_private_urls: bool = Field(
        False, description="Allow URLs resolving to loopback, private or link-local addresses."
    )
    url_max_bytes: int = Field(
        16 * 1024 * 1024, ge=1, description="Largest image fetched from a URL."
    )
    url_timeout: float = Field(
        10.0, gt=0, description="Seconds to fetch one URL, redirects included."
    )
    tls_cert: Path | None = Field(
        None, description="PEM certificate: serve HTTPS, and gRPC over TLS."
    )
    tls_key: Path | None = Field(None, description="PEM private key of tls_cert.")
    log_json: bool = Field(True, description="Log one JSON object per line (else plain text).")
    log_level: LogLevel = Field("info", description="Lowest level logged.")
    graceful_shutdown_seconds: int = Field(
        30, ge=1, description="On SIGTERM, how long in-flight requests may take to finish."
    )
    compat: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(COMPAT_NAMES),
        description=(
            "Compatibility routers to mount (comma-separated): "
            + ", ".join(COMPAT_NAMES)
            + "; 'all' (default) or 'none'."
        ),
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=(
            "Web origins whose pages may call the API from a browser (comma-separated, e.g. "
            "the hosted clip-retrieval front end); '*' for any. Empty: no cross-origin access."
        ),
    )

    _split_lists = field_validator("api_keys", "url_allowlist", "cors_origins", mode="before")(
        _split_commas
    )

    @field_validator("compat", mode="before")
    @classmethod
    def _compat_names(cls, value: Any) -> Any:
        names = _split_commas(value)
        if not isinstance(names, list):
            return names
        names = [str(name).strip().lower().replace("-", "_") for name in names]
        if names == ["all"]:
            return list(COMPAT_NAMES)
        if names in (["none"], []):
            return []
        unknown = [name for name in names if name not in COMPAT_NAMES]
        if unknown:
            raise ValueError(
                f"unknown compat router(s) {', '.join(unknown)}: choose from "
                f"{', '.join(COMPAT_NAMES)}, or 'all' or 'none'"
            )
        return names

    @model_validator(mode="after")
    def _tls_pair(self) -> ServerSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be given together")
        return self
