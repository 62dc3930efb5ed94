"""The attack suite's cases: each takes a fresh temporary directory and
whether to run quick, and returns its `Row` (see `bench.attack`)."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

import nexus_protocol as p
import wsproto
import wsproto.events as ws_events

from .._client import NexusClient, ServerError
from . import Row
from ._clock import clock_jump
from ._daemon import Canary, DaemonProc, percentile
from ._floods import FLOODS

__all__ = ["CASES"]

#: Ping p99 the daemon must keep while sessions hibernate en masse.
STALL_P99 = 0.050
#: Bound on an orderly stop (SIGTERM) after an attack.
STOP_BOUND = 15.0


def _reset(sock: socket.socket) -> None:
    """Closes `sock` with a TCP reset (or a plain close for a Unix socket)."""
    if sock.family != socket.AF_UNIX:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _fail(reason: str) -> str:
    return f"FAILED: {reason}"


def _exited(d: DaemonProc) -> str:
    assert d.proc is not None
    return _fail(f"the daemon exited ({d.proc.returncode}): {d.tail(1).strip()}")


# ----------------------------------------------------------- ws-early-reset


def _ws_upgrade_then_reset(port: int) -> bool:
    """One client: upgrades, then resets; False if the daemon refused it."""
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    except OSError:
        return False
    try:
        ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        sock.sendall(ws.send(ws_events.Request(host="127.0.0.1", target="/")))
        while True:
            data = sock.recv(65536)
            if not data:
                return False
            ws.receive_data(data)
            for e in ws.events():
                if isinstance(e, ws_events.AcceptConnection | ws_events.RejectConnection):
                    return isinstance(e, ws_events.AcceptConnection)
    except OSError:
        return False
    finally:
        _reset(sock)


def ws_early_reset(tmp: Path, quick: bool) -> Row:
    n = 300 if quick else 3000
    d = DaemonProc(tmp, ws=True).serve()
    try:
        rss0 = d.rss()
        with Canary(d.unix) as canary:
            refused = sum(not _ws_upgrade_then_reset(d.ws_port or 0) for _ in range(n))
            time.sleep(0.5)
        done = (f"{n:,} WebSocket upgrades, each reset (SO_LINGER 0) before hello "
                f"({refused} refused or cut by the daemon)")
        if not d.alive():
            return Row("ws-early-reset", done, _exited(d), "")
        try:
            ws = NexusClient(d.websocket, client="attack")
            ws.request(p.Ping(id=ws.next_id()), timeout=5)
            ws.close()
        except (OSError, ConnectionError, TimeoutError, ServerError) as exc:
            return Row("ws-early-reset", done,
                       _fail(f"a new WebSocket client got no answer ({exc})"), canary.figures())
        left = -1
        for _ in range(50):  # its stats connection is the only one left
            left = d.stats()["connections"] - 1
            if left == 0:
                break
            time.sleep(0.1)
        figures = f"canary {canary.figures()}; RSS +{_mib(d.rss() - rss0)}"
        if canary.error or canary.lost:
            return Row("ws-early-reset", done,
                       _fail(canary.error or f"{canary.lost} pings unanswered"), figures)
        if left:
            return Row("ws-early-reset", done, _fail(f"{left} connections still held"), figures)
        return Row("ws-early-reset", done, "held", figures)
    finally:
        d.kill()


# ------------------------------------------------------ writer-cancel-storm


def _abandon(d: DaemonProc, sessions: list[p.Created], k: int) -> int:
    """One client: pipelines creates and writes, then resets; returns how
    many requests it left in flight."""
    c = d.client()
    msgs: list[p.Message] = []
    for i in range(8):
        msgs.append(p.Create(id=c.next_id()))
        s = sessions[(k + i) % len(sessions)]
        msgs.append(p.Set(id=c.next_id(), session_id=s.session_id, key=f"k{k % 7}",
                          value={"round": k, "pad": "x" * 200}, token=s.token))
    c.link.send(b"".join(c.link.wrap(c.conn.send(m)) for m in msgs))
    _reset(c.link.sock)
    return len(msgs)


def writer_cancel_storm(tmp: Path, quick: bool) -> Row:
    rounds, clients = (10, 40) if quick else (40, 100)
    d = DaemonProc(tmp).serve()
    try:
        setup = d.client()
        sessions = [r for r in setup.pipeline([p.Create(id=setup.next_id())
                                               for _ in range(50)])
                    if isinstance(r, p.Created)]
        abandoned = 0
        with Canary(d.unix) as canary:
            for r in range(rounds):
                counts: list[int] = []
                threads = [threading.Thread(target=lambda k=k, counts=counts: counts.append(
                    _abandon(d, sessions, k))) for k in range(r * clients, (r + 1) * clients)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                abandoned += sum(counts)
        done = (f"{rounds} rounds of {clients} clients, each resetting with 16 creates and "
                f"writes in flight ({abandoned:,} requests abandoned)")
        if not d.alive():
            return Row("writer-cancel-storm", done, _exited(d),
                       "")
        # Afterwards every session still takes a write, and reads it back.
        lost = 0
        try:
            sets = [p.Set(id=setup.next_id(), session_id=s.session_id, key="after",
                          value=i, token=s.token) for i, s in enumerate(sessions)]
            setup.pipeline(sets, window=len(sets))
            for i, s in enumerate(sessions):
                got = setup.request(p.Get(id=setup.next_id(), session_id=s.session_id,
                                          key="after", token=s.token), timeout=10)
                lost += not (isinstance(got, p.Value) and got.value == i)
        except (OSError, ConnectionError, TimeoutError, ServerError) as exc:
            return Row("writer-cancel-storm", done,
                       _fail(f"writes after the storm failed: {exc}"), canary.figures())
        setup.close()
        stop = d.terminate(STOP_BOUND)
        figures = (f"canary {canary.figures()}; writes after: {len(sessions) - lost}/"
                   f"{len(sessions)} committed; SIGTERM stop "
                   + (f"{stop:.1f} s" if stop is not None else f"> {STOP_BOUND:g} s"))
        if lost:
            return Row("writer-cancel-storm", done, _fail(f"{lost} writes lost"), figures)
        if stop is None:
            return Row("writer-cancel-storm", done,
                       _fail(f"SIGTERM did not stop it within {STOP_BOUND:g} s"), figures)
        if canary.error or canary.lost:
            return Row("writer-cancel-storm", done,
                       _fail(canary.error or f"{canary.lost} pings unanswered"), figures)
        return Row("writer-cancel-storm", done, "held", figures)
    finally:
        d.kill()


# ------------------------------------------------------------ second-daemon


def second_daemon(tmp: Path, quick: bool) -> Row:
    first = DaemonProc(tmp).serve()
    second = DaemonProc(tmp, data=first.data, name="second")
    done = "a second daemon started on the data directory of a running one"
    try:
        c = first.client()
        made = c.request(p.Create(id=c.next_id()))
        assert isinstance(made, p.Created)
        second.start()
        with contextlib.suppress(RuntimeError):  # it should exit: that is the point
            second.wait_ready(timeout=10)
        started = second.alive() and second.ws_port is None and \
            f"listening on unix:{second.socket}" in second.log_text()
        if second.alive() and not started:
            time.sleep(1)  # still starting: give it the chance to listen
            started = f"listening on unix:{second.socket}" in second.log_text()
        first_ok = first.alive()
        try:
            got = c.request(p.Get(id=c.next_id(), session_id=made.session_id,
                                  token=made.token), timeout=5)
            first_ok = first_ok and isinstance(got, p.Value | p.StateReply)
        except (OSError, ConnectionError, TimeoutError, ServerError):
            first_ok = False
        said = second.tail(3).replace("\n", " ")[-160:]
        figures = (f"second exited with {second.proc.returncode}" if second.proc
                   and second.proc.returncode is not None else "second still running")
        if started:
            return Row("second-daemon", done,
                       _fail("the second daemon started and serves the same data"), figures)
        if not first_ok:
            return Row("second-daemon", done, _fail("the first daemon stopped answering"),
                       figures)
        return Row("second-daemon", done, "held", f"{figures}: {said}")
    finally:
        second.kill()
        first.kill()


# --------------------------------------------------------- crash-during-idle


def crash_during_idle(tmp: Path, quick: bool) -> Row:
    # After a crash a session may live up to IDLE_LAG (10 s) past its idle
    # deadline, never less: expired by 2.5 + 4 + 10 s, with a second to spare.
    idle, read_at, check_at, gone_by = 4.0, 2.5, 5.0, 17.5
    d = DaemonProc(tmp).serve()
    done = (f"idle timeout {idle:g} s; read at {read_at:g} s; kill -9; restart; "
            f"read at {check_at:g} s and {gone_by:g} s")
    try:
        c = d.client()
        made = c.request(p.Create(id=c.next_id(), idle_timeout=idle))
        t0 = time.monotonic()
        assert isinstance(made, p.Created)
        time.sleep(max(0.0, t0 + read_at - time.monotonic()))
        c.request(p.Get(id=c.next_id(), session_id=made.session_id, token=made.token))
        d.kill()
        c.close()
        d = DaemonProc(tmp, data=d.data, name="restarted").serve()

        def read() -> str:
            c = d.client()
            try:
                got = c.request(p.Get(id=c.next_id(), session_id=made.session_id,
                                      token=made.token), timeout=5)
                return "there" if isinstance(got, p.StateReply) else repr(got)
            except ServerError as exc:
                return str(exc)
            finally:
                c.close()

        time.sleep(max(0.0, t0 + check_at - time.monotonic()))
        at_check = read()
        time.sleep(max(0.0, t0 + gone_by - time.monotonic()))
        at_end = read()
        figures = f"at {check_at:g} s: {at_check}; at {gone_by:g} s: {at_end}"
        if at_check != "there":
            return Row("crash-during-idle", done,
                       _fail("the read before the crash was forgotten: the session "
                             "expired at its old idle deadline"), figures)
        if "expired" not in at_end and "not_found" not in at_end:
            return Row("crash-during-idle", done, _fail("the session never expired"), figures)
        return Row("crash-during-idle", done, "held", figures)
    finally:
        d.kill()


# ---------------------------------------------------------- mass-hibernation


def mass_hibernation(tmp: Path, quick: bool) -> Row:
    n = 3000 if quick else 20_000
    after = 2.0
    d = DaemonProc(tmp, "--hibernate-after", f"{after:g}s").serve()
    try:
        made: list[p.Created] = []

        def create(k: int) -> None:
            c = d.client()
            made.extend(r for r in c.pipeline([p.Create(id=c.next_id(), metadata={
                "user": f"u{i:06d}", "pad": "x" * 100}) for i in range(k)], window=256)
                if isinstance(r, p.Created))
            c.close()

        threads = [threading.Thread(target=create, args=(n // 4,)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # One watcher keeps them all awake; when it goes, they all fall quiet
        # at once and hibernate `after` seconds later, together.
        watcher = d.client()
        watcher.pipeline([p.Attach(id=watcher.next_id(), session_id=s.session_id,
                                   token=s.token) for s in made], window=256)
        done = f"{len(made):,} sessions watched by one connection, which then closes"
        with Canary(d.unix) as canary:
            time.sleep(0.3)
            closed = time.monotonic()
            watcher.close()
            while d.stats()["sessions_active"]:
                time.sleep(0.25)
            # A write queued now commits after every snapshot before it.
            c = d.client()
            queued = time.monotonic()
            c.request(p.Create(id=c.next_id()))
            ended = time.monotonic()
            c.close()
            time.sleep(0.1)
        storm = canary.between(closed + after - 0.1, ended)
        detach = canary.between(closed, closed + after - 0.1)
        p99 = canary.figures(storm)
        figures = (f"while hibernating ({ended - closed - after:.1f} s): {p99}; "
                   f"on the watcher's close: max "
                   f"{1000 * max(detach, default=0.0):.0f} ms; a write queued behind the "
                   f"snapshots: {1000 * (ended - queued):.0f} ms")
        if not storm:
            return Row("mass-hibernation", done, _fail("no ping while hibernating"), figures)
        worst = percentile(storm, 0.99)
        if canary.error or canary.lost:
            return Row("mass-hibernation", done,
                       _fail(canary.error or f"{canary.lost} pings unanswered"), figures)
        if worst > STALL_P99:
            return Row("mass-hibernation", done,
                       _fail(f"ping p99 {1000 * worst:.0f} ms > {1000 * STALL_P99:.0f} ms"),
                       figures)
        return Row("mass-hibernation", done, "held", figures)
    finally:
        d.kill()


CASES: dict[str, Callable[[Path, bool], Row]] = {
    "ws-early-reset": ws_early_reset,
    "writer-cancel-storm": writer_cancel_storm,
    "second-daemon": second_daemon,
    "crash-during-idle": crash_during_idle,
    "mass-hibernation": mass_hibernation,
    "clock-jump": clock_jump,
    **FLOODS,
}
