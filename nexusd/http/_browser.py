"""Browser safety for a listener on a trusted machine: DNS rebinding and
cross-origin writes.

A page on another site can make a browser send requests to
``127.0.0.1:8000`` (cross-origin) or, after pointing its own name at that
address (DNS rebinding), as if it were the daemon's own origin. `BrowserGuard`
refuses both: a request whose `Host` is not a name the listener answers to,
and a request that can change something (anything but GET, HEAD, OPTIONS)
from an `Origin` that is neither the daemon's own nor an allowed one.
Clients that are not browsers send no `Origin`, and are not affected.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Final

from nexus_protocol import ErrorCode

from ._mapping import HttpError

__all__ = ["BrowserGuard"]

_SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
_LOOPBACK_NAMES: Final = ("localhost", "127.0.0.1", "::1")


def _host_name(host: str) -> str:
    """The name in a `Host` value, without its port (``[::1]:8000`` -> ``::1``)."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    name, sep, port = host.rpartition(":")
    return name if sep and port.isdigit() else host


class BrowserGuard:
    """Checks `Host` and `Origin`; see the module's docstring.

    `listen_host` is the address the listener is bound to: a wildcard
    address (``0.0.0.0``, ``::``) answers to any name, unless `hosts` names
    some; a loopback address also answers to ``localhost``. `origins` are the
    browser origins (``https://app.example``) allowed to write.
    """

    def __init__(self, listen_host: str, hosts: Iterable[str] = (),
                 origins: Iterable[str] = ()) -> None:
        names = {_host_name(h) for h in hosts if h.strip()}
        wildcard = False
        try:
            address = ipaddress.ip_address(listen_host)
            wildcard = address.is_unspecified
            if address.is_loopback:
                names.update(_LOOPBACK_NAMES)
        except ValueError:  # a name
            if listen_host.lower() == "localhost":
                names.update(_LOOPBACK_NAMES)
        if not wildcard:
            names.add(listen_host.lower())
        self.hosts: frozenset[str] | None = None if wildcard and not hosts else frozenset(names)
        self.origins = frozenset(o.strip().rstrip("/").lower() for o in origins if o.strip())

    def check(self, method: str, host: str | None, origin: str | None) -> None:
        """Raises `HttpError` (`forbidden`) for a request this listener must
        not serve.

        Raises:
            HttpError: the `Host` is not one of the listener's names, or a
                write comes from a foreign `Origin`.
        """
        if self.hosts is not None and (host is None or _host_name(host) not in self.hosts):
            raise HttpError(ErrorCode.FORBIDDEN,
                            f"Host {host!r} is not a name this daemon answers to "
                            "(add it to http_hosts)")
        if origin is None or method in _SAFE_METHODS:
            return
        origin = origin.strip().rstrip("/").lower()
        own = origin.partition("://")[2]
        if host is not None and own == host.strip().lower():
            return  # the daemon's own origin
        if origin not in self.origins:
            raise HttpError(ErrorCode.FORBIDDEN,
                            f"writes from the browser origin {origin!r} are not allowed "
                            "(add it to http_origins)")
