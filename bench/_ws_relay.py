"""The asyncio baseline for WebSocket: the same relay on `websockets`.

    python -m bench._ws_relay --ws HOST:PORT

The idiomatic asyncio server: `websockets.asyncio.server.serve` on the stock
asyncio event loop, one handler per connection iterating over its messages,
`websockets.broadcast` for the fan-out (one encoding, written to every
subscriber's transport without waiting) and ``await ws.send`` for replies.
What it does with each frame is in `bench._relay_core`. Per-message
compression stays off, as with nexusd (the bench's client offers none).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import signal
import sys

from websockets.asyncio.server import ServerConnection, broadcast, serve

from ._relay_core import Peer, RelayCore

_ids = itertools.count(1)


class WsPeer(Peer):
    def __init__(self, ws: ServerConnection) -> None:
        super().__init__(f"a{next(_ids)}")
        self.ws = ws


async def main_async(address: str) -> None:
    core = RelayCore("websockets-relay")

    async def handler(ws: ServerConnection) -> None:
        peer = WsPeer(ws)
        try:
            async for message in ws:
                reply, subscribers, change = core.handle(peer, message)  # type: ignore[arg-type]
                if change is not None:
                    broadcast([s.ws for s in subscribers], core.encode(change))  # type: ignore[attr-defined]
                if reply is not None:
                    await ws.send(reply)
        finally:
            core.drop(peer)

    host, _, port = address.rpartition(":")
    stop = asyncio.get_running_loop().create_future()
    for signum in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set_result, None)
    async with serve(handler, host, int(port), compression=None, max_size=1 << 20,
                     ping_interval=None, close_timeout=1) as server:
        bound = server.sockets[0].getsockname()[1]
        print(f"listening on ws://{host}:{bound}/", file=sys.stderr, flush=True)
        await stop
    print(f"stopped (forwarded {core.forwarded} frames)", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench._ws_relay", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ws", required=True, help="HOST:PORT (port 0: any free port)")
    asyncio.run(main_async(parser.parse_args().ws))


if __name__ == "__main__":
    main()
