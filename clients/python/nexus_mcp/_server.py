"""The MCP server definition, over a `Binding` per MCP session.

`build_server(binding_of)` returns the SDK's low-level `Server`:

- tools: `TOOLS`, each one protocol request; a failure is a tool error
  (``isError``) whose text starts with the protocol's code and says what to
  do ("conflict: key 'x' is at version 4, not 3 — re-read and retry"), and
  whose structured content is ``{"error": {"code", "message"}}``;
- resources: ``nexus://sessions/{id}`` (the session's state) and
  ``nexus://sessions/{id}/data/{key}`` (one entry), both as templates, and
  listed for the sessions this MCP session holds a token of;
- ``resources/subscribe``: ``notifications/resources/updated`` whenever a
  change touches the resource (`Binding.subscribe`).

`binding_of(ctx)` gives the request's `Binding`: the transport decides how
an MCP session maps to one.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from typing import Any, Final

import attrs
import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.shared.exceptions import MCPError
from nexus_protocol import Created, Error, Get, Message, Progress, Report, Result, Run, RunStarted

from ._binding import Binding, WatchRefused, session_uri
from ._tools import TOOLS, Tool

__all__ = ["SERVER_NAME", "build_server", "tool_error"]

SERVER_NAME: Final = "nexusd"

_BY_NAME: Final = {tool.name: tool for tool in TOOLS}
_URI: Final = re.compile(r"nexus://sessions/(?P<sid>[^/]+)(?:/data/(?P<key>.+))?\Z")

#: What an agent can do about each error code.
_HINTS: Final = {
    "conflict": "re-read (get_session_data or sync_session) and retry with the current version",
    "unauthorized": "pass the session's token once as the `token` argument",
    "forbidden": "this token's scope does not allow it; use a token with a wider scope",
    "not_found": "check the session_id (and the key)",
    "expired": "the session has ended; create a new one",
    "bad_request": "fix the arguments and call again",
    "too_large": "send less data in one call",
    "busy": "retry a little later",
    "unavailable": "retry a little later",
}

BindingOf = Callable[[ServerRequestContext[Any, Any]], Binding]


def _default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode()
    raise TypeError(f"{type(value).__name__} is not JSON")


def dumps(document: Any) -> str:
    return json.dumps(document, ensure_ascii=False, default=_default)


def reply_document(reply: Message) -> dict[str, Any]:
    """The fields of a reply by their protocol names (a report: the report)."""
    if isinstance(reply, Report):
        return dict(reply.report)
    fields = attrs.asdict(reply, recurse=False)  # type: ignore[arg-type]
    fields.pop("id", None)
    fields.pop("token", None)  # a token stays with the binding, out of the model's view
    # Round-trip through JSON: bytes as base64, tuples as lists.
    return dict(json.loads(dumps(fields)))


def tool_error(code: str, message: str, retry_after: float | None = None) -> types.CallToolResult:
    """A tool error an agent can act on."""
    hint = _HINTS.get(code)
    if code in ("busy", "unavailable") and retry_after:
        hint = f"retry in {retry_after:g}s"
    text = f"{code}: {message}" + (f" — {hint}" if hint else "")
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text)], is_error=True,
        structured_content={"error": {"code": code, "message": message}})


def _check(tool: Tool, args: dict[str, Any]) -> str | None:
    """What is wrong with `args` for `tool`, if anything."""
    schema = tool.input_schema
    unknown = sorted(set(args) - set(schema["properties"]))
    if unknown:
        return f"unknown argument {unknown[0]!r} (expected: {', '.join(schema['properties'])})"
    missing = [name for name in schema["required"] if name not in args]
    if missing:
        return f"missing argument {missing[0]!r}"
    for name in ("session_id", "key", "token", "to_channel", "transition_id", "channel"):
        if name in args and not (isinstance(args[name], str) and args[name]):
            return f"{name} must be a non-empty string"
    return None


def build_server(binding_of: BindingOf, *, version: str = "") -> Server[Any]:
    """The MCP server; see the module's docstring."""

    async def list_tools(ctx: ServerRequestContext[Any, Any],
                         params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[
            types.Tool(name=t.name, description=t.description, input_schema=t.input_schema)
            for t in TOOLS])

    async def call_tool(ctx: ServerRequestContext[Any, Any],
                        params: types.CallToolRequestParams) -> types.CallToolResult:
        tool = _BY_NAME.get(params.name)
        if tool is None:
            return tool_error("bad_request", f"no tool {params.name!r}")
        args = dict(params.arguments or {})
        problem = _check(tool, args)
        if problem is not None:
            return tool_error("bad_request", problem)
        binding = binding_of(ctx)
        sid = args.get("session_id") if tool.session else None
        given = args.get("token")
        token = binding.token(sid, given) if sid is not None else None
        try:
            request = tool.request(args, token)
        except (TypeError, ValueError) as exc:
            return tool_error("bad_request", str(exc))
        if isinstance(request, Run):
            return await _run_workflow(ctx, binding, request, given)
        reply = await binding.call(request, session_id=sid, token=given)
        if isinstance(reply, Error):
            return tool_error(reply.code, reply.message, reply.retry_after)
        if isinstance(reply, Created):
            binding.tokens[reply.session_id] = reply.token
        document = reply_document(reply)
        return types.CallToolResult(content=[types.TextContent(type="text", text=dumps(document))],
                                    structured_content=document)

    async def list_resources(ctx: ServerRequestContext[Any, Any],
                             params: types.PaginatedRequestParams | None
                             ) -> types.ListResourcesResult:
        binding = binding_of(ctx)
        return types.ListResourcesResult(resources=[
            types.Resource(uri=session_uri(sid), name=f"session {sid}",
                           description="The session's data, context and seq",
                           mime_type="application/json")
            for sid in sorted(binding.tokens)])

    async def list_templates(ctx: ServerRequestContext[Any, Any],
                             params: types.PaginatedRequestParams | None
                             ) -> types.ListResourceTemplatesResult:
        return types.ListResourceTemplatesResult(resource_templates=[
            types.ResourceTemplate(uri_template="nexus://sessions/{session_id}",
                                   name="session", mime_type="application/json",
                                   description="A session's state: data, context, seq"),
            types.ResourceTemplate(uri_template="nexus://sessions/{session_id}/data/{key}",
                                   name="session data", mime_type="application/json",
                                   description="One entry: value, version, writer channel"),
        ])

    async def read_resource(ctx: ServerRequestContext[Any, Any],
                            params: types.ReadResourceRequestParams
                            ) -> types.ReadResourceResult:
        sid, key = _parse(params.uri)
        binding = binding_of(ctx)
        reply = await binding.call(Get(id=0, session_id=sid, key=key, token=binding.token(sid)))
        if isinstance(reply, Error):
            raise _mcp_error(reply.code, reply.message)
        return types.ReadResourceResult(contents=[types.TextResourceContents(
            uri=params.uri, mime_type="application/json", text=dumps(reply_document(reply)))])

    async def subscribe(ctx: ServerRequestContext[Any, Any],
                        params: types.SubscribeRequestParams) -> types.EmptyResult:
        sid, _ = _parse(params.uri)
        session = ctx.session
        try:
            await binding_of(ctx).subscribe(sid, params.uri, session.send_resource_updated)
        except WatchRefused as exc:
            raise _mcp_error(exc.code, exc.message) from None
        return types.EmptyResult()

    async def unsubscribe(ctx: ServerRequestContext[Any, Any],
                          params: types.UnsubscribeRequestParams) -> types.EmptyResult:
        binding_of(ctx).unsubscribe(params.uri)
        return types.EmptyResult()

    return Server(SERVER_NAME, version=version,
                  instructions="Sessions of nexusd: read, write and follow a session that "
                               "other channels (API, CLI, web) share. Tools take session_id; "
                               "the token is needed once per MCP session, if at all.",
                  on_list_tools=list_tools, on_call_tool=call_tool,
                  on_list_resources=list_resources,
                  on_list_resource_templates=list_templates, on_read_resource=read_resource,
                  on_subscribe_resource=subscribe, on_unsubscribe_resource=unsubscribe)


async def _run_workflow(ctx: ServerRequestContext[Any, Any], binding: Binding, request: Run,
                        given: str | None) -> types.CallToolResult:
    """Runs the workflow; each `progress` becomes an MCP progress notification
    (when the caller asked for them with a progress token)."""
    progress_token = (ctx.meta or {}).get("progress_token")
    async with binding.backend.run(request) as events:
        async for event in events:
            if isinstance(event, Error):
                return tool_error(event.code, event.message, event.retry_after)
            if isinstance(event, RunStarted):
                if given:
                    binding.tokens[request.session_id] = given
            elif isinstance(event, Progress):
                if progress_token is not None:
                    await ctx.session.send_progress_notification(
                        progress_token, event.progress, 1.0, event.step,
                        related_request_id=ctx.request_id)  # type: ignore[arg-type]
            elif isinstance(event, Result):
                document = reply_document(event)
                document.pop("session_id", None)
                return types.CallToolResult(
                    content=[types.TextContent(type="text", text=dumps(document))],
                    structured_content=document, is_error=event.status != "completed")
    return tool_error("unavailable", "the run's events stopped before its result")


def _parse(uri: str) -> tuple[str, str | None]:
    match = _URI.match(str(uri))
    if match is None:
        raise _mcp_error("bad_request", f"{uri!r} is not nexus://sessions/ID[/data/KEY]")
    return match["sid"], match["key"]


def _mcp_error(code: str, message: str) -> Exception:
    number = types.INVALID_PARAMS if code in ("bad_request", "not_found") else types.INTERNAL_ERROR
    return MCPError(number, f"{code}: {message}")

