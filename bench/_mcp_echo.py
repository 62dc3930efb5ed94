"""The SDK's minimal MCP server: one `echo` tool, nothing else.

    python -m bench._mcp_echo stdio
    python -m bench._mcp_echo http PORT

The floor of an MCP tool call on this SDK and transport, measured by
`bench/mcp_channel.py` beside nexusd's own tools.
"""

from __future__ import annotations

import sys
from typing import Any

import mcp_types as types
import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server


async def _list(ctx: ServerRequestContext[Any, Any],
                params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
    return types.ListToolsResult(tools=[types.Tool(
        name="echo", description="echo", input_schema={"type": "object"})])


async def _call(ctx: ServerRequestContext[Any, Any],
                params: types.CallToolRequestParams) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text="ok")],
                                structured_content=dict(params.arguments or {}))


SERVER: Server[Any] = Server("echo", on_list_tools=_list, on_call_tool=_call)


async def main(argv: list[str]) -> None:
    if argv[0] == "stdio":
        async with stdio_server() as (read, write):
            await SERVER.run(read, write, SERVER.create_initialization_options())
        return
    config = Config()
    config.bind = [f"127.0.0.1:{argv[1]}"]
    config.accesslog = None
    await serve(SERVER.streamable_http_app(), config)  # type: ignore[arg-type]


if __name__ == "__main__":
    trio.run(main, sys.argv[1:])
