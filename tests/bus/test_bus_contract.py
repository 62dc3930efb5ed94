"""The Bus contract, held by every bus (see the `bus` fixture): ordered
delivery of committed changes, replay since a `seq` within the retention
window, and the lagged rule for subscribers that fall behind."""

from __future__ import annotations

import nexus_protocol as p
from bus_helpers import RETENTION, Inbox, change, seqs

from nexusd._bus import Bus, LocalBus


def _conforms(a: LocalBus) -> list[Bus]:
    return [a]  # mypy checks that every bus satisfies the protocol


def test_every_subscriber_receives_each_change_once_in_order(bus: Bus) -> None:
    topic = bus.open("s", 0, [])
    a, b = Inbox(), Inbox()
    topic.subscribe("a", a)
    topic.subscribe("b", b)
    for seq in range(1, 4):
        assert topic.publish(seq, change(seq)) == []
    assert seqs(a.events) == seqs(b.events) == [1, 2, 3]
    assert topic.seq == 3


def test_replay_gives_exactly_the_changes_after_since(bus: Bus) -> None:
    topic = bus.open("s", 0, [])
    for seq in range(1, 5):
        topic.publish(seq, change(seq))
    replayed = topic.replay(2)
    assert replayed is not None and seqs(replayed) == [3, 4]
    assert topic.replay(4) == []  # up to date: nothing to replay, no snapshot either


def test_a_snapshot_is_needed_without_since_or_beyond_the_retention_window(bus: Bus) -> None:
    topic = bus.open("s", 0, [])
    for seq in range(1, RETENTION + 3):  # seqs 1 and 2 fall out of the window
        topic.publish(seq, change(seq))
    assert topic.replay(None) is None
    assert topic.replay(0) is None
    assert topic.replay(1) is None
    oldest = topic.replay(2)
    assert oldest is not None and seqs(oldest) == list(range(3, RETENTION + 3))
    assert topic.replay(RETENTION + 3) is None  # a seq the session never reached


def test_a_topic_opens_with_the_history_retained_before(bus: Bus) -> None:
    topic = bus.open("s", 3, [(2, change(2)), (3, change(3))])
    assert topic.seq == 3
    replayed = topic.replay(1)
    assert replayed is not None and seqs(replayed) == [2, 3]
    assert topic.replay(0) is None
    topic.publish(4, change(4))
    after = topic.replay(3)
    assert after is not None and seqs(after) == [4]


def test_replay_then_subscribe_leaves_no_gap(bus: Bus) -> None:
    topic = bus.open("s", 0, [])
    for seq in range(1, 3):
        topic.publish(seq, change(seq))
    inbox = Inbox()
    replayed = topic.replay(0)
    assert replayed is not None
    topic.subscribe("c1", inbox)
    topic.publish(3, change(3))
    assert seqs(replayed) + seqs(inbox.events) == [1, 2, 3]


def test_a_lagging_subscriber_is_dropped_and_told_where_it_stopped(bus: Bus) -> None:
    topic = bus.open("s", 0, [])
    slow, fast = Inbox(room=2), Inbox()
    topic.subscribe("slow", slow)
    topic.subscribe("fast", fast)
    assert topic.publish(1, change(1)) == []
    assert topic.publish(2, change(2)) == []
    assert topic.publish(3, change(3)) == [("slow", slow)]
    assert slow.controls == [p.Lagged(session_id="s", seq=2)]  # it resumes from seq 2
    assert list(topic.subscribers) == ["fast"]
    topic.publish(4, change(4))
    assert seqs(slow.events) == [1, 2]
    assert seqs(fast.events) == [1, 2, 3, 4]


def test_a_broadcast_drops_nobody(bus: Bus) -> None:
    topic = bus.open("s", 0, [])
    full, room = Inbox(room=0), Inbox()
    topic.subscribe("full", full)
    topic.subscribe("room", room)
    presence = p.Presence(session_id="s", action="join", connection_id="c9", channel="cli")
    topic.broadcast(p.encode_body(presence))
    assert list(topic.subscribers) == ["full", "room"]
    assert full.events == [] and full.controls == []
    assert [p.decode_body(b) for b in room.events] == [presence]
    assert topic.replay(0) == []  # not a change: nothing to replay


def test_subscribing_again_under_a_key_replaces_the_subscriber(bus: Bus) -> None:
    topic = bus.open("s", 0, [])
    old, new = Inbox(), Inbox()
    assert topic.subscribe("c1", old) is None
    assert topic.subscribe("c1", new) is old
    topic.publish(1, change(1))
    assert old.events == [] and seqs(new.events) == [1]


def test_an_unsubscribed_subscriber_receives_nothing_more(bus: Bus) -> None:
    topic = bus.open("s", 0, [])
    inbox = Inbox()
    topic.subscribe("c1", inbox)
    topic.publish(1, change(1))
    assert topic.unsubscribe("c1") is inbox
    assert topic.unsubscribe("c1") is None
    topic.publish(2, change(2))
    assert seqs(inbox.events) == [1]


def test_topics_are_separate_and_closing_one_forgets_it(bus: Bus) -> None:
    s, t = bus.open("s", 0, []), bus.open("t", 0, [])
    a, b = Inbox(), Inbox()
    s.subscribe("a", a)
    t.subscribe("b", b)
    s.publish(1, change(1))
    assert seqs(a.events) == [1] and b.events == []
    assert bus.statistics().topics == 2 and bus.statistics().subscribers == 2
    s.close()
    stats = bus.statistics()
    assert (stats.topics, stats.subscribers, stats.published) == (1, 1, 1)


def test_reopening_a_session_replaces_its_topic(bus: Bus) -> None:
    # An ending actor may still hold the old topic while a new one activates.
    old = bus.open("s", 1, [(1, change(1))])
    new = bus.open("s", 1, [(1, change(1))])
    old.close()
    assert bus.statistics().topics == 1
    inbox = Inbox()
    new.subscribe("c1", inbox)
    new.publish(2, change(2))
    assert seqs(inbox.events) == [2]


def test_the_retention_window_is_bounded_in_bytes_too() -> None:
    bus = LocalBus(retention=1000, retention_bytes=3 * len(change(1)) + 1)
    topic = bus.open("s", 0, [])
    for seq in range(1, 6):
        topic.publish(seq, change(seq))
    assert seqs(topic.replay(2) or []) == [3, 4, 5]
    assert topic.replay(1) is None  # older than the window: a snapshot instead
    assert bus.statistics().history_bytes == topic.history_bytes == 3 * len(change(1))
    topic.close()
    assert bus.statistics().history_bytes == 0


def test_history_handed_over_at_opening_is_trimmed_to_the_bound() -> None:
    bus = LocalBus(retention=1000, retention_bytes=2 * len(change(1)))
    topic = bus.open("s", 4, [(seq, change(seq)) for seq in range(1, 5)])
    assert seqs(topic.replay(2) or []) == [3, 4]
    assert topic.replay(1) is None
