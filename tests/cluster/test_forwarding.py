"""Forwarding between two daemons, without Redis: each end is a `Forwarder`,
the link between them a queue this test delivers, and the owner's session
service a fake that answers as an actor would."""

from __future__ import annotations

import gc
from typing import Any

import nexus_protocol as p
import pytest
import trio
from nexus_protocol import Limits, Message, decode_body, encode_body

from nexusd._principal import Principal, ReplySink
from nexusd.cluster import Forwarder
from nexusd.session._commands import RecordRun
from nexusd.session._mailbox import Envelope

A, B = 1, 2  # A owns the session; B's clients reach it through B


class FakeLink:
    """Frames queued per destination, delivered when the test pumps."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.queued: list[tuple[int, list[Any]]] = []
        self.backlog_bytes = 0

    def send(self, to: int, frame: list[Any], size: int = 0) -> None:
        self.queued.append((to, frame))

    def backlog(self, to: int) -> int:
        return self.backlog_bytes


class Sink:
    """A client's sink on B: replies, reply events and live events; `room`
    bounds the live events it takes."""

    def __init__(self, room: int = 100) -> None:
        self.replies: list[Message] = []
        self.events: list[Message] = []
        self.room = room
        self.closed = False

    def reply(self, message: Message) -> None:
        self.replies.append(message)

    def reply_event(self, body: bytes) -> None:
        self.events.append(decode_body(body))

    def push_event(self, body: bytes) -> bool:
        if len(self.events) >= self.room:
            return False
        self.events.append(decode_body(body))
        return True


class OwnerService:
    """The owner's session service: records what it is asked, answers
    requests with `ok`, attaches with `attached` (keeping the sink, to push
    events through it later), and remembers the scope a token proves."""

    def __init__(self) -> None:
        self.served: list[tuple[str, Message]] = []
        self.sinks: dict[str, ReplySink] = {}
        self.disconnected: list[str] = []
        self.hold: trio.Event | None = None

    async def submit(self, principal: Principal, request: Message, sink: ReplySink) -> None:
        if self.hold is not None:
            await self.hold.wait()
        self.served.append((principal.connection_id, request))
        sid = request.session_id  # type: ignore[attr-defined]
        if getattr(request, "token", None) == "admin-token":
            principal.remember(sid, "admin")
        if type(request) is p.Attach:
            principal.subscriptions.add(sid)
            self.sinks[principal.connection_id] = sink
            sink.reply(p.Attached(id=request.id, session_id=sid, seq=3, recovered=True,
                                  scope="read"))
            return
        sink.reply(p.Ok(id=request.id))

    async def disconnect(self, principal: Principal) -> None:
        self.disconnected.append(principal.connection_id)


def change(seq: int) -> bytes:
    return encode_body(p.Change(session_id="s", seq=seq, op="set", ts=float(seq),
                                channel="cli", writer="w", key="k", value=seq, version=seq))


class Pair:
    """Daemon B forwarding to daemon A."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.links = {A: FakeLink(A), B: FakeLink(B)}
        self.fwd = {epoch: Forwarder(link, limits=Limits(), timeout=10.0,  # type: ignore[arg-type]
                                     queue_bytes=1 << 20, retry_after=1.5)
                    for epoch, link in self.links.items()}
        self.owner = OwnerService()
        self.nursery = nursery

    async def start(self) -> None:
        await self.nursery.start(self.fwd[A].run, self.owner)
        await self.nursery.start(self.fwd[B].run, OwnerService())

    async def pump(self) -> None:
        """Delivers every queued frame (and what serving them queues)."""
        for _ in range(20):
            await trio.testing.wait_all_tasks_blocked()
            moved = False
            for sender, link in self.links.items():
                queued, link.queued = link.queued, []
                for to, frame in queued:
                    self.fwd[to].deliver(sender, frame)
                    moved = True
            if not moved:
                return

    def forward(self, principal: Principal, request: p.Message, sink: Sink) -> None:
        self.fwd[B].forward(A, Envelope(request, principal, sink))  # type: ignore[arg-type]


@pytest.fixture
async def pair(nursery: trio.Nursery) -> Pair:
    pair = Pair(nursery)
    await pair.start()
    return pair


def client(name: str = "c1") -> Principal:
    return Principal(name, "cli", "test", False)


async def test_a_forwarded_request_is_answered_into_its_sink_and_the_scope_comes_back(
        pair: Pair) -> None:
    principal, sink = client(), Sink()
    pair.forward(principal, p.Set(id=7, session_id="s", key="k", value=1, token="admin-token"),
                 sink)
    await pair.pump()
    assert sink.replies == [p.Ok(id=7)]
    (served_by, request), = pair.owner.served
    assert served_by == "c1@2" and request == p.Set(id=7, session_id="s", key="k", value=1,
                                                    token="admin-token")
    # Proven on A, remembered on B: the next request needs no token, here or
    # on whichever daemon owns the session next.
    assert principal.grants == {"s": "admin"}
    assert pair.fwd[B].statistics()["waiting"] == 0
    assert pair.fwd[A].statistics()["remote_clients"] == 0  # nothing of it left on A


async def test_one_clients_requests_are_served_in_the_order_sent(pair: Pair) -> None:
    principal, sink = client(), Sink()
    pair.owner.hold = trio.Event()  # the first waits for room in the mailbox
    for i in range(1, 6):
        pair.forward(principal, p.Set(id=i, session_id="s", key="k", value=i), sink)
    await pair.pump()
    pair.owner.hold.set()
    await pair.pump()
    assert [r.id for _, r in pair.owner.served] == [1, 2, 3, 4, 5]  # type: ignore[attr-defined]
    assert [r.id for r in sink.replies] == [1, 2, 3, 4, 5]  # type: ignore[attr-defined]


async def attached(pair: Pair, sink: Sink, principal: Principal | None = None) -> ReplySink:
    pair.forward(principal or client(), p.Attach(id=1, session_id="s", since=3), sink)
    await pair.pump()
    assert [type(r) for r in sink.replies] == [p.Attached]
    return pair.owner.sinks["c1@2"]


async def test_a_subscriptions_events_reach_the_subscriber_in_order(pair: Pair) -> None:
    sink = Sink()
    owner_side = await attached(pair, sink)
    for seq in range(4, 9):
        assert owner_side.push_event(change(seq))  # type: ignore[attr-defined]
    await pair.pump()
    assert [e.seq for e in sink.events] == [4, 5, 6, 7, 8]  # type: ignore[attr-defined]


async def test_a_subscriber_lagging_here_is_told_where_to_resume_and_the_owner_stops(
        pair: Pair) -> None:
    sink = Sink(room=2)
    owner_side = await attached(pair, sink)
    for seq in (4, 5, 6):
        owner_side.push_event(change(seq))  # type: ignore[attr-defined]
    await pair.pump()
    assert [e.seq for e in sink.events] == [4, 5]  # type: ignore[attr-defined]
    assert sink.replies[-1] == p.Lagged(session_id="s", seq=5)  # resumes after 5
    # The owner was told: its actor drops the subscription at the next event.
    assert owner_side.push_event(change(7)) is False  # type: ignore[attr-defined]


async def test_when_the_owner_dies_waiting_requests_fail_and_subscriptions_lag(
        pair: Pair) -> None:
    watcher, waiting = Sink(), Sink()
    owner_side = await attached(pair, watcher)
    owner_side.push_event(change(4))  # type: ignore[attr-defined]
    await pair.pump()
    pair.owner.hold = trio.Event()  # A never answers this one: it died
    pair.forward(client("c2"), p.Set(id=9, session_id="s", key="k", value=1), waiting)
    await pair.pump()
    pair.fwd[B].owner_gone(A)
    assert watcher.replies[-1] == p.Lagged(session_id="s", seq=4)
    error, = waiting.replies
    assert isinstance(error, p.Error) and error.code == "unavailable"
    assert error.id == 9 and error.retry_after == 1.5
    assert pair.fwd[B].statistics()["waiting"] == 0


async def test_a_client_leaving_b_is_disconnected_on_the_owner(pair: Pair) -> None:
    principal = client()
    await attached(pair, Sink(), principal)
    pair.fwd[B].disconnect(principal)
    await pair.pump()
    assert pair.owner.disconnected == ["c1@2"]
    assert pair.fwd[A].statistics()["remote_clients"] == 0


async def test_when_the_forwarding_daemon_dies_the_owner_disconnects_its_clients(
        pair: Pair) -> None:
    owner_side = await attached(pair, Sink())
    pair.fwd[A].owner_gone(B)
    await pair.pump()
    assert pair.owner.disconnected == ["c1@2"]
    assert owner_side.push_event(change(4)) is False  # type: ignore[attr-defined]


async def test_a_request_the_owner_never_answers_fails_after_the_timeout(
        pair: Pair, autojump_clock: trio.testing.MockClock) -> None:
    pair.owner.hold = trio.Event()
    sink = Sink()
    pair.forward(client(), p.Get(id=4, session_id="s"), sink)
    await pair.pump()
    await trio.sleep(9.0)
    assert sink.replies == []
    await trio.sleep(2.1)
    error, = sink.replies
    assert isinstance(error, p.Error) and error.code == "unavailable" and error.id == 4


async def test_a_subscription_through_the_owner_counts_as_one_here_until_it_ends(
        pair: Pair) -> None:
    principal, sink = client(), Sink()
    owner_side = await attached(pair, sink, principal)
    # Watching: the connection is not idle (its idle timeout spares it).
    assert principal.subscriptions == {"s"}
    pair.forward(principal, p.Detach(id=2, session_id="s"), Sink())
    await pair.pump()
    assert principal.subscriptions == set()
    # Nothing of the ended subscription is delivered any more.
    owner_side.push_event(change(4))  # type: ignore[attr-defined]
    await pair.pump()
    assert sink.events == []
    assert pair.fwd[B].statistics()["waiting"] == 0


async def test_the_owner_forgets_a_remote_subscription_once_it_ended(pair: Pair) -> None:
    principal, sink = client(), Sink()
    owner_side = await attached(pair, sink, principal)
    assert pair.fwd[A].statistics()["remote_subscriptions"] == 1
    # The actor drops its watcher (a detach, a lag, the session's end).
    pair.owner.sinks.clear()
    del owner_side
    gc.collect()
    assert pair.fwd[A].statistics()["remote_subscriptions"] == 0


async def test_the_owner_forgets_a_remote_client_whose_subscription_lagged(
        pair: Pair, autojump_clock: trio.testing.MockClock) -> None:
    principal, sink = client(), Sink()
    owner_side = await attached(pair, sink, principal)
    remote = next(iter(pair.fwd[A]._remote.values()))
    remote.subscriptions.discard("s")  # as the actor does when its watcher lags
    owner_side.reply(p.Lagged(session_id="s", seq=3))
    await pair.pump()
    assert sink.replies[-1] == p.Lagged(session_id="s", seq=3)
    pair.fwd[B].disconnect(principal)  # nothing left to say goodbye for
    await trio.sleep(1.5)  # the owner's sweep
    assert pair.fwd[A].statistics()["remote_clients"] == 0


async def test_a_change_lost_between_the_daemons_makes_the_subscriber_resume(
        pair: Pair) -> None:
    sink = Sink()
    owner_side = await attached(pair, sink)
    for seq in (4, 5, 6):
        owner_side.push_event(change(seq))  # type: ignore[attr-defined]
    lost = [frame for to, frame in pair.links[A].queued if frame[0] == 2 and
            decode_body(frame[2]).seq == 5]  # type: ignore[attr-defined]
    pair.links[A].queued = [(to, f) for to, f in pair.links[A].queued if f not in lost]
    await pair.pump()
    assert [e.seq for e in sink.events] == [4]  # type: ignore[attr-defined]
    assert sink.replies[-1] == p.Lagged(session_id="s", seq=4)  # resumes after 4


async def test_frames_redis_failed_to_take_end_the_requests_and_lag_the_subscriptions(
        pair: Pair) -> None:
    sink = Sink()
    owner_side = await attached(pair, sink)
    owner_side.push_event(change(4))  # type: ignore[attr-defined]
    frames = [frame for _, frame in pair.links[A].queued]
    pair.links[A].queued.clear()
    pair.fwd[A].lost(B, frames)  # the publish failed: these may not have arrived
    await pair.pump()
    assert sink.replies[-1] == p.Lagged(session_id="s", seq=3)  # nothing after the attach
    waiting = Sink()
    pair.forward(client("c2"), p.Get(id=5, session_id="s"), waiting)
    frames = [frame for _, frame in pair.links[B].queued]
    pair.links[B].queued.clear()
    pair.fwd[B].lost(A, frames)
    error, = waiting.replies
    assert isinstance(error, p.Error) and error.code == "unavailable" and error.id == 5


async def test_a_daemon_found_gone_tells_its_clients_subscriptions_to_resume(
        pair: Pair) -> None:
    sink = Sink()
    owner_side = await attached(pair, sink)
    owner_side.push_event(change(4))  # type: ignore[attr-defined]
    await pair.pump()
    pair.fwd[A].owner_gone(B)  # its lease lapsed: paused, perhaps, not dead
    await pair.pump()
    assert sink.replies[-1] == p.Lagged(session_id="s", seq=4)
    assert pair.owner.disconnected == ["c1@2"]


async def test_a_request_for_a_session_that_moved_is_sent_back_not_on(pair: Pair) -> None:
    moved: list[tuple[str, int]] = []
    pair.fwd[B]._on_moved = lambda sid, owner: moved.append((sid, owner))
    b_service = OwnerService()
    pair.fwd[B]._service = b_service  # where B serves what comes back

    async def elsewhere(principal: Principal, request: Message, sink: ReplySink) -> None:
        # A's registry found that daemon 3 owns the session now.
        pair.fwd[A].moved(Envelope(request, principal, sink), 3)  # type: ignore[arg-type]

    pair.owner.submit = elsewhere  # type: ignore[method-assign]
    principal, sink = client(), Sink()
    pair.forward(principal, p.Set(id=8, session_id="s", key="k", value=1), sink)
    await pair.pump()
    assert moved == [("s", 3)]
    # B serves it itself (its registry sends it to daemon 3), once.
    assert [(who, r.id) for who, r in b_service.served] == [("c1", 8)]  # type: ignore[attr-defined]
    assert sink.replies == [p.Ok(id=8)]
    assert pair.fwd[A].statistics()["remote_clients"] == 0


async def test_a_request_the_owners_limits_refuse_is_answered_not_dropped(pair: Pair) -> None:
    pair.fwd[A]._limits = Limits(max_key=8)  # the owner runs with a lower --max-key
    sink = Sink()
    pair.forward(client(), p.Set(id=6, session_id="s", key="a-rather-long-key", value=1), sink)
    await pair.pump()
    error, = sink.replies
    assert isinstance(error, p.Error) and error.code == "bad_request" and error.id == 6
    assert pair.owner.served == [] and pair.fwd[B].statistics()["waiting"] == 0


async def test_the_daemons_own_requests_cross_the_link_as_they_are(pair: Pair) -> None:
    sink = Sink()
    record = {"run_id": "run-1", "event": "progress", "step": 2}
    pair.forward(client(), RecordRun(id=3, session_id="s", record=record), sink)
    await pair.pump()
    (_, request), = pair.owner.served
    assert request == RecordRun(id=3, session_id="s", record=record)
    assert sink.replies == [p.Ok(id=3)]
