"""`PeerLimits` on its own: connection counts, create buckets, and the log
lines protocol errors may cost; and the accept loop out of descriptors."""

from __future__ import annotations

import errno
import logging
from functools import partial
from typing import Any

import pytest
import trio

from nexusd._limits import LimitSettings, PeerLimits, peer_of_address, peer_of_uid
from nexusd.http._server import HttpListener
from nexusd.transports._common import accept_loop


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_peers_are_addresses_over_the_network_and_uids_over_unix() -> None:
    assert peer_of_address("127.0.0.1").loopback
    assert peer_of_address("::ffff:127.0.0.1") == peer_of_address("127.0.0.1")
    assert not peer_of_address("192.0.2.7").loopback
    assert peer_of_address("192.0.2.7").network
    assert not peer_of_uid(1000).network


def test_connections_are_bounded_overall_and_per_peer() -> None:
    limits = PeerLimits(LimitSettings(max_connections=3, max_connections_per_peer=2,
                                      admin_reserve=1))
    a, b, local = peer_of_address("192.0.2.1"), peer_of_address("192.0.2.2"), peer_of_uid(1)
    assert limits.admit_connection(a) and limits.admit_connection(a)
    assert not limits.admit_connection(a)  # per peer
    assert limits.admit_connection(b)
    assert not limits.admit_connection(b)  # overall
    assert not limits.admit_connection(local)
    assert limits.admit_connection(local, admin=True)  # the owner's reserve
    assert not limits.admit_connection(local, admin=True)
    limits.release_connection(a)
    assert not limits.admit_connection(b)  # the owner's connection still counts
    limits.release_connection(local)
    assert limits.admit_connection(b)
    stats = limits.statistics()
    assert (stats.connections, stats.peers_connected, stats.connections_refused) == (3, 2, 5)


def test_a_network_peer_creates_at_its_bucket_rate() -> None:
    clock = Clock()
    limits = PeerLimits(LimitSettings(create_rate=2.0, create_burst=3), clock)
    a, b = peer_of_address("192.0.2.1"), peer_of_address("192.0.2.2")
    assert [limits.allow_create(a) for _ in range(4)] == [True, True, True, False]
    assert limits.create_retry_after(a) == pytest.approx(0.5)
    assert limits.allow_create(b)  # another peer, another bucket
    clock.now = 0.5
    assert limits.allow_create(a) and not limits.allow_create(a)
    clock.now = 100.0
    assert sum(limits.allow_create(a) for _ in range(10)) == 3  # never above the burst
    assert all(limits.allow_create(peer_of_uid(1)) for _ in range(100))  # Unix: not here


def test_protocol_errors_are_logged_at_a_bounded_rate_then_summed_up(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    limits = PeerLimits(LimitSettings(log_interval=10.0, log_per_peer=3,
                                      log_per_interval=5), clock)
    caplog.set_level(logging.INFO, logger="nexusd.limits")
    noisy, other = peer_of_address("192.0.2.1"), peer_of_address("192.0.2.2")
    for _ in range(1000):
        limits.protocol_error(noisy, "c1", "malformed msgpack")
    for _ in range(10):
        limits.protocol_error(other, "c2", "malformed msgpack")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 5  # 3 of the noisy peer, 2 of the other: the interval's share
    clock.now = 10.0
    limits.protocol_error(other, "c2", "one more")
    summary = [r.getMessage() for r in caplog.records][5]
    assert summary.startswith("1005 protocol errors from 2 peers not logged")
    assert "192.0.2.1 997" in summary
    assert len(caplog.records) == 7  # the summary, then the new interval's first line
    assert limits.statistics().protocol_errors == 1011


class _FullListener(trio.abc.Listener[Any]):
    """A listener whose accept fails with EMFILE, as a process out of descriptors."""

    def __init__(self) -> None:
        self.calls = 0

    async def accept(self) -> Any:
        self.calls += 1
        await trio.lowlevel.checkpoint()
        raise OSError(errno.EMFILE, "Too many open files")

    async def aclose(self) -> None:
        pass


async def test_out_of_descriptors_the_accept_loop_logs_once_an_interval(
        caplog: pytest.LogCaptureFixture, autojump_clock: object) -> None:
    caplog.set_level(logging.INFO)
    listener = _FullListener()

    async def never(stream: Any) -> None:
        raise AssertionError("nothing was accepted")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept_loop, listener, None, never, nursery)
        await trio.sleep(5.0)
        nursery.cancel_scope.cancel()
    assert listener.calls > 20  # it kept trying
    records = [r for r in caplog.records if "accept" in r.getMessage()]
    assert len(records) == 1, [r.getMessage() for r in records]
    assert "EMFILE" in records[0].getMessage() and records[0].exc_info is None


async def test_out_of_descriptors_the_http_listener_logs_once_an_interval(
        caplog: pytest.LogCaptureFixture, autojump_clock: object,
        monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.INFO)
    listener = _FullListener()
    listener.socket = trio.socket.socket()  # type: ignore[attr-defined]
    await listener.socket.bind(("127.0.0.1", 0))  # type: ignore[attr-defined]

    async def open_tcp_listeners(port: int, *, host: str) -> list[Any]:
        return [listener]

    monkeypatch.setattr("nexusd.http._server.trio.open_tcp_listeners", open_tcp_listeners)
    limits = PeerLimits(LimitSettings(max_connections=3, max_connections_per_peer=2,
                                      admin_reserve=1))
    with listener.socket:  # type: ignore[attr-defined]
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(HttpListener(limits).serve, lambda port: None,
                                        "127.0.0.1", 0, None, handler_nursery=nursery))
            await trio.sleep(5.0)
            nursery.cancel_scope.cancel()
    assert listener.calls > 20  # it kept trying
    records = [r for r in caplog.records if "accept" in r.getMessage()]
    assert len(records) == 1, [r.getMessage() for r in records]
    assert "EMFILE" in records[0].getMessage() and records[0].exc_info is None
