"""Which web pages, and which host names, may reach the daemon.

A browser lets any page it shows open a WebSocket (or send a request) to any
address, the daemon's loopback one included, and says which page asked in the
`Origin` header; a page whose DNS name is made to point at 127.0.0.1 (DNS
rebinding) reaches it with its own name in `Host`. Every listener a browser
can reach checks both before it serves anything: `check_browser` is that
check, a pure function, so the WebSocket and HTTP listeners share it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

import attrs

__all__ = ["ANY", "BrowserRules", "check_browser", "listen_hosts", "normalize_origin",
           "own_origins"]

#: In an allow-list: anything goes.
ANY = "*"

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def normalize_origin(origin: str) -> str:
    """`origin` as browsers compare it: scheme and host lowercase, default
    port dropped (``HTTP://Example.com:80`` is ``http://example.com``); an
    opaque origin (``null``) or anything unparsable is returned lowercase.
    """
    text = origin.strip().lower()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        return text
    if not parts.scheme or not parts.hostname:
        return text
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    if port is None or port == _DEFAULT_PORTS.get(parts.scheme):
        return f"{parts.scheme}://{host}"
    return f"{parts.scheme}://{host}:{port}"


def _host_name(host: str) -> str:
    """The name in a `Host` header, without port or brackets, lowercase."""
    text = host.strip().lower()
    if text.startswith("["):
        return text[1:text.find("]")] if "]" in text else text
    if text.count(":") == 1:
        text = text.partition(":")[0]
    return text.rstrip(".")


def listen_hosts(address: str) -> frozenset[str] | None:
    """The host names a listener on `address` answers to: a loopback
    address answers to every loopback name; a wildcard (``0.0.0.0``, ``::``)
    to any name, which is None (no `Host` check unless one is configured)."""
    name = address.strip("[]").lower()
    if name in ("", "0.0.0.0", "::"):
        return None
    try:
        loopback = ipaddress.ip_address(name).is_loopback
    except ValueError:
        loopback = name == "localhost"
    return frozenset({name, *_LOOPBACK_NAMES}) if loopback else frozenset({name})


def check_browser(origin: str | None, host: str | None, allowed_origins: Iterable[str],
                  allowed_hosts: Iterable[str] | None) -> str | None:
    """None if a request with these `Origin` and `Host` headers may be served,
    else the reason to refuse it (for a 403).

    A request without `Origin` comes from a program, not from a page, and is
    allowed. `allowed_origins` are origins as `normalize_origin` writes them
    (or `ANY`); `allowed_hosts` are host names without port (or `ANY`), None
    for no `Host` check.
    """
    if allowed_hosts is not None:
        hosts = frozenset(allowed_hosts)
        if ANY not in hosts:
            name = _host_name(host or "")
            if name not in hosts:
                return f"host {host!r} is not one this daemon answers to (see --allowed-hosts)"
    if origin is None:
        return None
    origins = frozenset(allowed_origins)
    if ANY in origins or normalize_origin(origin) in origins:
        return None
    return f"origin {origin!r} is not allowed (see --allowed-origins)"


def own_origins(scheme: str, hosts: Iterable[str], port: int) -> frozenset[str]:
    """The origins of pages a listener on `port` serves under each of the
    host names `hosts` (``http://localhost:8000``, ...)."""
    return frozenset(normalize_origin(f"{scheme}://[{name}]:{port}" if ":" in name
                                      else f"{scheme}://{name}:{port}") for name in hosts)


@attrs.frozen
class BrowserRules:
    """One listener's allow-lists, as `check_browser` takes them: the
    origins of the pages it serves (normalized, or `ANY`) and the host
    names it answers to (None: any)."""

    origins: frozenset[str]
    hosts: frozenset[str] | None

    def check(self, origin: str | None, host: str | None) -> str | None:
        """None if a request with these `Origin` and `Host` headers may be
        served, else the reason to refuse it."""
        return check_browser(origin, host, self.origins, self.hosts)
