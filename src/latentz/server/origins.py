"""Which sites may use the server: the ``Host`` header (DNS rebinding) and the ``Origin`` /
``Sec-Fetch-Site`` headers (cross-site requests), checked before anything of a request is read.

A multipart POST is a "simple" request: any web page can make a visitor's browser send one to
``http://127.0.0.1:8000`` and so make the visitor's server run a model. And a page on
``evil.example`` whose name is re-pointed at 127.0.0.1 (DNS rebinding) is same-origin with the
server as far as the browser knows, so it could even read the answers: only its ``Host`` header
(``evil.example:8000``) gives it away. Hence two checks, modelled on Go's
``net/http.CrossOriginProtection``:

* every request must name a host this server answers to (421 otherwise): an IP address, ``localhost``
  or a name the operator added (``--allowed-host``; ``*`` allows any);
* a request that runs a network (every method but GET and HEAD, and the GET endpoints that sample)
  is refused with 403 when the browser says it comes from another site: ``Sec-Fetch-Site`` is
  ``cross-site`` or ``same-site``, or (older browsers) ``Origin`` names another host than ``Host``;
  unless its ``Origin`` is one the operator allowed (``--allow-origin``). Requests without either
  header (curl, scripts) are not browser requests made on someone's behalf and pass.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

DEFAULT_HOSTS = ("localhost",)
"""Names always answered, besides IP addresses (which DNS rebinding cannot produce)."""
SAFE_METHODS = ("GET", "HEAD")
CROSS_SITE_VALUES = ("cross-site", "same-site")
"""``same-site`` too: another port of localhost is the same site as this server, not the same origin."""


class OriginError(ValueError):
    """An ``--allow-origin`` value that is not ``scheme://host[:port]``, or an ``--allowed-host``
    that is not a host name."""


def normalise_origin(value: str) -> str:
    """``scheme://host[:port]`` as browsers send it in ``Origin``: lower case, no default port, no path."""
    text = value.strip()
    parts = urlsplit(text)
    try:
        port = parts.port
    except ValueError:
        raise OriginError(f"{value!r} has an invalid port") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise OriginError(f"{value!r} is not an origin like https://app.example.org or http://localhost:3000")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
        raise OriginError(f"{value!r} is not an origin: give only scheme://host[:port], without a path")
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    default_port = 443 if parts.scheme == "https" else 80
    return f"{parts.scheme}://{host}" + (f":{port}" if port not in (None, default_port) else "")


def split_host(value: str) -> tuple[str, int | None] | None:
    """A ``Host`` header's name (lower case, IPv6 without brackets) and port; None if malformed."""
    text = value.strip().lower()
    if text.startswith("["):
        name, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return None
        port_text = rest[1:] if rest else ""
    else:
        name, _, port_text = text.partition(":")
    if not name or (port_text and not port_text.isdigit()) or len(port_text) > 5:
        return None
    return name.rstrip("."), int(port_text) if port_text else None


def normalise_host(value: str) -> str:
    """An ``--allowed-host`` as it is compared: the name alone, lower case (``*`` stays ``*``)."""
    if value.strip() == "*":
        return "*"
    parsed = split_host(value)
    if parsed is None or any(char in parsed[0] for char in "/@ "):
        raise OriginError(f"{value!r} is not a host name like latentz.example.org (a port is ignored)")
    return parsed[0]


def is_ip_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class CrossSiteGuard:
    """Refuse requests for a host this server does not answer to (421) and cross-site requests that
    would run a network (403), before the app reads anything of them. See the module docstring."""

    def __init__(
        self,
        app: ASGIApp,
        allowed_hosts: Iterable[str] = (),
        allowed_origins: Iterable[str] = (),
        runs_network: Callable[[Scope], bool] = lambda scope: False,
    ) -> None:
        self.app = app
        hosts = {normalise_host(name) for name in allowed_hosts if name.strip()}
        self.any_host = "*" in hosts
        self.allowed_hosts = frozenset(DEFAULT_HOSTS) | hosts
        self.allowed_origins = frozenset(normalise_origin(origin) for origin in allowed_origins)
        self.runs_network = runs_network

    def host_allowed(self, host: str) -> bool:
        parsed = split_host(host)
        if parsed is None:
            return False
        name, _ = parsed
        return self.any_host or is_ip_address(name) or name in self.allowed_hosts

    def cross_site(self, headers: dict[bytes, bytes]) -> str | None:
        """Why this request counts as cross-site (for the 403), or None when it may run."""
        fetch_site = headers.get(b"sec-fetch-site", b"").decode("latin-1").strip().lower()
        if fetch_site in ("same-origin", "none"):  # "none": typed in the address bar, a bookmark
            return None
        origin = headers.get(b"origin", b"").decode("latin-1").strip()
        if origin and self._origin_allowed(origin):
            return None
        if fetch_site:
            return f"the browser marked it {fetch_site}" + (f" (from {_shorten(origin)})" if origin else "")
        if not origin:
            return None  # neither header: not a browser acting for a page (curl, scripts)
        host = headers.get(b"host", b"").decode("latin-1")
        if origin != "null" and _same_host(origin, host):
            return None
        return f"it comes from {_shorten(origin)}"

    def _origin_allowed(self, origin: str) -> bool:
        try:
            return normalise_origin(origin) in self.allowed_origins
        except OriginError:
            return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", ()))
        host = headers.get(b"host")
        if host is not None and not self.host_allowed(host.decode("latin-1")):
            name = _shorten(host.decode("latin-1"))
            message = (
                f"this server does not answer to the host name {name!r} (a page whose name was pointed at "
                "this machine, or a proxy that forwards another name); it answers to its IP addresses and "
                "localhost: start it with --allowed-host NAME to add a name"
            )
            await _refuse(send, 421, "unknown_host", message, _has_body(headers))
            return
        if scope["method"] not in SAFE_METHODS or self.runs_network(scope):
            reason = self.cross_site(headers)
            if reason is not None:
                message = (
                    f"cross-site request refused: {reason}, and this server runs its models only for its "
                    "own pages; start it with --allow-origin ORIGIN to let that site's pages use it"
                )
                await _refuse(send, 403, "cross_origin", message, _has_body(headers))
                return
        await self.app(scope, receive, send)


def _same_host(origin: str, host: str) -> bool:
    """Whether an ``Origin`` names the ``Host`` the request was sent to (scheme aside, as Go does)."""
    parts = urlsplit(origin)
    wanted = split_host(host)
    try:
        origin_port = parts.port
    except ValueError:
        return False
    if wanted is None or not parts.hostname or parts.scheme not in ("http", "https"):
        return False
    default_port = 443 if parts.scheme == "https" else 80
    name, port = wanted
    same_port = (origin_port or default_port) == (port or default_port)
    return parts.hostname.lower().rstrip(".") == name and same_port


def _shorten(text: str, limit: int = 100) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _has_body(headers: dict[bytes, bytes]) -> bool:
    length = headers.get(b"content-length", b"").strip()
    return b"transfer-encoding" in headers or (length.isdigit() and int(length) > 0)


async def _refuse(send: Send, status: int, code: str, message: str, unread_body: bool) -> None:
    body = json.dumps({"error": message, "code": code, "status": status}, separators=(",", ":")).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if unread_body:  # refused unread: close rather than read a body that may never end
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
