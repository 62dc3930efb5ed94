"""The MCP channel: a tool call's round trip and a change's notification.

    python bench/mcp_channel.py [--quick] [--json PATH]

Against a real daemon (``nexusd serve --durability memory``, a subprocess),
with the SDK's own client, in one run:

- tool call round trip: `set_session_data` over streamable HTTP (``/mcp``)
  and over stdio (``nexus mcp``), beside the `echo` tool of the SDK's
  minimal server (`bench._mcp_echo`) on the same transports — the floor of
  any MCP tool call on this SDK;
- notification latency: a write from another channel (a `nexus_client`
  connection on the Unix socket, channel cli) until the MCP client receives
  `notifications/resources/updated` for the key it subscribed, over HTTP and
  over stdio. Writer and MCP client are one process, so one clock.

Prints p50/p99 in µs and writes JSON (default bench/results/mcp.json).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import mcp_types as types
import trio
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from nexus_client import open_client

RESULTS = Path(__file__).resolve().parent / "results" / "mcp.json"
ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pct(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"p50": statistics.median(ordered) * 1e6,
            "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e6,
            "n": len(ordered)}


class _Updates:
    def __init__(self) -> None:
        self.arrived = trio.Event()

    async def handle(self, message: Any) -> None:
        if isinstance(message, types.ResourceUpdatedNotification):
            self.arrived.set()


@asynccontextmanager
async def _client(server: Any, updates: _Updates | None = None) -> AsyncIterator[Client]:
    async with Client(server, mode="legacy",
                      message_handler=updates.handle if updates else None) as client:
        yield client


async def _calls(client: Client, tool: str, args: dict[str, Any], n: int) -> list[float]:
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        result = await client.call_tool(tool, {**args, "value": i} if "key" in args else args)
        times.append(time.perf_counter() - t0)
        assert not result.is_error, result
    return times


async def _notifications(server: Any, socket_path: str, sid: str, token: str,
                         n: int) -> list[float]:
    updates = _Updates()
    times = []
    async with _client(server, updates) as client, open_client(
            socket_path, channel="cli", tokens={sid: token}) as writer:
        await client.subscribe_resource(f"nexus://sessions/{sid}/data/watched")
        for i in range(n):
            updates.arrived = trio.Event()
            t0 = time.perf_counter()
            await writer.set(sid, "watched", i)
            await updates.arrived.wait()
            times.append(time.perf_counter() - t0)
    return times[n // 10:]


async def run(quick: bool, base: Path, env: dict[str, str], echo_port: int) -> dict[str, Any]:
    n = 100 if quick else 1000
    warmup = n // 10
    sock = base / "n.sock"
    rows: dict[str, Any] = {}
    deadline = time.monotonic() + 30
    while not (m := re.search(r"listening on (http://127\.0\.0\.1:\d+)/",
                              (base / "nexusd.log").read_text())):
        assert time.monotonic() < deadline, "nexusd did not start"
        await trio.sleep(0.05)
    url = m[1] + "/mcp"
    async with open_client(str(sock), channel="cli") as admin:
        info = await admin.create_session()
    sid, token = info.session_id, info.token
    bridge = StdioServerParameters(command=sys.executable, args=[
        "-c", "import sys; from nexus_client._cli import main; sys.exit(main())",
        "mcp", "--socket", str(sock), "--session", sid, "--token", token], env=env)
    echo_stdio = StdioServerParameters(command=sys.executable,
                                       args=["-m", "bench._mcp_echo", "stdio"],
                                       cwd=str(ROOT), env=dict(os.environ))
    await trio.sleep(1.0)  # the echo server's listener

    def http(target: str, auth: str | None) -> Any:
        headers = {"Authorization": f"Bearer {auth}"} if auth else {}
        return streamable_http_client(target, http_client=httpx2.AsyncClient(headers=headers))

    cases = [("set_session_data over HTTP /mcp", lambda: http(url, token), "set"),
             ("SDK echo server over HTTP", lambda: http(
                 f"http://127.0.0.1:{echo_port}/mcp", None), "echo"),
             ("set_session_data over stdio (nexus mcp)", lambda: bridge, "set"),
             ("SDK echo server over stdio", lambda: echo_stdio, "echo")]
    for label, server, kind in cases:
        tool, args = (("set_session_data", {"session_id": sid, "key": "k"})
                      if kind == "set" else ("echo", {"x": 1}))
        async with _client(server()) as client:
            times = await _calls(client, tool, args, n + warmup)
        rows[label] = _pct(times[warmup:])
        print(f"  {label:44} round trip p50 {rows[label]['p50']:8.0f}µs  "
              f"p99 {rows[label]['p99']:8.0f}µs")
    for label, server in [("cli write -> resources/updated, HTTP", lambda: http(url, token)),
                          ("cli write -> resources/updated, stdio", lambda: bridge)]:
        times = await _notifications(server(), str(sock), sid, token, n + warmup)
        rows[label] = _pct(times)
        print(f"  {label:44} latency    p50 {rows[label]['p50']:8.0f}µs  "
              f"p99 {rows[label]['p99']:8.0f}µs")
    return {"quick": quick, "samples": n, "rows": rows, "cpus": os.cpu_count(),
            "load": os.getloadavg()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")  # the SDK's deprecation of resources/subscribe
    base = Path(tempfile.mkdtemp(prefix="nx-mcp-bench-"))
    env = {**os.environ, "HOME": str(base), "XDG_CONFIG_HOME": str(base / "config"),
           "NEXUS_CREDENTIALS": str(base / "credentials.json")}
    echo_port = _free_port()
    with (base / "nexusd.log").open("wb") as log:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "nexusd", "serve", "--socket", str(base / "n.sock"),
             "--ws", "off", "--http", "127.0.0.1:0", "--data", str(base / "data"),
             "--durability", "memory"], stdout=subprocess.DEVNULL, stderr=log, env=env)
    echo_http = subprocess.Popen([sys.executable, "-m", "bench._mcp_echo", "http",
                                  str(echo_port)], cwd=ROOT, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
    try:
        result = trio.run(run, args.quick, base, env, echo_port)
    finally:
        echo_http.terminate()
        daemon.terminate()
        echo_http.wait(10)
        daemon.wait(15)
        shutil.rmtree(base, ignore_errors=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
