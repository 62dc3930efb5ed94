"""The OpenAPI 3.1 document of the HTTP channel (`GET /openapi.json`),
built from the route table, so that it lists exactly the routes served."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Final, Protocol

from .._version import __version__

__all__ = ["SCHEMAS", "openapi"]


class _Route(Protocol):
    """What the document needs of a route (`_routes.Endpoint`)."""

    @property
    def method(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def summary(self) -> str: ...
    @property
    def auth(self) -> str: ...
    @property
    def body(self) -> str | None: ...
    @property
    def reply(self) -> str | None: ...
    @property
    def status(self) -> int: ...
    @property
    def errors(self) -> tuple[int, ...]: ...
    @property
    def media(self) -> str: ...
    @property
    def name(self) -> str: ...


_ANY: Final[dict[str, Any]] = {}
_OBJECT: Final = {"type": "object"}
_NUMBER: Final = {"type": "number"}
_UINT: Final = {"type": "integer", "minimum": 0}
_STRING: Final = {"type": "string"}


def _obj(required: Iterable[str] = (), **properties: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties,
                              "additionalProperties": False}
    if required:
        schema["required"] = list(required)
    return schema


#: The JSON shapes the routes take and give (replies as the protocol names
#: their fields, without the request id).
SCHEMAS: Final[dict[str, dict[str, Any]]] = {
    "Error": _obj(["error"], error=_obj(["code", "message"], code={
        "type": "string", "enum": ["bad_request", "unauthorized", "forbidden", "not_found",
                                   "expired", "conflict", "busy", "too_large",
                                   "unsupported_version", "unavailable", "internal"]},
        message=_STRING)),
    "CreateBody": _obj(channel=_STRING, ttl=_NUMBER, idle_timeout=_NUMBER, user_id=_STRING,
                       metadata=_OBJECT),
    "Created": _obj(["session_id", "token"], session_id=_STRING, token=_STRING, seq=_UINT,
                    expires_at=_NUMBER, idle_timeout={"type": ["number", "null"]}),
    "State": _obj(["session_id", "seq", "entries", "context"], session_id=_STRING,
                  seq=_UINT, entries=_OBJECT, context=_OBJECT, created_at=_NUMBER,
                  expires_at=_NUMBER, idle_expires_at={"type": ["number", "null"]}),
    "RenewBody": _obj(ttl=_NUMBER),
    "Renewed": _obj(["seq", "expires_at"], seq=_UINT, expires_at=_NUMBER),
    "Entry": _obj(["key", "value", "version"], key=_STRING, value=_ANY, version=_UINT,
                  updated_at=_NUMBER, channel=_STRING),
    "Value": {"description": "any JSON value: the entry's new value"},
    "Written": _obj(["seq"], seq=_UINT, version={"type": ["integer", "null"]},
                    versions={"type": ["object", "null"]}),
    "PatchBody": _obj(set=_OBJECT, delete={"type": "array", "items": _STRING},
                      expect={"type": "object", "additionalProperties": _UINT}),
    "ContextBody": _obj(channel=_STRING, preferences=_OBJECT,
                        history={"type": "array"}, metrics=_OBJECT),
    "SwitchBody": {"oneOf": [
        _obj(["to_channel"], to_channel=_STRING, from_channel=_STRING, reason=_STRING,
             context=_OBJECT),
        _obj(["transition_id"], transition_id=_STRING, success={"type": "boolean"})]},
    "Switched": _obj(["seq", "transition_id"], seq=_UINT, transition_id=_STRING),
    "Report": _OBJECT,
    "ExecuteBody": _obj(["session_id"], session_id=_STRING, inputs=_OBJECT,
                        resume={"type": "boolean", "description":
                                "join the run of this workflow in flight, or start one "
                                "that continues from the step the session records"}),
    "RunOutcome": _obj(["run_id", "session_id", "workflow", "state", "progress"],
                       run_id=_STRING, session_id=_STRING, workflow=_STRING,
                       state={"type": "string",
                              "enum": ["running", "completed", "failed", "cancelled"]},
                       progress=_NUMBER, step=_UINT, total=_UINT, attempts=_UINT,
                       duration={"type": ["number", "null"]}, result=_ANY,
                       error={"type": ["string", "null"]}),
    "RunAccepted": _obj(["run_id", "session_id", "state"], run_id=_STRING,
                        session_id=_STRING, state={"const": "running"}, progress=_NUMBER,
                        seq=_UINT),
    "Workflows": _obj(["workflows"], workflows={"type": "array", "items": _obj(
        ["name", "workers"], name=_STRING, workers={"type": "array", "items": _obj(
            worker_id=_STRING, client=_STRING, capacity=_UINT, running=_UINT)})}),
    "Sessions": _obj(["sessions"], sessions={"type": "array", "items": _OBJECT},
                     after={"type": ["string", "null"]}),
    "EventStream": {"type": "string", "description":
                    "text/event-stream: events attached, change and snapshot (with the "
                    "seq as id), presence, and last lagged, expired, invalidated or "
                    "shutdown; comments as heartbeats"},
}

_STATUS_TEXT: Final = {
    200: "OK", 201: "Created", 202: "Accepted: follow the run at Location",
    204: "No content", 400: "Bad request or bad JSON",
    401: "No credential, or one that is not valid", 403: "Not allowed with this credential",
    404: "No such session, key or route", 409: "Conflict", 410: "Expired or invalidated",
    412: "The If-Match version does not match", 413: "Too large",
    429: "The session is busy: retry after Retry-After",
    503: "Unavailable (shutting down, not in this daemon, or no worker within run_wait)",
}

#: Statuses below 400 a route may answer besides its success, with their schema.
_OTHER_SUCCESS: Final = {202: "RunAccepted"}


def _parameters(route: _Route) -> list[dict[str, Any]]:
    params = [{"name": name, "in": "path", "required": True, "schema": _STRING}
              for name in re.findall(r"{(\w+)}", route.path)]
    if route.auth == "token" or route.name in ("list_sessions", "status"):
        params.append({"name": "channel", "in": "query", "required": False,
                       "schema": _STRING, "description": "the channel label (default api)"})
    if route.name == "list_sessions":
        params += [{"name": "limit", "in": "query", "schema": _UINT},
                   {"name": "after", "in": "query", "schema": _STRING}]
    if route.name == "events":
        params += [{"name": "Last-Event-ID", "in": "header", "schema": _UINT},
                   {"name": "since", "in": "query", "schema": _UINT}]
    if route.name == "execute":
        params += [{"name": "wait", "in": "query", "schema": {"type": "boolean"},
                    "description": "false: answer 202 at once (default true)"},
                   {"name": "Prefer", "in": "header", "schema": _STRING,
                    "description": "respond-async: as wait=false"}]
    if route.method in ("PUT", "DELETE") and "{key}" in route.path:
        params.append({"name": "If-Match", "in": "header", "schema": _STRING})
    return params


def _operation(route: _Route) -> dict[str, Any]:
    success: dict[str, Any] = {"description": _STATUS_TEXT.get(route.status, "OK")}
    if route.reply is not None:
        success["content"] = {route.media: {"schema": {"$ref":
                                                        f"#/components/schemas/{route.reply}"}}}
    elif route.status != 204:
        success["content"] = {route.media: {}}
    responses: dict[str, Any] = {str(route.status): success}
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for status in sorted(set(route.errors)):
        content = error if status >= 400 else {"application/json": {"schema": {
            "$ref": f"#/components/schemas/{_OTHER_SUCCESS[status]}"}}}
        responses[str(status)] = {"description": _STATUS_TEXT[status], "content": content}
    op: dict[str, Any] = {"operationId": route.name, "summary": route.summary,
                          "parameters": _parameters(route), "responses": responses}
    if route.auth == "none":
        op["security"] = []
    else:
        op["description"] = ("Authorization: Bearer " +
                             ("the admin key" if route.auth == "admin" else "a session token"))
    if route.body is not None:
        op["requestBody"] = {"required": route.body not in ("CreateBody", "RenewBody"),
                             "content": {"application/json": {"schema": {
                                 "$ref": f"#/components/schemas/{route.body}"}}}}
    return op


def openapi(routes: Iterable[_Route], server: str) -> dict[str, Any]:
    """The document: every route in `routes`, its parameters, bodies,
    replies and error statuses."""
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
    return {
        "openapi": "3.1.0",
        "info": {"title": "nexusd", "version": __version__,
                 "description": f"The HTTP channel of {server}: sessions shared by every "
                                "channel, over JSON; errors are "
                                '{"error": {"code", "message"}}.'},
        "paths": paths,
        "components": {"schemas": SCHEMAS, "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer",
                       "description": "a session token, or the admin key"}}},
        "security": [{"bearer": []}],
    }
