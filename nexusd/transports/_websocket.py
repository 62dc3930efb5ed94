"""The WebSocket transport: a listener (over trio-websocket, optionally TLS) and
the adapter that turns each connection into the `Transport` the connection
handler reads and writes. It knows nothing of the protocol beyond its framing.
"""

from __future__ import annotations

import logging
import ssl

import trio
from nexus_protocol import Framing
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, serve_websocket

__all__ = ["WebSocketTransport", "serve_ws"]

log = logging.getLogger("nexusd.transport")


class WebSocketTransport:
    kind = "websocket"
    framing = Framing.MESSAGE
    admin = False

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        remote = ws.remote
        self.peer = f"ws:{getattr(remote, 'address', remote)}:{getattr(remote, 'port', '')}"

    async def receive(self) -> bytes:
        try:
            message = await self.ws.get_message()
        except ConnectionClosed:
            return b""
        if isinstance(message, str):
            # Text frames are not part of the protocol; a body is binary.
            await self.ws.aclose(code=1003, reason="nexus frames are binary messages")
            return b""
        return message or b"\x00"  # an empty message is a (malformed) body, not EOF

    async def send(self, frames: list[bytes]) -> None:
        try:
            for frame in frames:
                await self.ws.send_message(frame)
        except ConnectionClosed:
            raise trio.BrokenResourceError("websocket closed") from None

    async def aclose(self) -> None:
        await self.ws.aclose()


async def serve_ws(handler: object, host: str, port: int, *, max_frame: int,
                   ssl_context: ssl.SSLContext | None, handler_nursery: trio.Nursery,
                   task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Serves WebSocket connections, handing each `WebSocketTransport` to
    `handler`; reports the bound port through `task_status`."""

    async def accept(request: WebSocketRequest) -> None:
        ws = await request.accept()
        await handler(WebSocketTransport(ws))  # type: ignore[operator]

    class _Started:
        def started(self, server: object) -> None:
            task_status.started(server.port)  # type: ignore[attr-defined]

    await serve_websocket(accept, host, port, ssl_context=ssl_context,
                          max_message_size=max_frame + 1, handler_nursery=handler_nursery,
                          task_status=_Started())  # type: ignore[arg-type]
