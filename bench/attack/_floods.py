"""The flood cases of the attack suite: an unauthenticated client trying to
exhaust the machine (memory, disk, descriptors) with what the protocol lets
it ask for. Each reports the daemon's RSS and disk growth and whether a
canary on the Unix socket kept its ping p99 within 50 ms."""

from __future__ import annotations

import contextlib
import resource
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import nexus_protocol as p

from .._client import NexusClient, wait_readable
from . import Row
from ._daemon import Canary, DaemonProc

__all__ = ["FLOODS"]

#: Canary ping p99 the daemon must keep under a flood.
CANARY_P99 = 0.050
#: Bounds a flood of one unauthenticated WebSocket for 60 s must hold to.
CREATE_DISK = 50 << 20
CREATE_RSS = 100 << 20


def _mib(n: int) -> str:
    return f"{n / 2**20:+.1f} MiB"


def _disk(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


class _Growth:
    """RSS and disk of a daemon, from when it is made."""

    def __init__(self, d: DaemonProc) -> None:
        self.d = d
        self.rss0, self.disk0 = d.rss(), _disk(d.data)
        self.peak = self.rss0

    def sample(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.peak = max(self.peak, self.d.rss())

    def figures(self) -> tuple[int, int, str]:
        self.sample()
        rss, disk = self.d.rss() - self.rss0, _disk(self.d.data) - self.disk0
        return rss, disk, (f"RSS {_mib(rss)} (peak {_mib(self.peak - self.rss0)}), "
                           f"disk {_mib(disk)}")


def _verdict(case: str, done: str, d: DaemonProc, canary: Canary, growth: _Growth,
             extra: str = "", *, rss_bound: int | None = None,
             disk_bound: int | None = None) -> Row:
    if not d.alive():
        assert d.proc is not None
        return Row(case, done, f"FAILED: the daemon exited ({d.proc.returncode})", "")
    rss, disk, grown = growth.figures()
    figures = f"{grown}; canary {canary.figures()}" + (f"; {extra}" if extra else "")
    if canary.error or canary.lost:
        return Row(case, done, f"FAILED: {canary.error or f'{canary.lost} pings lost'}",
                   figures)
    if canary.p99() > CANARY_P99:
        return Row(case, done, f"FAILED: canary p99 {1000 * canary.p99():.0f} ms > "
                               f"{1000 * CANARY_P99:.0f} ms", figures)
    if rss_bound is not None and rss > rss_bound:
        return Row(case, done, f"FAILED: RSS grew {_mib(rss)}", figures)
    if disk_bound is not None and disk > disk_bound:
        return Row(case, done, f"FAILED: disk grew {_mib(disk)}", figures)
    return Row(case, done, "held", figures)


def _flood(c: NexusClient, make: Callable[[int], p.Message], seconds: float,
           growth: _Growth, window: int = 64) -> Counter[str]:
    """Sends what `make(id)` makes for `seconds`, `window` unanswered at most;
    counts the replies by type (errors by code)."""
    counts: Counter[str] = Counter()
    sent = answered = 0
    end = time.monotonic() + seconds
    next_sample = 0.0
    while time.monotonic() < end or answered < sent:
        if time.monotonic() < end and sent - answered < window:
            batch = []
            while sent - answered < window:
                batch.append(c.link.wrap(c.conn.send(make(c.next_id()))))
                sent += 1
            c.link.send(b"".join(batch))
        if not wait_readable([c.fileno()], 5.0):
            counts["no answer"] += sent - answered
            break
        for piece in c.link.feed(c.link.recv() or b""):
            c.conn.receive_data(piece)
        if c.link.closed:
            counts["closed"] += 1
            break
        while True:
            event = c.conn.next_event()
            if event is p.NEED_DATA or isinstance(event, p.ConnectionClosed):
                break
            if getattr(event, "id", None) is None:
                continue
            answered += 1
            counts[event.code if isinstance(event, p.Error) else event.TAG] += 1
        if time.monotonic() > next_sample:
            growth.sample()
            next_sample = time.monotonic() + 0.5
    return counts


def _counts(counts: Counter[str]) -> str:
    return ", ".join(f"{n:,} {what}" for what, n in counts.most_common())


# ----------------------------------------------------------------- creates


def create_flood(tmp: Path, quick: bool) -> Row:
    seconds = 10.0 if quick else 60.0
    d = DaemonProc(tmp, ws=True).serve()
    try:
        growth = _Growth(d)
        with Canary(d.unix) as canary:
            c = NexusClient(d.websocket, channel="attack", client="attack")
            counts = _flood(c, lambda rid: p.Create(id=rid, ttl=30 * 86400.0), seconds,
                            growth)
            c.close()
        done = (f"one unauthenticated WebSocket pipelines creates (ttl 30 days) for "
                f"{seconds:g} s: {_counts(counts)}")
        return _verdict("create-flood", done, d, canary, growth,
                        rss_bound=CREATE_RSS * seconds / 60, disk_bound=CREATE_DISK)
    finally:
        d.kill()


def metadata_flood(tmp: Path, quick: bool) -> Row:
    seconds = 10.0 if quick else 30.0
    d = DaemonProc(tmp, ws=True).serve()
    pad = "x" * 900_000
    try:
        growth = _Growth(d)
        with Canary(d.unix) as canary:
            c = NexusClient(d.websocket, channel="attack", client="attack")
            counts = _flood(c, lambda rid: p.Create(id=rid, metadata={"pad": pad}), seconds,
                            growth, window=8)
            c.close()
        done = (f"one unauthenticated WebSocket creates sessions with 900 KB of metadata "
                f"each for {seconds:g} s: {_counts(counts)}")
        return _verdict("metadata-flood", done, d, canary, growth,
                        rss_bound=CREATE_RSS, disk_bound=CREATE_DISK)
    finally:
        d.kill()


def watcher_flood(tmp: Path, quick: bool) -> Row:
    seconds = 10.0 if quick else 60.0
    d = DaemonProc(tmp, "--hibernate-after", "1s", ws=True).serve()
    try:
        growth = _Growth(d)
        with Canary(d.unix) as canary:
            c = NexusClient(d.websocket, channel="attack", client="attack")
            made: list[p.Created] = []
            counts: Counter[str] = Counter()
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                try:
                    got = c.request(p.Create(id=c.next_id()), timeout=10)
                except Exception as exc:  # busy: the bucket is empty for now
                    counts[str(exc).split(":")[0]] += 1
                    time.sleep(0.05)
                    continue
                assert isinstance(got, p.Created)
                made.append(got)
                c.request(p.Attach(id=c.next_id(), session_id=got.session_id,
                                   token=got.token), timeout=10)
                counts["watched"] += 1
                growth.sample()
            active = d.stats()["sessions_active"]
            c.close()
        done = (f"one WebSocket creates a session and watches it, for {seconds:g} s: "
                f"{_counts(counts)}")
        return _verdict("watcher-flood", done, d, canary, growth,
                        f"{active:,} sessions active at the end", rss_bound=CREATE_RSS)
    finally:
        d.kill()


# ----------------------------------------------------------------- frames


def half_frames(tmp: Path, quick: bool) -> Row:
    n = 200 if quick else 1000
    timeout = 5.0
    d = DaemonProc(tmp, "--read-timeout", f"{timeout:g}s").serve()
    socks: list[socket.socket] = []
    try:
        growth = _Growth(d)
        with Canary(d.unix) as canary:
            half = struct.pack(">I", 1 << 20) + b"\x81" + b"x" * (1 << 19)
            for _ in range(n):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(str(d.socket))
                conn = p.Connection(p.Side.CLIENT)
                s.sendall(conn.send(p.Hello(versions=[1], channel="attack")))
                s.recv(4096)
                s.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    s.send(half)
                socks.append(s)
            growth.sample()
            held = d.stats()["connections"] - 2  # the canary and the stats client
            time.sleep(timeout + 1.0)
            left = d.stats()["connections"] - 2
            growth.sample()
        done = (f"{n:,} Unix connections each send half of a 1 MiB frame and stop "
                f"(--read-timeout {timeout:g}s)")
        extra = f"{held:,} held while sending; {left:,} left after the read timeout"
        row = _verdict("half-frames", done, d, canary, growth, extra)
        if not row.failed and left > 0:
            return Row(row.case, done, f"FAILED: {left} connections still open", row.figures)
        return row
    finally:
        for s in socks:
            s.close()
        d.kill()


def stalled_subscribers(tmp: Path, quick: bool) -> Row:
    writes = 200 if quick else 1000
    d = DaemonProc(tmp).serve()
    stalled: list[NexusClient] = []
    try:
        growth = _Growth(d)
        w = d.client()
        made = w.request(p.Create(id=w.next_id()))
        assert isinstance(made, p.Created)
        for _ in range(3):
            s = d.client()
            s.request(p.Attach(id=s.next_id(), session_id=made.session_id, token=made.token))
            stalled.append(s)  # and never read again
        with Canary(d.unix) as canary:
            value = "v" * 200_000
            for i in range(writes):
                w.request(p.Set(id=w.next_id(), session_id=made.session_id, key=f"k{i % 50}",
                                value=value, token=made.token))
                if i % 20 == 0:
                    growth.sample()
        lagged = d.stats().get("lagged", "?")
        done = (f"a writer of {writes:,} values of 200 KB to one session, 3 subscribers that "
                f"never read")
        return _verdict("stalled-subscribers", done, d, canary, growth,
                        f"{lagged} subscribers dropped as lagged", rss_bound=CREATE_RSS)
    finally:
        for s in stalled:
            s.close()
        d.kill()


# ------------------------------------------------------------- descriptors


#: Refused clients that reset, in the connection flood.
RESETS = 100


def _reset_refused(port: int, n: int) -> None:
    """Opens `n` connections the daemon refuses (it is at its bound), lets
    it start reading each for the answer it owes, then resets them all
    (SO_LINGER 0): each must end its own connection alone."""
    socks = []
    for _ in range(n):
        with contextlib.suppress(OSError):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"GET / HTTP/1.1\r\n")
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            socks.append(s)
    time.sleep(0.3)
    for s in socks:
        s.close()
    time.sleep(0.3)


def connection_flood(tmp: Path, quick: bool) -> Row:
    n = 3000 if quick else 20_000
    limit = 1000 if quick else 10_000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    d = DaemonProc(tmp, "--max-connections", str(limit), ws=True).serve()
    socks: list[socket.socket] = []
    try:
        growth = _Growth(d)
        with Canary(d.unix) as canary:
            refused = 0
            for _ in range(n):
                try:
                    s = socket.create_connection(("127.0.0.1", d.ws_port or 0), timeout=5)
                except OSError:
                    refused += 1
                    continue
                socks.append(s)
            growth.sample()
            t0 = time.monotonic()
            try:
                probe = socket.create_connection(("127.0.0.1", d.ws_port or 0), timeout=5)
                probe.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                              b"Connection: Upgrade\r\nSec-WebSocket-Key: "
                              b"dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
                answer = probe.recv(64).split(b"\r\n")[0].decode(errors="replace")
                probe.close()
            except OSError as exc:
                answer = f"no answer ({exc})"
            waited = time.monotonic() - t0
            _reset_refused(d.ws_port or 0, RESETS)
            try:
                stats = d.stats()
            except OSError:  # the daemon is gone: the verdict says so
                stats = {}
        done = (f"{n:,} TCP connections to the WebSocket port held open "
                f"(--max-connections {limit:,}), then one more client, then {RESETS} "
                f"refused clients that reset while the daemon reads them")
        extra = (f"the next client heard {answer!r} in {1000 * waited:.0f} ms; "
                 f"{stats.get('limits', {}).get('connections_refused', 0):,} refused by the "
                 f"daemon, "
                 f"{refused} by the kernel")
        row = _verdict("connection-flood", done, d, canary, growth, extra)
        if not row.failed and not answer.startswith("HTTP/1.1 503"):
            return Row(row.case, done, "FAILED: the next client was not told 503",
                       row.figures)
        return row
    finally:
        for s in socks:
            s.close()
        d.kill()
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


FLOODS: dict[str, Callable[[Path, bool], Row]] = {
    "create-flood": create_flood,
    "metadata-flood": metadata_flood,
    "watcher-flood": watcher_flood,
    "half-frames": half_frames,
    "stalled-subscribers": stalled_subscribers,
    "connection-flood": connection_flood,
}

