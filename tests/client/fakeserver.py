"""A small in-memory nexus daemon for testing the client without `nexusd`.

It speaks the protocol through `nexus_protocol.Connection` (server side) on a
Unix socket (or WebSocket), keeps sessions in dicts, and has knobs tests use
to misbehave on purpose: drop connections, refuse handshakes, inject error
replies, hold replies back, shut down, expire sessions, forget history.

It follows the daemon's described semantics closely enough for client tests;
it is not a reference implementation (no durability, no hibernation).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import attrs
import trio
import trio_websocket
from nexus_protocol import (
    NEED_DATA,
    Analytics,
    Attach,
    Attached,
    Change,
    Connection,
    ConnectionClosed,
    Create,
    Created,
    Delete,
    Detach,
    Error,
    Expired,
    Framing,
    Get,
    Grant,
    Granted,
    Hello,
    Invalidate,
    Invalidated,
    Lagged,
    ListSessions,
    MergeContext,
    Message,
    Ok,
    Patch,
    Ping,
    Pong,
    Presence,
    RemoteProtocolError,
    Renew,
    Renewed,
    Report,
    Run,
    Sessions,
    Set,
    Shutdown,
    Side,
    Snapshot,
    StateReply,
    Stats,
    Summary,
    SwitchBegin,
    SwitchComplete,
    Switched,
    Sync,
    UpdateContext,
    Value,
    Welcome,
    Written,
)

SCOPES = {"read": 1, "write": 2, "admin": 3}


class Fail(Exception):
    def __init__(self, code: str, message: str = "", retry_after: float | None = None):
        super().__init__(message)
        self.code, self.message, self.retry_after = code, message, retry_after


@attrs.define(eq=False)
class FakeSession:
    session_id: str
    tokens: dict[str, str]  # token -> scope
    channel: str
    created_at: float
    expires_at: float
    ttl: float
    idle_timeout: float | None
    user_id: str | None = None
    seq: int = 0
    entries: dict[str, dict[str, Any]] = attrs.Factory(dict)
    tombstones: dict[str, int] = attrs.Factory(dict)
    context: dict[str, Any] = attrs.Factory(dict)
    history: deque[Change] = attrs.Factory(deque)
    subscribers: dict[str, ServerConn] = attrs.Factory(dict)

    def version_of(self, key: str) -> int:
        e = self.entries.get(key)
        return e["version"] if e else self.tombstones.get(key, 0)


@attrs.define(eq=False)
class ServerConn:
    server: FakeServer
    conn: Connection
    send_frame: Callable[[bytes], Any]
    connection_id: str
    scope: trio.CancelScope = attrs.Factory(trio.CancelScope)
    lock: trio.Lock = attrs.Factory(trio.Lock)
    hello: Hello | None = None
    admin: bool = False
    grants: dict[str, str] = attrs.Factory(dict)
    subscriptions: set[str] = attrs.Factory(set)
    draining: bool = False

    async def send(self, message: Message) -> None:
        async with self.lock:
            if self.conn.state.value == "closed" and not isinstance(message, Error):
                return
            data = self.conn.send(message)
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self.send_frame(data)


class FakeServer:
    """The fake daemon. Run `serve` in a nursery (or `run_in_thread`)."""

    def __init__(self, *, retention: int = 1000, server_name: str = "fake-nexusd/1.0",
                 admin_key: str | None = "sekrit", unix_admin: bool = True,
                 default_ttl: float = 3600.0) -> None:
        self.retention = retention
        #: changes before `since` that a resume re-sends anyway.
        self.overlap = 0
        self.server_name = server_name
        self.admin_key = admin_key
        self.unix_admin = unix_admin
        self.default_ttl = default_ttl
        self.sessions: dict[str, FakeSession] = {}
        self.ended: dict[str, str] = {}  # session id -> "expired" / "invalidated"
        self.connections: dict[str, ServerConn] = {}
        #: (trio time, request) for every request received, in order.
        self.requests: list[tuple[float, Message]] = []
        #: (trio time, hello) for every handshake attempt.
        self.hellos: list[tuple[float, Hello]] = []
        #: request tag -> queued Fail replies, used first-in first-out.
        self.faults: dict[str, list[Fail]] = {}
        #: queued handshake refusals.
        self.refusals: list[Fail] = []
        #: request tags that are never answered (tests drop the connection).
        self.hold: set[str] = set()
        self.held: list[tuple[ServerConn, Message]] = []
        self.stats_report: dict[str, Any] = {
            "version": "1.0", "uptime_seconds": 3725, "sessions": {"active": 1, "total": 3},
            "connections": 2}
        self._ids = 0
        self._changed: trio.Event | None = None
        self._nursery: trio.Nursery | None = None
        self._listen_scope: trio.CancelScope | None = None
        self.path: str | None = None
        self.ws_port: int | None = None

    # ------------------------------------------------------------ serving

    async def serve(self, path: str | None = None, *, websocket: bool = False,
                    task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        """Listens on the Unix socket `path` (and on WebSocket port 0 if asked)."""
        self._changed = trio.Event()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if path is not None:
                await self.listen(path)
            if websocket:
                server = await nursery.start(trio_websocket.serve_websocket, self._handle_ws,
                                             "127.0.0.1", 0, None)
                self.ws_port = server.port
            task_status.started(self)
            await trio.sleep_forever()

    async def listen(self, path: str) -> None:
        assert self._nursery is not None
        self.path = path
        # trio binds Unix sockets in a worker thread, during which an
        # autojump clock would race ahead; bind synchronously instead.
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        raw.bind(path)
        raw.listen(64)
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(raw))
        scope = self._listen_scope = trio.CancelScope()

        async def accept_loop() -> None:
            with scope:
                try:
                    async with listener:
                        while True:
                            stream = await listener.accept()
                            self._nursery.start_soon(self._handle_stream, stream)  # type: ignore[union-attr]
                finally:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)

        self._nursery.start_soon(accept_loop)
        await trio.lowlevel.checkpoint()

    def stop_listening(self) -> None:
        """New connections fail (the socket file goes away); existing ones stay."""
        if self._listen_scope is not None:
            self._listen_scope.cancel()
            self._listen_scope = None
        if self.path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    def drop_connections(self) -> None:
        """Closes every connection abruptly, as a crashed daemon would."""
        for sc in list(self.connections.values()):
            sc.scope.cancel()

    async def shutdown_connections(self, reason: str = "restart",
                                   retry_after: float | None = 0.5, *,
                                   close: bool = False) -> None:
        """Says `shutdown`; requests that arrive later, and held ones, are
        answered `unavailable` (they crossed the shutdown); `close` then
        closes the connections."""
        for sc in list(self.connections.values()):
            sc.draining = True
            await sc.send(Shutdown(reason=reason, retry_after=retry_after))
            for held_sc, req in list(self.held):
                if held_sc is sc:
                    self.held.remove((held_sc, req))
                    await sc.send(Error(id=req.id,  # type: ignore[attr-defined]
                                        code="unavailable", message="shutting down",
                                        retry_after=retry_after))
            if close:
                sc.scope.cancel()

    async def _handle_stream(self, stream: trio.SocketStream) -> None:
        async def receive() -> bytes:
            return bytes(await stream.receive_some(65536))

        try:
            await self._serve_conn(Framing.STREAM, receive, stream.send_all)
        finally:
            with trio.move_on_after(1, shield=True):
                await stream.aclose()

    async def _handle_ws(self, request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()

        async def receive() -> bytes:
            try:
                msg = await ws.get_message()
            except trio_websocket.ConnectionClosed:
                return b""
            return msg if isinstance(msg, bytes) else msg.encode()

        await self._serve_conn(Framing.MESSAGE, receive, ws.send_message)

    async def _serve_conn(self, framing: Framing, receive: Callable[[], Any],
                          send: Callable[[bytes], Any]) -> None:
        self._ids += 1
        sc = ServerConn(self, Connection(Side.SERVER, framing=framing), send,
                        f"c{self._ids}")
        try:
            with sc.scope:
                await self._read(sc, receive)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self.connections.pop(sc.connection_id, None)
            for sid in list(sc.subscriptions):
                s = self.sessions.get(sid)
                if s is not None:
                    s.subscribers.pop(sc.connection_id, None)
            self._notify()

    async def _read(self, sc: ServerConn, receive: Callable[[], Any]) -> None:
        conn = sc.conn
        while True:
            try:
                event = conn.next_event()
            except RemoteProtocolError as exc:
                if exc.fatal or exc.request_id is None:
                    with contextlib.suppress(Exception):
                        await sc.send(Error(code=exc.code.value, message=exc.message))
                    return
                await sc.send(Error(id=exc.request_id, code=exc.code.value,
                                    message=exc.message))
                continue
            if event is NEED_DATA:
                conn.receive_data(await receive())
                continue
            if isinstance(event, ConnectionClosed):
                return
            if isinstance(event, Hello):
                self.hellos.append((trio.current_time(), event))
                self._notify()
                if self.refusals:
                    fail = self.refusals.pop(0)
                    await sc.send(Error(code=fail.code, message=fail.message,
                                        retry_after=fail.retry_after))
                    return
                admin = self.unix_admin if conn.framing is Framing.STREAM else False
                if event.credential is not None:
                    if event.credential != self.admin_key:
                        await sc.send(Error(code="unauthorized", message="bad admin key"))
                        return
                    admin = True
                sc.hello, sc.admin = event, admin
                self.connections[sc.connection_id] = sc
                await sc.send(Welcome(version=1, server=self.server_name,
                                      connection_id=sc.connection_id, admin=admin,
                                      max_frame=conn.limits.max_frame))
                self._notify()
                continue
            self.requests.append((trio.current_time(), event))
            self._notify()
            await self._request(sc, event)

    # ------------------------------------------------------------ requests

    async def _request(self, sc: ServerConn, req: Message) -> None:
        rid: int = req.id  # type: ignore[attr-defined]
        if req.TAG in self.hold:
            self.held.append((sc, req))
            self._notify()
            return
        try:
            if sc.draining:
                raise Fail("unavailable", "the daemon is shutting down", 0.5)
            queued = self.faults.get(req.TAG)
            if queued:
                raise queued.pop(0)
            reply, after = self._serve(sc, req)
        except Fail as f:
            await sc.send(Error(id=rid, code=f.code, message=f.message,
                                retry_after=f.retry_after))
            return
        await sc.send(reply)
        for item in after:
            await item()

    def _session(self, sc: ServerConn, sid: str, token: str | None, needed: str) -> FakeSession:
        s = self.sessions.get(sid)
        if s is None:
            if sid in self.ended:
                raise Fail("expired", f"session {sid} has {self.ended[sid]}")
            raise Fail("not_found", f"no session {sid}")
        granted = sc.grants.get(sid)
        if token is not None:
            scope = s.tokens.get(token)
            if scope is None:
                raise Fail("unauthorized", f"the token is not valid for session {sid}")
            sc.grants[sid] = granted = scope
        if granted is None:
            raise Fail("unauthorized", f"session {sid} needs a token")
        if SCOPES[granted] < SCOPES[needed]:
            raise Fail("forbidden", f"this token's scope is {granted!r}")
        return s

    def _change(self, sc: ServerConn, s: FakeSession, op: str, key: str | None = None,
                value: Any = None, version: int | None = None) -> tuple[int, Callable[[], Any]]:
        s.seq += 1
        assert sc.hello is not None
        change = Change(session_id=s.session_id, seq=s.seq, op=op, ts=time.time(),
                        channel=sc.hello.channel, writer=sc.connection_id, key=key,
                        value=value, version=version)
        s.history.append(change)
        while len(s.history) > self.retention:
            s.history.popleft()
        return s.seq, lambda: self.broadcast(s, change)

    async def broadcast(self, s: FakeSession, event: Message) -> None:
        for sub in list(s.subscribers.values()):
            await sub.send(event)

    def _serve(self, sc: ServerConn, req: Message) -> tuple[Message, list[Callable[[], Any]]]:
        now = time.time()
        tok = getattr(req, "token", None)
        if isinstance(req, Ping):
            return Pong(id=req.id), []
        if isinstance(req, Create):
            assert sc.hello is not None
            sid = secrets.token_hex(8)
            token = "tok_" + secrets.token_hex(8)
            ttl = req.ttl or self.default_ttl
            channel = req.channel or sc.hello.channel
            s = FakeSession(sid, {token: "admin"}, channel, now, now + ttl, ttl,
                            req.idle_timeout, req.user_id,
                            context={"current_channel": channel, "preferences": {},
                                     "history": [], "metrics": {}})
            self.sessions[sid] = s
            sc.grants[sid] = "admin"
            return Created(id=req.id, session_id=sid, token=token, seq=0, expires_at=now + ttl,
                           idle_timeout=req.idle_timeout), []
        if isinstance(req, Stats | Analytics | ListSessions):
            if not sc.admin:
                raise Fail("forbidden", f"{req.TAG!r} needs the admin credential")
            if isinstance(req, Stats):
                return Report(id=req.id, report=self.stats_report), []
            if isinstance(req, Analytics):
                return Report(id=req.id, report={"channels": {"api": 1}}), []
            ids = sorted(i for i in self.sessions if req.after is None or i > req.after)
            limit = req.limit or 100
            page = ids[:limit]
            return Sessions(id=req.id, sessions=[
                {"session_id": i, "created_at": self.sessions[i].created_at,
                 "expires_at": self.sessions[i].expires_at, "active": True} for i in page],
                after=page[-1] if len(ids) > limit else None), []
        if isinstance(req, Run):
            raise Fail("unavailable", "workflow execution is not available in this daemon")
        if isinstance(req, Get):
            s = self._session(sc, req.session_id, tok, "read")
            if req.key is None:
                return self._state(req.id, s), []
            e = s.entries.get(req.key)
            if e is None:
                return Value(id=req.id, key=req.key, value=None,
                             version=s.version_of(req.key)), []
            return Value(id=req.id, key=req.key, **e), []
        if isinstance(req, Sync):
            s = self._session(sc, req.session_id, tok, "read")
            return self._state(req.id, s), []
        if isinstance(req, Set):
            s = self._session(sc, req.session_id, tok, "write")
            self._expect(s, req.key, req.expect)
            version = s.version_of(req.key) + 1
            assert sc.hello is not None
            s.entries[req.key] = {"value": req.value, "version": version, "updated_at": now,
                                  "channel": sc.hello.channel}
            seq, fan = self._change(sc, s, "set", req.key, req.value, version)
            return Written(id=req.id, seq=seq, version=version), [fan]
        if isinstance(req, Delete):
            s = self._session(sc, req.session_id, tok, "write")
            self._expect(s, req.key, req.expect)
            if req.key not in s.entries:
                raise Fail("not_found", f"no key {req.key!r} in the session")
            version = s.version_of(req.key) + 1
            del s.entries[req.key]
            s.tombstones[req.key] = version
            seq, fan = self._change(sc, s, "delete", req.key, None, version)
            return Written(id=req.id, seq=seq, version=version), [fan]
        if isinstance(req, Patch):
            s = self._session(sc, req.session_id, tok, "write")
            for k, v in (req.expect or {}).items():
                self._expect(s, k, v)
            versions = {}
            assert sc.hello is not None
            for k, v in req.set.items():
                versions[k] = s.version_of(k) + 1
                s.entries[k] = {"value": v, "version": versions[k], "updated_at": now,
                                "channel": sc.hello.channel}
            for k in req.delete:
                versions[k] = s.version_of(k) + 1
                s.entries.pop(k, None)
                s.tombstones[k] = versions[k]
            seq, fan = self._change(sc, s, "patch", None, {
                "set": req.set, "delete": req.delete, "versions": versions})
            return Written(id=req.id, seq=seq, versions=versions), [fan]
        if isinstance(req, UpdateContext):
            s = self._session(sc, req.session_id, tok, "write")
            assert sc.hello is not None
            ctx = dict(s.context, current_channel=req.channel or sc.hello.channel)
            for name in ("preferences", "history", "metrics"):
                if getattr(req, name) is not None:
                    ctx[name] = getattr(req, name)
            s.context = ctx
            seq, fan = self._change(sc, s, "context", None, ctx)
            return Written(id=req.id, seq=seq), [fan]
        if isinstance(req, MergeContext):
            s = self._session(sc, req.session_id, tok, "write")
            ctx = dict(s.context)
            for key, value in req.values.items():
                if value is None:
                    ctx.pop(key, None)
                else:
                    ctx[key] = value
            s.context = ctx
            seq, fan = self._change(sc, s, "context", None, ctx)
            return Written(id=req.id, seq=seq), [fan]
        if isinstance(req, SwitchBegin):
            s = self._session(sc, req.session_id, tok, "write")
            tid = secrets.token_hex(4)
            seq, fan = self._change(sc, s, "switch_begin", None, {
                "transition_id": tid, "from_channel": req.from_channel,
                "to_channel": req.to_channel, "reason": req.reason})
            return Switched(id=req.id, seq=seq, transition_id=tid), [fan]
        if isinstance(req, SwitchComplete):
            s = self._session(sc, req.session_id, tok, "write")
            seq, fan = self._change(sc, s, "switch_complete", None, {
                "transition_id": req.transition_id, "success": req.success})
            return Switched(id=req.id, seq=seq, transition_id=req.transition_id), [fan]
        if isinstance(req, Renew):
            s = self._session(sc, req.session_id, tok, "write")
            s.expires_at = now + (req.ttl or s.ttl)
            seq, fan = self._change(sc, s, "renew", None, {"expires_at": s.expires_at})
            return Renewed(id=req.id, seq=seq, expires_at=s.expires_at), [fan]
        if isinstance(req, Invalidate):
            s = self._session(sc, req.session_id, tok, "admin")
            return Ok(id=req.id), [lambda: self.end(s.session_id, "invalidated",
                                                    req.reason or "")]
        if isinstance(req, Summary):
            s = self._session(sc, req.session_id, tok, "read")
            return Report(id=req.id, report={"session_id": s.session_id, "seq": s.seq,
                                             "keys": len(s.entries)}), []
        if isinstance(req, Grant):
            s = self._session(sc, req.session_id, tok, "admin")
            token = "tok_" + secrets.token_hex(8)
            s.tokens[token] = req.scope
            return Granted(id=req.id, token=token, scope=req.scope), []
        if isinstance(req, Attach):
            s = self._session(sc, req.session_id, tok, req.scope)
            return self._attach(sc, s, req)
        if isinstance(req, Detach):
            s = self.sessions.get(req.session_id)
            if s is not None and s.subscribers.pop(sc.connection_id, None) is not None:
                sc.subscriptions.discard(s.session_id)
                return Ok(id=req.id), [lambda: self._presence(s, sc, "leave")]
            return Ok(id=req.id), []
        raise Fail("bad_request", f"unexpected {req.TAG!r}")

    def _expect(self, s: FakeSession, key: str, expect: int | None) -> None:
        if expect is not None and s.version_of(key) != expect:
            raise Fail("conflict", f"{key!r} is at version {s.version_of(key)}, not {expect}")

    def _state(self, rid: int, s: FakeSession) -> Message:
        return StateReply(id=rid, session_id=s.session_id, seq=s.seq,
                          entries={k: dict(e) for k, e in s.entries.items()},
                          context=dict(s.context), created_at=s.created_at,
                          expires_at=s.expires_at, idle_expires_at=None)

    def _attach(self, sc: ServerConn, s: FakeSession, req: Attach
                ) -> tuple[Message, list[Callable[[], Any]]]:
        since = req.since
        first = s.history[0].seq if s.history else s.seq + 1
        recovered = since is not None and since <= s.seq and (since == s.seq or first <= since + 1)
        old = s.subscribers.get(sc.connection_id)
        s.subscribers[sc.connection_id] = sc
        sc.subscriptions.add(s.session_id)
        presence = [{"connection_id": c.connection_id} for c in s.subscribers.values()]
        reply = Attached(id=req.id, session_id=s.session_id, seq=s.seq, recovered=recovered,
                         scope=req.scope, presence=presence)
        # `overlap` re-sends changes the client already has, to test that
        # it drops duplicates.
        start = (since or 0) - self.overlap
        missed = [c for c in s.history if c.seq > start] if recovered else []
        snapshot = Snapshot(session_id=s.session_id, seq=s.seq,
                            entries={k: dict(e) for k, e in s.entries.items()},
                            context=dict(s.context), recovered=since is None)

        async def replay() -> None:
            if recovered:
                for c in missed:
                    await sc.send(c)
            else:
                await sc.send(snapshot)
            if old is None:
                await self._presence(s, sc, "join")

        return reply, [replay]

    async def _presence(self, s: FakeSession, sc: ServerConn, action: str) -> None:
        assert sc.hello is not None
        await self.broadcast(s, Presence(session_id=s.session_id, action=action,
                                         connection_id=sc.connection_id,
                                         channel=sc.hello.channel, client=sc.hello.client))

    # --------------------------------------------------------- test knobs

    async def end(self, sid: str, how: str = "expired", reason: str = "ttl") -> None:
        """Ends a session: `how` is "expired" or "invalidated"."""
        s = self.sessions.pop(sid)
        self.ended[sid] = how
        event: Message = (Expired(session_id=sid, reason=reason) if how == "expired"
                          else Invalidated(session_id=sid, reason=reason))
        await self.broadcast(s, event)
        for sub in s.subscribers.values():
            sub.subscriptions.discard(sid)

    async def lag(self, sid: str) -> None:
        """Detaches every subscriber of `sid` with `lagged`, as if too slow."""
        s = self.sessions[sid]
        for cid, sub in list(s.subscribers.items()):
            del s.subscribers[cid]
            sub.subscriptions.discard(sid)
            await sub.send(Lagged(session_id=sid, seq=s.seq))

    async def write(self, sid: str, key: str, value: Any, channel: str = "api") -> int:
        """A change made by "someone else" (no connection): returns its seq."""
        s = self.sessions[sid]
        version = s.version_of(key) + 1
        now = time.time()
        s.entries[key] = {"value": value, "version": version, "updated_at": now,
                          "channel": channel}
        s.seq += 1
        change = Change(session_id=sid, seq=s.seq, op="set", ts=now, channel=channel,
                        writer="other", key=key, value=value, version=version)
        s.history.append(change)
        while len(s.history) > self.retention:
            s.history.popleft()
        await self.broadcast(s, change)
        return s.seq

    def forget_history(self, sid: str) -> None:
        """Drops the retained changes: resumes get a snapshot (recovered=False)."""
        self.sessions[sid].history.clear()

    def inject(self, tag: str, code: str, message: str = "", retry_after: float | None = None,
               times: int = 1) -> None:
        """The next `times` requests tagged `tag` are answered with this error."""
        self.faults.setdefault(tag, []).extend(
            Fail(code, message, retry_after) for _ in range(times))

    def refuse(self, code: str, message: str = "", retry_after: float | None = None,
               times: int = 1) -> None:
        """The next `times` handshakes are refused with this error."""
        self.refusals.extend(Fail(code, message, retry_after) for _ in range(times))

    def add_session(self, token: str = "tok_known", **entries: Any) -> str:
        """A session created "elsewhere", with `entries`; returns its id."""
        now = time.time()
        sid = secrets.token_hex(8)
        s = FakeSession(sid, {token: "admin"}, "api", now, now + self.default_ttl,
                        self.default_ttl, None,
                        context={"current_channel": "api", "preferences": {}, "history": [],
                                 "metrics": {}})
        for k, v in entries.items():
            s.entries[k] = {"value": v, "version": 1, "updated_at": now, "channel": "api"}
        s.seq = len(entries)
        self.sessions[sid] = s
        return sid

    def requests_of(self, tag: str) -> list[Message]:
        return [r for _, r in self.requests if tag == r.TAG]

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = trio.Event()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Waits (in the server's trio run) until `predicate()` holds."""
        while not predicate():
            assert self._changed is not None
            await self._changed.wait()


class ThreadedServer:
    """A `FakeServer` running in its own thread (its own trio run), for tests
    of blocking code: the facade and the CLI."""

    def __init__(self, path: str, *, websocket: bool = False, **kwargs: Any) -> None:
        self.server = FakeServer(**kwargs)
        self.path = path
        self.websocket = websocket
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)

    async def _main(self) -> None:
        self._stop = trio.Event()
        self._token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(self.server.serve, self.path,
                                        websocket=self.websocket))
            self._ready.set()
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.server.ws_port}/"

    def start(self) -> ThreadedServer:
        self._thread.start()
        assert self._ready.wait(10), "fake server did not start"
        return self

    def stop(self) -> None:
        if self._stop is not None:
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(10)

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Runs ``await fn(*args)`` in the server's thread."""
        return trio.from_thread.run(fn, *args, trio_token=self._token)

    def call_sync(self, fn: Callable[..., Any], *args: Any) -> Any:
        return trio.from_thread.run_sync(fn, *args, trio_token=self._token)

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        async def wait() -> None:
            with trio.fail_after(timeout):
                await self.server.wait_for(predicate)

        self.call(wait)

    @contextlib.contextmanager
    def running(self) -> Iterator[ThreadedServer]:
        self.start()
        try:
            yield self
        finally:
            self.stop()
