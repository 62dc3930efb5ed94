"""The floor: a minimal trio relay over the same transports as nexusd.

    python -m bench._relay --socket PATH --ws HOST:PORT [--per-subscriber]

The same transports and libraries as nexusd: a trio Unix socket with 4-byte
length-prefixed frames, and trio-websocket with one binary message per frame.
Each connection has a reader task and a writer task joined by an unbounded
outgoing list, as any trio server that fans out must have (a subscriber can
be written to by several writers' readers at once). What it does with each
frame is in `bench._relay_core`.

It logs "listening on unix:PATH" and "listening on ws://HOST:PORT/" on stderr
as nexusd does, and stops on SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import itertools
import signal
import socket
import struct
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final

import trio
from trio_websocket import ConnectionClosed, WebSocketRequest, serve_websocket

from ._relay_core import Peer, RelayCore, split_frames

_HEADER: Final = struct.Struct(">I")
RECEIVE_SIZE: Final = 256 * 1024
_ids = itertools.count(1)


class TrioPeer(Peer):
    def __init__(self, send: Callable[[list[bytes]], Awaitable[None]], stream: bool) -> None:
        super().__init__(f"r{next(_ids)}")
        self._send = send
        self.stream = stream
        self._out: list[bytes] = []
        self._lot = trio.lowlevel.ParkingLot()
        self.closed = False

    def push(self, body: bytes) -> None:
        self._out.append(_HEADER.pack(len(body)) + body if self.stream else body)
        self._lot.unpark_all()

    def close(self) -> None:
        self.closed = True
        self._lot.unpark_all()

    async def write_loop(self) -> None:
        try:
            while True:
                while not self._out:
                    if self.closed:
                        return
                    await self._lot.park()
                frames, self._out = self._out, []
                await self._send(frames)
        except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionClosed):
            self.close()  # the peer is gone; the reader sees it too


def apply(core: RelayCore, peer: TrioPeer, body: bytes) -> None:
    reply, subscribers, change = core.handle(peer, body)
    if change is not None:
        if core.per_subscriber:
            for sub in subscribers:
                sub.push(core.encode(change))  # type: ignore[attr-defined]
        else:
            encoded = core.encode(change)
            for sub in subscribers:
                sub.push(encoded)  # type: ignore[attr-defined]
    if reply is not None:
        peer.push(reply)


async def serve_stream(core: RelayCore, stream: trio.SocketStream) -> None:
    async def send(frames: list[bytes]) -> None:
        await stream.send_all(frames[0] if len(frames) == 1 else b"".join(frames))

    peer = TrioPeer(send, stream=True)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(peer.write_loop)
            buf = bytearray()
            while True:
                data = await stream.receive_some(RECEIVE_SIZE)
                if not data:
                    break
                buf += data
                for body in split_frames(buf):
                    apply(core, peer, body)
            peer.close()
    except* (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        core.drop(peer)
        with trio.move_on_after(1, shield=True):
            await stream.aclose()


async def serve_ws(core: RelayCore, request: WebSocketRequest) -> None:
    ws = await request.accept()

    async def send(frames: list[bytes]) -> None:
        for frame in frames:
            await ws.send_message(frame)

    peer = TrioPeer(send, stream=False)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(peer.write_loop)
            while True:
                try:
                    message = await ws.get_message()
                except ConnectionClosed:
                    break
                apply(core, peer, message)  # type: ignore[arg-type]
            peer.close()
    except* (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        core.drop(peer)


async def main_async(args: argparse.Namespace) -> None:
    name = "trio-relay/per-subscriber" if args.per_subscriber else "trio-relay"
    core = RelayCore(name, per_subscriber=args.per_subscriber)
    async with trio.open_nursery() as nursery:
        if args.socket:
            path = Path(args.socket)
            path.unlink(missing_ok=True)  # noqa: ASYNC240 - once, before serving
            sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            await sock.bind(str(path))
            sock.listen(socket.SOMAXCONN)
            listener = trio.SocketListener(sock)

            async def handle(stream: trio.SocketStream) -> None:
                await serve_stream(core, stream)

            await nursery.start(trio.serve_listeners, handle, [listener])
            print(f"listening on unix:{path}", file=sys.stderr, flush=True)
        if args.ws:
            host, _, port = args.ws.rpartition(":")

            async def handle_ws(request: WebSocketRequest) -> None:
                await serve_ws(core, request)

            server = await nursery.start(serve_websocket, handle_ws, host, int(port), None)
            print(f"listening on ws://{host}:{server.port}/", file=sys.stderr, flush=True)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                break
        nursery.cancel_scope.cancel()
    if args.socket:
        Path(args.socket).unlink(missing_ok=True)  # noqa: ASYNC240 - once, after serving
    print(f"stopped (forwarded {core.forwarded} frames)", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench._relay", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--socket", help="Unix socket path")
    parser.add_argument("--ws", help="WebSocket HOST:PORT (port 0: any free port)")
    parser.add_argument("--per-subscriber", action="store_true",
                        help="encode each change once per subscriber")
    trio.run(main_async, parser.parse_args())


if __name__ == "__main__":
    main()
