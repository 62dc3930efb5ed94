"""The routes of the HTTP channel, each a protocol request and its reply.

`ROUTES` declares every route once: its method and path, the function that
serves it, and what the OpenAPI document says of it (`_openapi` builds the
document from this table). A route turns the request into one protocol
request, has the service serve it, and answers the reply as JSON with the
status the protocol's codes map to (`_mapping.STATUS`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final

import attrs
from nexus_protocol import (
    Create,
    Created,
    Delete,
    ErrorCode,
    Get,
    Invalidate,
    ListSessions,
    Message,
    Patch,
    Renew,
    Set,
    Stats,
    Summary,
    SwitchBegin,
    SwitchComplete,
    Sync,
    UpdateContext,
    Value,
    Written,
)
from starlette.responses import Response

from ._app import Exchange, json_response, parse_uint
from ._events import events
from ._inspector import inspector_file
from ._mapping import HttpError, build, parse_version, reply_json
from ._metrics import CONTENT_TYPE
from ._openapi import openapi
from ._workflows import execute, get_run, list_workflows

__all__ = ["ROUTES", "Endpoint"]

Handler = Callable[[Exchange], Awaitable[Response]]


@attrs.frozen
class Endpoint:
    """One route. `auth` is "none", "token" (a session token as Bearer) or
    "admin" (the admin key as Bearer); `body` names the JSON body's schema
    in the OpenAPI document, `reply` that of a success; `status` is the
    status of a success."""

    method: str
    path: str
    handler: Handler
    summary: str
    auth: str = "token"
    body: str | None = None
    reply: str | None = None
    status: int = 200
    errors: tuple[int, ...] = ()
    media: str = "application/json"

    @property
    def name(self) -> str:
        return self.handler.__name__.strip("_")

    @property
    def starlette_path(self) -> str:
        # A key may hold "/": the last path parameter takes the rest of the path.
        return self.path.replace("{key}", "{key:path}")


def _ok(reply: Message, status: int = 200, etag: int | None = None,
        precondition: bool = False, headers: dict[str, str] | None = None) -> Response:
    document = reply_json(reply, precondition=precondition)
    headers = dict(headers or {})
    if etag is not None:
        headers["ETag"] = f'"{etag}"'
    return json_response(document, status, headers)


def _expect(x: Exchange) -> int | None:
    """The version a write expects: `If-Match` ("3"), or 0 for
    `If-None-Match: *` (the key must not exist)."""
    headers = x.request.headers
    if_match, if_none = headers.get("if-match"), headers.get("if-none-match")
    if if_match is not None and if_none is not None:
        raise HttpError(ErrorCode.BAD_REQUEST, "If-Match and If-None-Match together")
    if if_none is not None:
        if if_none.strip() != "*":
            raise HttpError(ErrorCode.BAD_REQUEST, "If-None-Match takes only '*'")
        return 0
    return None if if_match is None else parse_version(if_match)


# ---------------------------------------------------------------- sessions


async def _create(x: Exchange) -> Response:
    body = await x.json(optional=True)
    request = build(Create, x.limits, body,
                    ("channel", "ttl", "idle_timeout", "user_id", "metadata"))
    reply = await x.call(request, body.get("channel"))
    headers = {"Location": f"/sessions/{reply.session_id}"} if type(reply) is Created else {}
    return _ok(reply, 201, headers=headers)


async def _get_session(x: Exchange) -> Response:
    channel = x.principal().channel
    return _ok(await x.call(build(Sync, x.limits, session_id=x.path["session_id"],
                                  channel=channel, token=x.token)))


async def _invalidate(x: Exchange) -> Response:
    reply = await x.call(build(Invalidate, x.limits, session_id=x.path["session_id"],
                               reason=x.query.get("reason"), token=x.token))
    reply_json(reply)
    return Response(status_code=204)


async def _renew(x: Exchange) -> Response:
    body = await x.json(optional=True)
    return _ok(await x.call(build(Renew, x.limits, body, ("ttl",),
                                  session_id=x.path["session_id"], token=x.token)))


async def _summary(x: Exchange) -> Response:
    return _ok(await x.call(build(Summary, x.limits, session_id=x.path["session_id"],
                                  token=x.token)))


async def _context(x: Exchange) -> Response:
    body = await x.json()
    request = build(UpdateContext, x.limits, body,
                    ("channel", "preferences", "history", "metrics"),
                    session_id=x.path["session_id"], token=x.token)
    return _ok(await x.call(request, body.get("channel")))


async def _switch(x: Exchange) -> Response:
    body = await x.json()
    if not isinstance(body, dict):
        raise HttpError(ErrorCode.BAD_REQUEST, "the JSON body must be an object")
    sid = x.path["session_id"]
    request: Message
    if "transition_id" in body:
        request = build(SwitchComplete, x.limits, body, ("transition_id", "success"),
                        session_id=sid, token=x.token)
    else:
        request = build(SwitchBegin, x.limits, body,
                        ("to_channel", "from_channel", "reason", "context"),
                        session_id=sid, token=x.token)
    return _ok(await x.call(request))


# -------------------------------------------------------------------- data


async def _get_key(x: Exchange) -> Response:
    key = x.path["key"]
    reply = await x.call(build(Get, x.limits, session_id=x.path["session_id"], key=key,
                               token=x.token))
    if type(reply) is Value and reply.updated_at is None:
        raise HttpError(ErrorCode.NOT_FOUND, f"no key {key!r} in the session")
    return _ok(reply, etag=reply.version if type(reply) is Value else None)


async def _put_key(x: Exchange) -> Response:
    expect = _expect(x)
    value = await x.json()
    reply = await x.call(build(Set, x.limits, session_id=x.path["session_id"],
                               key=x.path["key"], value=value, expect=expect, token=x.token))
    return _ok(reply, etag=reply.version if type(reply) is Written else None,
               precondition=expect is not None)


async def _delete_key(x: Exchange) -> Response:
    expect = _expect(x)
    reply = await x.call(build(Delete, x.limits, session_id=x.path["session_id"],
                               key=x.path["key"], expect=expect, token=x.token))
    return _ok(reply, precondition=expect is not None)


async def _patch(x: Exchange) -> Response:
    body = await x.json()
    return _ok(await x.call(build(Patch, x.limits, body, ("set", "delete", "expect"),
                                  session_id=x.path["session_id"], token=x.token)))


# ------------------------------------------------------------------- admin


def _need_admin(x: Exchange) -> None:
    if not x.credential_given:
        raise HttpError(ErrorCode.UNAUTHORIZED, "this route needs the admin key as Bearer")


async def _list_sessions(x: Exchange) -> Response:
    _need_admin(x)
    return _ok(await x.call(build(ListSessions, x.limits,
                                  limit=parse_uint(x.query.get("limit"), "limit"),
                                  after=x.query.get("after"))))


async def _status(x: Exchange) -> Response:
    _need_admin(x)
    return _ok(await x.call(Stats(id=0)))


# ------------------------------------------------------------- the daemon


async def _openapi(x: Exchange) -> Response:
    return json_response(openapi(ROUTES, x.parts.settings.server_name))


async def _metrics(x: Exchange) -> Response:
    return Response(x.parts.metrics.render(await x.parts.figures()),
                    media_type=CONTENT_TYPE)


_TOKEN_ERRORS: Final = (401, 403, 404, 410, 429, 503)

ROUTES: Final[tuple[Endpoint, ...]] = (
    Endpoint("POST", "/sessions", _create, "Create a session; its token is shown this once",
             auth="none", body="CreateBody", reply="Created", status=201,
             errors=(400, 413, 503)),
    Endpoint("GET", "/sessions", _list_sessions, "List sessions, a page at a time",
             auth="admin", reply="Sessions", errors=(400, 401, 403)),
    Endpoint("GET", "/sessions/{session_id}", _get_session,
             "The session as a channel sees it (?channel=), recording that channel's read",
             reply="State", errors=_TOKEN_ERRORS),
    Endpoint("DELETE", "/sessions/{session_id}", _invalidate,
             "Invalidate the session: it ends now, its data unrecoverable (admin scope)",
             status=204, errors=_TOKEN_ERRORS),
    Endpoint("POST", "/sessions/{session_id}/renew", _renew,
             "Extend the session's lifetime to now + ttl (default: its ttl)",
             body="RenewBody", reply="Renewed", errors=(400, *_TOKEN_ERRORS)),
    Endpoint("GET", "/sessions/{session_id}/data/{key}", _get_key,
             "One entry, with its version as the ETag", reply="Entry",
             errors=_TOKEN_ERRORS),
    Endpoint("PUT", "/sessions/{session_id}/data/{key}", _put_key,
             "Write one entry (the body is its JSON value); If-Match: \"version\" or "
             "If-None-Match: * for compare-and-set", body="Value", reply="Written",
             errors=(400, 412, 413, *_TOKEN_ERRORS)),
    Endpoint("DELETE", "/sessions/{session_id}/data/{key}", _delete_key,
             "Delete one entry; If-Match: \"version\" for compare-and-set", reply="Written",
             errors=(412, *_TOKEN_ERRORS)),
    Endpoint("PATCH", "/sessions/{session_id}/data", _patch,
             "Set and delete several entries atomically, with expected versions",
             body="PatchBody", reply="Written", errors=(400, 409, 413, *_TOKEN_ERRORS)),
    Endpoint("POST", "/sessions/{session_id}/context", _context,
             "Replace the parts of the session's context that are given",
             body="ContextBody", reply="Written", errors=(400, 413, *_TOKEN_ERRORS)),
    Endpoint("POST", "/sessions/{session_id}/switch", _switch,
             "Begin a channel switch (to_channel), or complete one (transition_id)",
             body="SwitchBody", reply="Switched", errors=(400, 409, *_TOKEN_ERRORS)),
    Endpoint("GET", "/sessions/{session_id}/summary", _summary,
             "Analytics of the session: duration, events, channels", reply="Report",
             errors=_TOKEN_ERRORS),
    Endpoint("GET", "/sessions/{session_id}/events", events,
             "Server-Sent Events: the changes after Last-Event-ID (or ?since=), then live",
             reply="EventStream", media="text/event-stream", errors=(400, *_TOKEN_ERRORS)),
    Endpoint("GET", "/status", _status, "The daemon's health and figures", auth="admin",
             reply="Report", errors=(401, 403)),
    Endpoint("GET", "/sessions/{session_id}/runs/{run_id}", get_run,
             "A workflow run of the session: its state, progress, attempts and outcome "
             "(write scope)", reply="RunOutcome", errors=_TOKEN_ERRORS),
    Endpoint("POST", "/workflows/{name}/execute", execute,
             "Run a workflow in the body's session (write scope) and wait for its outcome "
             "(completed, failed or cancelled); ?wait=false or Prefer: respond-async "
             "answers 202 at once with the run's Location",
             body="ExecuteBody", reply="RunOutcome",
             errors=(202, 400, 401, 403, 404, 410, 413, 429, 503)),
    Endpoint("GET", "/workflows", list_workflows,
             "The workflows live workers serve now, with those workers", auth="none",
             reply="Workflows"),
    Endpoint("GET", "/openapi.json", _openapi, "This document", auth="none"),
    Endpoint("GET", "/", inspector_file("index.html", "text/html"),
             "The inspector: sessions live in a browser (README \"The inspector\")",
             auth="none", media="text/html"),
    Endpoint("GET", "/inspector.js", inspector_file("inspector.js", "text/javascript"),
             "The inspector's script", auth="none", media="text/javascript"),
    Endpoint("GET", "/inspector.css", inspector_file("inspector.css", "text/css"),
             "The inspector's style sheet", auth="none", media="text/css"),
    Endpoint("GET", "/metrics", _metrics, "Metrics in the Prometheus text format",
             auth="none", media=CONTENT_TYPE),
)
