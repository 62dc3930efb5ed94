"""``nexus mcp``: the stdio bridge an MCP host launches.

It serves the MCP server of `nexus_mcp` over its stdin and stdout, with
this client's connection to the daemon (channel ``mcp``) as the backend:
the host (Claude Desktop, an IDE, the SDK's client) speaks MCP, the bridge
speaks the daemon's protocol over its Unix socket or WebSocket. Tokens come
from the user's side, never through the model: ``--session`` with
``--token``/``NEXUS_TOKEN`` or the credentials file, else every session of
the credentials file. It ends, exit code 0, when the host closes stdin.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio
from mcp.server.stdio import stdio_server
from nexus_mcp import Binding, WatchRefused, build_server
from nexus_protocol import Error, Message, Progress, Result, Run, RunStarted

from ._async_client import AsyncClient
from ._errors import NexusError
from ._exit_codes import ExitCode
from ._version import __version__

__all__ = ["ClientBackend", "serve_stdio"]


@attrs.define
class ClientBackend:
    """`nexus_mcp.Backend` over an `AsyncClient`."""

    client: AsyncClient

    async def call(self, request: Message) -> Message:
        session_id = getattr(request, "session_id", None)
        try:
            # The reply's type is the request's business: any reply is taken.
            return await self.client._request(
                lambda rid: attrs.evolve(request, id=rid),  # type: ignore[misc]
                Message, session_id=session_id)
        except NexusError as exc:
            return Error(id=0, code=exc.code, message=exc.message,
                         retry_after=exc.retry_after)

    @asynccontextmanager
    async def run(self, request: Run) -> AsyncIterator[AsyncIterator[Message]]:
        async with self.client.follow_runs(request.session_id) as events:
            yield _run_events(await self.call(request), events)

    @asynccontextmanager
    async def watch(self, session_id: str, token: str | None) -> AsyncIterator[
            AsyncIterator[Message]]:
        try:
            watch = self.client.watch(session_id, token=token, channel="mcp")
            await watch.__aenter__()
        except NexusError as exc:
            raise WatchRefused(exc.code, exc.message) from None
        try:
            yield _events(watch)
        finally:
            await watch.__aexit__(None, None, None)


async def _events(watch: Any) -> AsyncIterator[Message]:
    async for event in watch:
        yield event


async def _run_events(first: Message, events: trio.MemoryReceiveChannel[Progress | Result]
                      ) -> AsyncIterator[Message]:
    yield first
    if not isinstance(first, RunStarted):
        return
    async for event in events:
        if event.run_id == first.run_id:
            yield event
            if isinstance(event, Result):
                return


async def serve_stdio(client: AsyncClient, tokens: dict[str, str],
                      default_token: str | None = None) -> int:
    """Serves MCP on stdin/stdout until the host closes stdin; the exit code."""
    async with trio.open_nursery() as nursery:
        binding = Binding(ClientBackend(client), nursery, default_token=default_token,
                          tokens=tokens)
        server = build_server(lambda ctx: binding, version=__version__)
        async with stdio_server() as (read_stream, write_stream):
            await server.run(read_stream, write_stream, server.create_initialization_options())
        binding.close()
        nursery.cancel_scope.cancel()
    return int(ExitCode.OK)
