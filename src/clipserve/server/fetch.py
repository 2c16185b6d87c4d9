"""Fetch images named by URL — only when enabled, and never from where it would be unsafe.

A server that fetches URLs for its clients can be turned against the network it sits in
(SSRF). So, unless the settings say otherwise:

- fetching is off (``CLIPSERVE_ALLOW_URL_FETCH``);
- only ``http``/``https``, only hosts on the allow-list when one is given;
- the host is resolved and *every* address checked: loopback, private, link-local, reserved,
  multicast and other non-global addresses are refused (``CLIPSERVE_ALLOW_PRIVATE_URLS``);
- the connection goes to the address that was checked (the hostname is kept for the Host
  header and TLS), so DNS cannot answer differently between check and connect;
- redirects are followed by hand, at most :data:`MAX_REDIRECTS`, each hop checked again;
- the body is bounded (``url_max_bytes``) and the whole fetch timed out (``url_timeout``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urljoin

import httpx

from clipserve.server.errors import PayloadTooLargeError, UrlFetchError, UrlNotAllowedError
from clipserve.server.settings import ServerSettings

MAX_REDIRECTS = 3
_CONCURRENT_FETCHES = 8
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def address_refusal(address: IPAddress) -> str | None:
    """Why connecting to ``address`` is refused by default (``None`` when it is public)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    # Most specific first: 169.254/16, 0/8 and fe80::/10 are all "private" as well.
    for attribute in ("loopback", "link_local", "multicast", "unspecified", "reserved", "private"):
        if getattr(address, f"is_{attribute}"):
            return attribute.replace("_", "-")
    return None if address.is_global else "non-global"


def host_allowed(host: str, allowlist: list[str]) -> bool:
    """Whether ``host`` is on ``allowlist`` (``.example.com`` admits subdomains too)."""
    host = host.lower().rstrip(".")
    for entry in (entry.lower().rstrip(".") for entry in allowlist):
        domain = entry.removeprefix("*")
        if host == entry or (
            domain.startswith(".") and (host.endswith(domain) or host == domain[1:])
        ):
            return True
    return False


@dataclass(frozen=True)
class _Target:
    """A checked URL: where to connect and what to tell the server."""

    url: httpx.URL  #: the original URL with its host replaced by the checked address
    host: str  #: the hostname, for the Host header and TLS (SNI, certificate check)
    host_header: str


class UrlFetcher:
    """Fetches image bytes for URL inputs under the rules in the module docstring.

    Create it on the event loop that will use it; :meth:`aclose` when the app stops.
    """

    def __init__(self, settings: ServerSettings) -> None:
        self._settings = settings
        self._client = httpx.AsyncClient(
            follow_redirects=False,  # redirects are re-checked by hand
            trust_env=False,  # a proxy would connect somewhere we did not check
            timeout=httpx.Timeout(settings.url_timeout),
            headers={"User-Agent": "clipserve"},
        )
        self._slots = asyncio.Semaphore(_CONCURRENT_FETCHES)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    async def fetch(self, url: str) -> bytes:
        """The body of ``url``, following at most three checked redirects.

        Raises:
            UrlNotAllowedError: The URL (or a redirect) is refused by the rules.
            UrlFetchError: Network error, an HTTP error status, or the timeout.
            PayloadTooLargeError: The body is over ``url_max_bytes``.
        """
        async with self._slots:
            try:
                async with asyncio.timeout(self._settings.url_timeout):
                    return await self._follow(url)
            except TimeoutError:
                raise UrlFetchError(
                    f"fetching {url} timed out after {self._settings.url_timeout:g} s"
                ) from None
            except httpx.HTTPError as exc:
                raise UrlFetchError(f"fetching {url} failed: {exc or type(exc).__name__}") from exc

    async def _follow(self, url: str) -> bytes:
        for _ in range(MAX_REDIRECTS + 1):
            target = await self._check(url)
            request = self._client.build_request(
                "GET",
                target.url,
                headers={"Host": target.host_header},
                extensions={"sni_hostname": target.host},
            )
            response = await self._client.send(request, stream=True)
            try:
                if response.status_code in _REDIRECTS and "location" in response.headers:
                    url = urljoin(url, response.headers["location"])
                    continue
                return await self._body(url, response)
            finally:
                await response.aclose()
        raise UrlNotAllowedError(f"{url}: more than {MAX_REDIRECTS} redirects")

    async def _check(self, url: str) -> _Target:
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL as exc:
            raise UrlNotAllowedError(f"{url!r} is not a valid URL: {exc}") from exc
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise UrlNotAllowedError(f"{url}: only http and https URLs with a host are fetched")
        allowlist = self._settings.url_allowlist
        if allowlist and not host_allowed(parsed.host, allowlist):
            raise UrlNotAllowedError(
                f"{url}: host {parsed.host!r} is not in CLIPSERVE_URL_ALLOWLIST"
            )
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        address = await self._checked_address(url, parsed.host, port)
        host_header = parsed.netloc.decode("ascii").rpartition("@")[2]
        return _Target(parsed.copy_with(host=str(address)), parsed.host, host_header)

    async def _checked_address(self, url: str, host: str, port: int) -> IPAddress:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise UrlFetchError(f"{url}: cannot resolve {host!r}: {exc}") from exc
        addresses = [ipaddress.ip_address(str(info[4][0]).partition("%")[0]) for info in infos]
        if not addresses:
            raise UrlFetchError(f"{url}: {host!r} has no address")
        if not self._settings.allow_private_urls:
            for address in addresses:
                reason = address_refusal(address)
                if reason is not None:
                    raise UrlNotAllowedError(
                        f"{url}: {host!r} resolves to the {reason} address {address}; "
                        "set CLIPSERVE_ALLOW_PRIVATE_URLS=1 to allow such URLs"
                    )
        return addresses[0]

    async def _body(self, url: str, response: httpx.Response) -> bytes:
        if response.status_code != 200:
            raise UrlFetchError(f"fetching {url} returned HTTP {response.status_code}")
        limit = self._settings.url_max_bytes
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise PayloadTooLargeError(f"{url}: {declared} bytes; the limit is {limit}")
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > limit:
                raise PayloadTooLargeError(f"{url}: more than {limit} bytes")
        return bytes(body)
