"""The HTTP floor: a bare hypercorn + Starlette endpoint on trio.

    python -m bench._http_floor --http HOST:PORT

It serves ``PUT /sessions/{session_id}/data/{key}`` as nexusd's HTTP channel
does, up to the point where nexusd starts working: the body is read and
parsed as JSON, and a JSON reply with a seq and a version goes back. No
session, no store, no fan-out: the round trip any trio HTTP service on the
same stack pays. Served by `hypercorn.trio.serve`, as stock as it comes.
"""

from __future__ import annotations

import argparse
import json
import sys

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

_seq = 0


async def put(request: Request) -> Response:
    global _seq
    json.loads(await request.body())
    _seq += 1
    body = json.dumps({"seq": _seq, "version": _seq}, separators=(",", ":")).encode()
    return Response(body, media_type="application/json", headers={"ETag": f'"{_seq}"'})


app = Starlette(routes=[Route("/sessions/{session_id}/data/{key:path}", put,
                              methods=["PUT"])])


async def main(address: str) -> None:
    config = Config()
    config.bind = [address]
    config.accesslog = None
    config.errorlog = None
    config.include_server_header = False
    config.keep_alive_max_requests = 1 << 62  # as nexusd's listener

    async with trio.open_nursery() as nursery:
        binds = await nursery.start(serve, app, config)  # type: ignore[arg-type]
        print(f"listening on {binds[0]}/", file=sys.stderr, flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench._http_floor")
    parser.add_argument("--http", default="127.0.0.1:0", help="HOST:PORT (0: any free port)")
    trio.run(main, parser.parse_args().http)
