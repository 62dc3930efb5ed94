"""The Unix socket transport: a listener made mode 0600, and the adapter that
turns a connected stream into the `Transport` the connection handler reads and
writes. It knows nothing of the protocol beyond its framing.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import stat
import struct
from pathlib import Path

import trio
from nexus_protocol import Encoding, Framing, frame

from .._limits import Peer, PeerLimits, peer_of_uid
from ._common import Handler, accept_loop, busy_body, in_use, run_alone

__all__ = ["StreamTransport", "open_unix_listener", "serve_unix"]

log = logging.getLogger("nexusd.transport")

_PEERCRED = struct.Struct("3i")
RECEIVE_SIZE = 256 * 1024


class StreamTransport:
    kind = "unix"
    framing = Framing.STREAM
    encoding = Encoding.MSGPACK

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.peer, self.remote, self.admin = _peer_of(stream.socket)
        self._fd = stream.socket.fileno()

    async def receive(self) -> bytes:
        return await self.stream.receive_some(RECEIVE_SIZE)

    def send_now(self, data: bytes) -> int:
        """Writes as much of `data` as the socket takes without waiting.

        Never called while `send` is writing, nor after `aclose`.
        """
        try:
            return os.write(self._fd, data)
        except BlockingIOError:
            return 0
        except OSError as exc:
            raise trio.BrokenResourceError(f"the client went away: {exc}") from None

    async def send(self, frames: list[bytes]) -> None:
        await self.stream.send_all(frames[0] if len(frames) == 1 else b"".join(frames))

    async def aclose(self) -> None:
        await self.stream.aclose()


def _peer_of(sock: trio.socket.SocketType) -> tuple[str, Peer, bool]:
    """The peer's description, its `Peer`, and whether it is this daemon's
    user (or root)."""
    try:
        pid, uid, _gid = _PEERCRED.unpack(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
    except (AttributeError, OSError):
        return "unix:?", peer_of_uid(None), False
    return f"unix:pid={pid},uid={uid}", peer_of_uid(uid), uid in (os.getuid(), 0)


async def open_unix_listener(path: Path) -> trio.SocketListener:
    """Listens on `path`, created mode 0600 (and its directory 0700 if new).

    A socket file left by a daemon that died is replaced; one that a live
    daemon answers on is not.

    Raises:
        OSError: the path is in use by a live daemon, or cannot be bound.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise OSError(errno.EEXIST, f"{path} exists and is not a socket")
        probe = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            await probe.connect(str(path))
        except OSError:
            path.unlink()  # stale: nobody is listening
        else:
            raise OSError(errno.EADDRINUSE, in_use(str(path)))
        finally:
            probe.close()
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # the socket is born 0600: no window where others connect
    try:
        await sock.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(socket.SOMAXCONN)
    return trio.SocketListener(sock)


async def serve_unix(handler: Handler, listener: trio.SocketListener, *,
                     handler_nursery: trio.Nursery, limits: PeerLimits,
                     task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Serves `listener`'s connections in `handler_nursery`, handing each
    `StreamTransport` to `handler`. A connection over `limits` is told
    `busy` and closed at once."""

    async def connection(stream: trio.SocketStream) -> None:
        transport = StreamTransport(stream)
        if not limits.admit_connection(transport.remote, admin=transport.admin):
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                transport.send_now(frame(busy_body()))
            return

        async def run() -> None:
            try:
                await handler(transport)
            finally:
                limits.release_connection(transport.remote)
        await run_alone("unix", run)

    task_status.started()
    await accept_loop(listener, listener.socket, connection, handler_nursery, name="unix")
