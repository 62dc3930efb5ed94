"""Forwarding: a request for a session another daemon owns is served there.

Both ends live in every daemon. The *forwarding* end (the daemon the client
reached) sends each request, with what the owner needs to know of its
principal, to the owner over the link and remembers where its reply goes
(`_Forwarded`, by a forward id). The *owning* end serves it through its
session service as the request of a principal of its own (one per client of
the other daemon, `_remote`), whose sink (`_RemoteSink`) sends the reply, and
for a subscription every event after it, back over the link.

The owner serves one client's requests in the order they were sent (one
queue per remote client), as a connection's own requests are. A daemon that
no longer has the session answers `MOVED` instead of forwarding the request
on, and its sender sends it to the owner itself: a request is never relayed
twice, so a late copy of one its sender gave up on is never served.

Failures end cleanly, never silently:
- the owner's lease lapses (it died) or the link to it fails: a request that
  never reached it is served again here (which waits for the dead owner's
  lease to lapse, then takes the session over); each request it may have
  received is answered `unavailable` (it may or may not have been applied);
  each subscription through it is told `lagged` with the last `seq` it
  received, from which the client resumes on whichever daemon then owns the
  session;
- a change missing between two others (a message the link lost) makes its
  subscriber `lagged` too, as does an event Redis failed to take;
- a forwarding daemon goes away (or is found gone: it may only have been
  paused): the owner tells its clients' subscriptions `lagged` and
  disconnects them;
- a subscriber that cannot keep up here is told `lagged` here, and the owner
  stops sending it events.
"""

from __future__ import annotations

import itertools
import logging
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Final, Literal

import attrs
import msgpack
import trio
from nexus_protocol import (
    Attach,
    Attached,
    Detach,
    Error,
    ErrorCode,
    Lagged,
    Limits,
    Message,
    RemoteProtocolError,
    SessionRequest,
    decode_body,
    encode_body,
)

from .._limits import Peer
from .._principal import Principal, ReplySink
from ..session._commands import ReadRuns, RecordRun
from ..session._mailbox import Envelope
from ._link import Link

__all__ = ["Forwarder", "Service"]

log = logging.getLogger("nexusd.cluster")

# Frame kinds. A frame is a list: its kind, then its fields.
#: forwarding -> owner: [REQ, fid, connection id, principal, request body,
#: internal: the tag of a request of the daemon's own (see `_INTERNAL`), whose
#: body is its fields, or False for a wire message]
REQ: Final = 0
#: owner -> forwarding: [REP, fid, reply body, scope the principal holds or None]
REP: Final = 1
#: owner -> forwarding: [EVT, fid, event body, live (else part of the reply)]
EVT: Final = 2
#: forwarding -> owner: [BYE, connection id]: the client is gone
BYE: Final = 3
#: forwarding -> owner: [DROP, fid]: send that subscription nothing more
DROP: Final = 4
#: owner -> forwarding: [MOVED, fid, owner]: not this daemon's session (any
#: more): the request was not served; send it to `owner`
MOVED: Final = 5

#: How long a daemon found gone is remembered as gone (its lease lapses sooner).
_DEAD_FOR: Final = 60.0


#: The daemon's own session requests, which no client sends (the workflows
#: engine journals and reads runs with them): not wire messages, so the link
#: carries their fields as they are.
_INTERNAL: Final = {cls.TAG: cls for cls in (RecordRun, ReadRuns)}


def _decode_internal(tag: str, body: bytes) -> Message:
    """The internal request `tag` from its fields (see `_INTERNAL`).

    Raises:
        RemoteProtocolError: no such internal request, or not its fields.
    """
    cls = _INTERNAL.get(tag)
    try:
        if cls is None:
            raise TypeError(tag)
        return cls(**msgpack.unpackb(body, raw=False))
    except TypeError:
        raise RemoteProtocolError(f"not an internal request: {tag!r}") from None


def _change_seq(body: bytes) -> int | None:
    """The seq of an encoded `change` event; None for any other event."""
    event = msgpack.unpackb(body)
    seq = event.get("seq") if event.get("t") == "change" else None
    return seq if isinstance(seq, int) else None


class Service:
    """What forwarding needs of the session service (typing only)."""

    async def submit(self, principal: Principal, request: Message, sink: ReplySink) -> None:
        raise NotImplementedError

    async def disconnect(self, principal: Principal) -> None:
        raise NotImplementedError


@attrs.define(eq=False)
class _Forwarded:
    """A request sent to its session's owner, and where its answer goes."""

    sink: ReplySink
    principal: Principal
    owner: int
    request: SessionRequest
    attach: bool
    sent: float
    answered: bool = False
    seq: int = 0  # the last change its client was sent (at first: attached at)

    @property
    def session_id(self) -> str:
        return self.request.session_id


class _RemoteSink:
    """Where the owner's actor answers a forwarded request: over the link."""

    __slots__ = ("__weakref__", "_fwd", "answered", "dead", "fid", "key", "session_id", "to")

    def __init__(self, fwd: Forwarder, to: int, fid: int, key: tuple[int, str],
                 session_id: str) -> None:
        self._fwd = fwd
        self.to = to
        self.fid = fid
        self.key = key
        self.session_id = session_id
        self.answered = False
        self.dead = False

    @property
    def closed(self) -> bool:
        """Its client is gone (or asked for nothing more): a watcher with this
        sink no longer keeps the session in memory."""
        return self.dead

    def reply(self, message: Message) -> None:
        fwd = self._fwd
        remote = fwd._remote.get(self.key)
        scope = remote.grants.get(self.session_id) if remote is not None else None
        fwd._link.send(self.to, [REP, self.fid, encode_body(message), scope])
        if not self.answered:
            self.answered = True
            if type(message) is Attached:
                if remote is None:  # its client left while the attach was served
                    self.dead = True
                else:
                    fwd._sinks[(self.to, self.fid)] = self
            fwd._answered(self.key)

    def reply_event(self, body: bytes) -> None:
        self._fwd._link.send(self.to, [EVT, self.fid, body, False], len(body))

    def push_event(self, body: bytes) -> bool:
        fwd = self._fwd
        if self.dead or fwd._link.backlog(self.to) > fwd.queue_bytes:
            return False
        fwd._link.send(self.to, [EVT, self.fid, body, True], len(body))
        return True


class Forwarder:
    """Both ends of forwarding for one daemon; see the module's docstring.

    `timeout` bounds how long a forwarded request waits for its answer;
    `queue_bytes` how much may wait to be sent to one daemon before the
    subscriptions it serves count as lagging; `retry_after` is what a client
    is told to wait when the owner went away (about one lease);
    `on_moved(session_id, owner)` is told where a session was found to be
    when a daemon that no longer has it sent a request back.
    """

    def __init__(self, link: Link, *, limits: Limits, timeout: float, queue_bytes: int,
                 retry_after: float,
                 on_moved: Callable[[str, int], None] = lambda session_id, owner: None
                 ) -> None:
        self._on_moved = on_moved
        self._link = link
        self._limits = limits
        self.timeout = timeout
        self.queue_bytes = queue_bytes
        self.retry_after = retry_after
        self._service: Service | None = None
        self._nursery: trio.Nursery | None = None
        self._ids = itertools.count(1)
        # The forwarding end: forward id -> request; client -> its forward ids.
        self._out: dict[int, _Forwarded] = {}
        self._by_client: dict[str, set[int]] = {}
        # The owning end: (daemon, client) -> principal, and its queue of
        # requests with the number of them not answered yet.
        self._remote: dict[tuple[int, str], Principal] = {}
        self._queues: dict[tuple[int, str], deque[tuple[Message, _RemoteSink]]] = {}
        self._unanswered: dict[tuple[int, str], int] = {}
        # The subscriptions served for other daemons' clients, while their
        # actor holds them (a watcher ended there is forgotten here).
        self._sinks: weakref.WeakValueDictionary[tuple[int, int], _RemoteSink] = \
            weakref.WeakValueDictionary()
        # Daemons found gone (a message to them reached nobody) -> when.
        self._dead: dict[int, float] = {}
        self.forwarded = self.served = self.failed = self.rerouted = 0

    def peers(self) -> Iterable[int]:
        """The daemons this one deals with: whose leases to watch."""
        return {f.owner for f in self._out.values()} | {key[0] for key in self._remote}

    def statistics(self) -> dict[str, int]:
        return {"forwarded": self.forwarded, "served_for_others": self.served,
                "failed": self.failed, "rerouted": self.rerouted, "waiting": len(self._out),
                "remote_clients": len(self._remote), "remote_subscriptions": len(self._sinks)}

    async def run(self, service: Service, *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serves forwarded requests through `service` until cancelled, and
        answers `unavailable` to forwarded requests that wait too long."""
        self._service = service
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            while True:
                await trio.sleep(min(1.0, self.timeout))
                now = trio.current_time()
                self._expire_waiting(now - self.timeout)
                for key in list(self._remote):
                    self._tidy(key)
                for epoch in [e for e, when in self._dead.items() if now - when > _DEAD_FOR]:
                    del self._dead[epoch]

    # ------------------------------------------------------ forwarding end

    def forward(self, owner: int, env: Envelope) -> None:
        """Sends `env`'s request to daemon `owner`; its reply (and, for an
        attach, its events) will reach `env.sink`."""
        request = env.request
        assert isinstance(request, SessionRequest)
        principal = env.principal
        fid = next(self._ids)
        sid = request.session_id
        if type(request) in (Attach, Detach):  # replaces (or ends) a subscription here
            self._unsubscribe(principal, sid)
        self._out[fid] = _Forwarded(env.sink, principal, owner, request,
                                    type(request) is Attach, trio.current_time())
        self._by_client.setdefault(principal.connection_id, set()).add(fid)
        peer = principal.peer
        about = [principal.channel, principal.client, principal.admin, peer.name,
                 peer.network, peer.loopback, principal.may_create, principal.grants.get(sid)]
        internal = request.TAG if request.TAG in _INTERNAL else False
        body = (msgpack.packb(attrs.asdict(request, recurse=False), use_bin_type=True)
                if internal else encode_body(request))
        self._link.send(owner, [REQ, fid, principal.connection_id, about, body, internal],
                        len(body))
        self.forwarded += 1

    @staticmethod
    def forwarded_here(env: Envelope) -> bool:
        """Whether `env` is a request another daemon forwarded to this one."""
        return type(env.sink) is _RemoteSink

    def moved(self, env: Envelope, owner: int) -> None:
        """Tells the daemon that forwarded `env` here that daemon `owner` has
        its session: it sends the request there itself (a forwarded request
        is never forwarded on: it could arrive late, after its sender gave
        up on it and the client asked again, and be served twice)."""
        sink = env.sink
        assert type(sink) is _RemoteSink
        self._link.send(sink.to, [MOVED, sink.fid, owner])
        sink.answered = True
        self._answered(sink.key)

    def _moved(self, fid: int, owner: int) -> None:
        f = self._drop(fid)
        if f is None:
            return  # answered meanwhile (its daemon found gone): not served
        self._on_moved(f.session_id, owner)
        self._reroute_forwarded(f)

    def disconnect(self, principal: Principal) -> None:
        """The client is gone: its owners are told, its subscriptions end."""
        fids = self._by_client.pop(principal.connection_id, None)
        if not fids:
            return
        owners = set()
        for fid in fids:
            f = self._out.pop(fid, None)
            if f is not None:
                owners.add(f.owner)
        for owner in owners:
            self._link.send(owner, [BYE, principal.connection_id])

    def _drop(self, fid: int) -> _Forwarded | None:
        f = self._out.pop(fid, None)
        if f is not None:
            fids = self._by_client.get(f.principal.connection_id)
            if fids is not None:
                fids.discard(fid)
                if not fids:
                    del self._by_client[f.principal.connection_id]
            if f.attach and f.answered:
                f.principal.subscriptions.discard(f.session_id)
        return f

    def _unsubscribe(self, principal: Principal, session_id: str) -> None:
        """Forgets `principal`'s subscription to `session_id` through its owner."""
        for fid in list(self._by_client.get(principal.connection_id, ())):
            f = self._out[fid]
            if f.attach and f.answered and f.session_id == session_id:
                self._drop(fid)

    def _replied(self, fid: int, body: bytes, scope: str | None) -> None:
        f = self._out.get(fid)
        if f is None:
            return
        message = decode_body(body, self._limits)
        if scope is not None:
            f.principal.remember(f.session_id, scope)
        if not f.answered:
            f.answered = True
            if f.attach and type(message) is Attached:
                f.seq = message.seq
                # Watching, here as on the owner (an idle connection that
                # watches is not closed).
                f.principal.subscriptions.add(f.session_id)
            else:
                self._drop(fid)
        elif type(message) is Lagged:
            # The subscription ended on the owner: the client resumes from
            # what it was delivered here.
            self._drop(fid)
            message = Lagged(session_id=f.session_id, seq=f.seq)
        f.sink.reply(message)

    def _event(self, sender: int, fid: int, body: bytes, live: bool) -> None:
        f = self._out.get(fid)
        if f is None:
            if live:
                self._link.send(sender, [DROP, fid])
            return
        if not live:
            f.sink.reply_event(body)
            return
        seq = _change_seq(body)
        # A change missing before this one (a message between the daemons
        # was lost) is lagging too: the client resumes from the last it got.
        in_order = seq is None or seq == f.seq + 1
        push = getattr(f.sink, "push_event", None)
        if in_order and push is not None and push(body):
            if seq is not None:
                f.seq = seq
            return
        # Lagging here: the client resumes from the last change it was sent.
        self._drop(fid)
        self._link.send(sender, [DROP, fid])
        f.sink.reply(Lagged(session_id=f.session_id, seq=f.seq))


    def gone(self, epoch: int) -> bool:
        """Whether daemon `epoch` was found gone lately (its lease may not
        have lapsed yet)."""
        return epoch in self._dead

    def owner_gone(self, owner: int, undelivered: list[list[Any]] | None = None) -> None:
        """Daemon `owner` is gone: what waits for it ends (see the module);
        the requests of `undelivered` (frames that reached nobody) are
        served again."""
        self._dead[owner] = trio.current_time()
        for frame in undelivered or ():
            if frame[0] == REQ:
                self._reroute(frame[1])
        for fid in [fid for fid, f in self._out.items() if f.owner == owner]:
            self._fail(fid, f"the daemon that had session {self._out[fid].session_id} "
                            "stopped; retry")
        for key in [key for key in self._remote if key[0] == owner]:
            self._bye(key, notify=True)

    def _reroute(self, fid: int) -> None:
        f = self._drop(fid)
        if f is not None:
            self._reroute_forwarded(f)

    def _reroute_forwarded(self, f: _Forwarded) -> None:
        """Serves again, here, a request that was never served elsewhere."""
        if self._nursery is None or self._service is None:
            return
        self.rerouted += 1
        self._nursery.start_soon(self._service.submit, f.principal, f.request, f.sink)

    def lost(self, to: int, frames: list[list[Any]]) -> None:
        """`frames` to daemon `to` may not have arrived: a request among them
        is answered `unavailable` (its outcome unknown), a subscription that
        may have missed an event there is told `lagged`."""
        for frame in frames:
            if frame[0] == REQ:
                self._fail(frame[1], "a message to the session's daemon was lost; retry")
            elif frame[0] == EVT and frame[3]:
                sink = self._sinks.pop((to, frame[1]), None)
                if sink is not None and not sink.dead:
                    sink.reply(Lagged(session_id=sink.session_id, seq=0))
                    sink.dead = True

    def reset(self) -> None:
        """This daemon's link was cut: anything may have been lost."""
        for fid in list(self._out):
            self._fail(fid, "the link to the session's daemon was cut; retry")

    def _fail(self, fid: int, message: str) -> None:
        f = self._drop(fid)
        if f is None:
            return
        self.failed += 1
        if f.attach and f.answered:
            f.sink.reply(Lagged(session_id=f.session_id, seq=f.seq))
        else:
            f.sink.reply(Error(id=f.request.id, code=ErrorCode.UNAVAILABLE.value,
                               message=message, retry_after=self.retry_after))

    def _expire_waiting(self, before: float) -> None:
        for fid in [fid for fid, f in self._out.items() if not f.answered and f.sent < before]:
            self._fail(fid, f"session {self._out[fid].session_id}: its daemon did not "
                            f"answer within {self.timeout:g} s; retry")

    # --------------------------------------------------------- owning end

    def alive(self, epoch: int) -> None:
        """Daemon `epoch` was heard from, or its lease found held."""
        self._dead.pop(epoch, None)

    def deliver(self, sender: int, frame: list[Any]) -> None:
        """A frame from daemon `sender` (the link's `deliver`)."""
        if self._dead:
            self._dead.pop(sender, None)
        kind = frame[0]
        if kind == EVT:
            self._event(sender, frame[1], frame[2], frame[3])
        elif kind == REP:
            self._replied(frame[1], frame[2], frame[3])
        elif kind == REQ:
            self._request(sender, frame[1], frame[2], frame[3], frame[4], frame[5])
        elif kind == BYE:
            self._bye((sender, frame[1]))
        elif kind == MOVED:
            self._moved(frame[1], frame[2])
        elif kind == DROP:
            sink = self._sinks.pop((sender, frame[1]), None)
            if sink is not None:
                sink.dead = True

    def _request(self, sender: int, fid: int, client: str, about: list[Any],
                 body: bytes, internal: str | Literal[False]) -> None:
        key = (sender, client)
        try:
            request = (_decode_internal(internal, body) if internal
                       else decode_body(body, self._limits))
        except RemoteProtocolError as exc:  # this daemon's limits are stricter
            self._link.send(sender, [REP, fid, encode_body(Error(
                id=exc.request_id, code=exc.code.value, message=exc.message)), None])
            return
        assert isinstance(request, SessionRequest)
        principal = self._remote.get(key)
        if principal is None:
            channel, name, admin, peer, network, loopback, may_create, _ = about
            principal = self._remote[key] = Principal(
                f"{client}@{sender}", channel, name, admin,
                peer=Peer(peer, network, loopback), may_create=may_create)
        scope = about[7]
        if scope is not None and request.session_id not in principal.grants:
            principal.remember(request.session_id, scope)
        self._unanswered[key] = self._unanswered.get(key, 0) + 1
        sink = _RemoteSink(self, sender, fid, key, request.session_id)
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()
            assert self._nursery is not None
            self._nursery.start_soon(self._serve, key, queue)
        queue.append((request, sink))

    async def _serve(self, key: tuple[int, str], queue: deque[tuple[Message, _RemoteSink]]
                     ) -> None:
        """Submits one remote client's requests in order, then ends."""
        assert self._service is not None
        try:
            while queue:
                request, sink = queue.popleft()
                principal = self._remote.get(key)
                if principal is None:  # the client left meanwhile
                    continue
                self.served += 1
                await self._service.submit(principal, request, sink)
        finally:
            del self._queues[key]
            self._tidy(key)

    def _answered(self, key: tuple[int, str]) -> None:
        left = self._unanswered.get(key, 1) - 1
        if left > 0:
            self._unanswered[key] = left
            return
        self._unanswered.pop(key, None)
        self._tidy(key)

    def _tidy(self, key: tuple[int, str]) -> None:
        """Forgets a remote client that has nothing left here (no request
        queued or unanswered, no subscription); what it proved went back
        with each reply."""
        principal = self._remote.get(key)
        if principal is not None and not principal.subscriptions \
                and key not in self._queues and key not in self._unanswered:
            del self._remote[key]

    def _bye(self, key: tuple[int, str], *, notify: bool = False) -> None:
        """Forgets a remote client; with `notify` (its daemon was found gone,
        perhaps wrongly), its subscriptions are told `lagged` on the way, so
        that a client still there resumes."""
        principal = self._remote.pop(key, None)
        self._unanswered.pop(key, None)
        for sink_key in [k for k, sink in self._sinks.items() if sink.key == key]:
            sink = self._sinks.pop(sink_key)
            if notify and not sink.dead:
                # The seq is the forwarding daemon's to fill in: it knows
                # what it delivered.
                sink.reply(Lagged(session_id=sink.session_id, seq=0))
            sink.dead = True
        if principal is not None and principal.subscriptions and self._nursery is not None \
                and self._service is not None:
            self._nursery.start_soon(self._service.disconnect, principal)
