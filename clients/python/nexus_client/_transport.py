"""Where the daemon is and how bytes get there: Unix socket or WebSocket.

A transport moves opaque frames; all protocol work happens in
`nexus_protocol.Connection`. The Unix socket carries a byte stream
(`Framing.STREAM`: length-prefixed bodies); WebSocket carries one binary
message per body (`Framing.MESSAGE`).
"""

from __future__ import annotations

import contextlib
import os
import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Protocol

import attrs
import trio
import trio_websocket
from nexus_protocol import Framing, default_socket_path

from ._errors import CannotConnect, ProtocolError

__all__ = ["Target", "Transport", "default_target", "open_transport"]

_RECEIVE_SIZE = 65536


@attrs.frozen
class Target:
    """A daemon address: a Unix socket `path`, or a ``ws://``/``wss://`` `url`."""

    path: str | None = None
    url: str | None = None

    @classmethod
    def parse(cls, target: str | os.PathLike[str] | Target | None) -> Target:
        """`target` as a Target: URLs by their scheme, anything else a path;
        None is `default_target()` ($NEXUS_SOCKET, $NEXUS_URL, the default socket).

        Raises:
            ValueError: an URL scheme other than ws or wss, or an empty string
                (also in $NEXUS_URL).
        """
        if isinstance(target, Target):
            return target
        if target is None:
            return default_target()
        text = os.fspath(target)
        if not text:
            raise ValueError("empty daemon address")
        scheme, sep, _ = text.partition("://")
        if sep:
            if scheme.lower() in ("ws", "wss"):
                return cls(url=text)
            if scheme.lower() == "unix":
                return cls(path=text[len("unix://"):])
            raise ValueError(f"unsupported address {text!r}: use a socket path or ws(s)://")
        return cls(path=text)

    @classmethod
    def parse_url(cls, url: str) -> Target:
        """`url`, which must be a ``ws://`` or ``wss://`` URL, as a Target.

        Raises:
            ValueError: it is not.
        """
        target = cls.parse(url)
        if target.url is None:
            raise ValueError(f"{url!r} is not a ws:// or wss:// URL")
        return target

    @property
    def framing(self) -> Framing:
        return Framing.MESSAGE if self.url is not None else Framing.STREAM

    def __str__(self) -> str:
        return self.url if self.url is not None else f"unix:{self.path}"


def default_target(environ: Mapping[str, str] | None = None) -> Target:
    """The daemon to use when none is named, found as ``nexus`` finds it:
    ``$NEXUS_SOCKET``, else ``$NEXUS_URL``, else the daemon's default Unix
    socket (`nexus_protocol.default_socket_path`).

    Raises:
        ValueError: ``$NEXUS_URL`` is not a ``ws://`` or ``wss://`` URL.
    """
    env = os.environ if environ is None else environ
    if env.get("NEXUS_SOCKET"):
        return Target(path=env["NEXUS_SOCKET"])
    if env.get("NEXUS_URL"):
        return Target.parse_url(env["NEXUS_URL"])
    home = env.get("HOME") or str(Path.home())
    return Target(path=str(default_socket_path(env, home)))


class Transport(Protocol):
    """Frames out, bytes in. Errors are trio's: `trio.BrokenResourceError`
    when the peer is gone, `trio.ClosedResourceError` after `aclose`."""

    framing: Framing

    async def send(self, data: bytes) -> None: ...

    async def receive(self) -> bytes:
        """The next bytes (STREAM) or body (MESSAGE); b"" at the end."""
        ...

    async def aclose(self) -> None: ...


@attrs.define
class _StreamTransport:
    stream: trio.abc.Stream
    framing: Framing = Framing.STREAM

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def receive(self) -> bytes:
        try:
            return bytes(await self.stream.receive_some(_RECEIVE_SIZE))
        except OSError as exc:
            raise trio.BrokenResourceError(str(exc)) from exc

    async def aclose(self) -> None:
        await self.stream.aclose()


@attrs.define
class _WebSocketTransport:
    ws: trio_websocket.WebSocketConnection
    framing: Framing = Framing.MESSAGE

    async def send(self, data: bytes) -> None:
        try:
            await self.ws.send_message(data)
        except trio_websocket.ConnectionClosed as exc:
            raise trio.BrokenResourceError(str(exc.reason)) from exc

    async def receive(self) -> bytes:
        try:
            message = await self.ws.get_message()
        except trio_websocket.ConnectionClosed:
            return b""
        if isinstance(message, str):
            raise ProtocolError("the daemon sent a text WebSocket message; bodies are binary")
        if not message:
            raise ProtocolError("the daemon sent an empty WebSocket message")
        return message

    async def aclose(self) -> None:
        await self.ws.aclose()


@asynccontextmanager
async def open_transport(target: Target, *, ssl_context: ssl.SSLContext | None = None,
                         connect_timeout: float = 10.0,
                         max_message_size: int = 1 << 20) -> AsyncIterator[Transport]:
    """Connects to `target` for the duration of the block.

    Raises:
        CannotConnect: nothing listens there, the connection was refused, or it
            took longer than `connect_timeout`.
    """
    if target.url is not None:
        async with _open_websocket(target.url, ssl_context, connect_timeout,
                                   max_message_size) as transport:
            yield transport
        return
    assert target.path is not None
    try:
        with trio.fail_after(connect_timeout):
            stream = await trio.open_unix_socket(target.path)
    except trio.TooSlowError:
        raise CannotConnect(f"timed out connecting to {target}") from None
    except OSError as exc:
        raise CannotConnect(f"cannot connect to {target}: {exc.strerror or exc}") from exc
    transport = _StreamTransport(stream)
    try:
        yield transport
    finally:
        with trio.move_on_after(1, shield=True):
            await transport.aclose()


@asynccontextmanager
async def _open_websocket(url: str, ssl_context: ssl.SSLContext | None,
                          connect_timeout: float,
                          max_message_size: int) -> AsyncIterator[Transport]:
    if url.lower().startswith("wss://") and ssl_context is None:
        ssl_context = ssl.create_default_context()
    # Slack for the WebSocket's own framing around a body of max_frame bytes.
    cm = trio_websocket.open_websocket_url(
        url, ssl_context, max_message_size=max_message_size + 64,
        message_queue_size=16, connect_timeout=connect_timeout, disconnect_timeout=1.0)
    try:
        ws = await cm.__aenter__()
    except trio_websocket.ConnectionRejected as exc:
        raise CannotConnect(f"{url} refused the WebSocket upgrade "
                            f"(HTTP {exc.status_code})") from exc
    except trio_websocket.HandshakeError as exc:
        cause = exc.__cause__ or exc
        raise CannotConnect(f"cannot connect to {url}: {cause}") from exc
    except OSError as exc:
        raise CannotConnect(f"cannot connect to {url}: {exc}") from exc
    try:
        yield _WebSocketTransport(ws)
    except BaseException as exc:
        # A closing handshake that times out leaves the connection gone anyway.
        with contextlib.suppress(trio_websocket.HandshakeError):
            await cm.__aexit__(type(exc), exc, exc.__traceback__)
        raise
    else:
        with contextlib.suppress(trio_websocket.HandshakeError):
            await cm.__aexit__(None, None, None)
    finally:
        # trio-websocket 0.12 leaves the TCP stream open when the peer closed
        # the WebSocket first (its aclose() returns early once a close reason
        # is recorded), so close it here; closing twice is harmless.
        stream = getattr(ws, "_stream", None)
        if isinstance(stream, trio.abc.AsyncResource):
            await trio.aclose_forcefully(stream)
