"""nexusd under attack: ``python -m bench.attack [--quick]``.

Each case starts a real daemon subprocess (a temporary data directory and
Unix socket, a WebSocket on a free port when it needs one), attacks it the
way a hostile or unlucky world would, and checks what a user relies on
afterwards. A case reports one row: what was done, the outcome (``held``,
or ``FAILED: what broke``) and its key figures. The command exits non-zero
if any case failed.

Cases
    ws-early-reset
        WebSocket clients complete the upgrade, then reset the connection
        (SO_LINGER 0) before saying hello. The daemon must go on answering,
        over the Unix socket (a canary pings throughout) and over WebSocket,
        and hold no connection for them afterwards.
    writer-cancel-storm
        Clients pipeline creates and writes, then reset the connection with
        every request in flight, round after round: the session actors'
        writes are abandoned mid-commit. Afterwards writes must still
        commit and read back, and SIGTERM must stop the daemon within a
        bound.
    second-daemon
        A second daemon started on the data directory of a running one must
        refuse to start, and the first must carry on.
    crash-during-idle
        A session (idle timeout 4 s) is read 2.5 s after its creation, which
        moves its idle deadline to 6.5 s; the daemon is killed (``kill -9``)
        and restarted. At 5 s the session must still be there; by 17.5 s it
        must have expired (a session recovered after a crash may outlive its
        idle deadline by the 10 s its stored deadline may lag, never less).
    mass-hibernation
        Thousands of sessions fall quiet at the same moment (their one
        watcher, a single connection, goes away) and hibernate together,
        while a canary pings: ping p99 must stay under 50 ms.
    clock-jump
        The daemon runs under libfaketime (Debian's ``faketime``), whose
        wall clock is stepped while its monotonic clock keeps its pace. A
        step forward of an hour must have the reaper expire, within 3 s and
        unasked, a watched session and a hibernated one that became due (the
        watcher hears ``expired``), and nothing else; a step back must
        expire nothing early. Without libfaketime the row says "not run".

    create-flood, metadata-flood, watcher-flood
        One unauthenticated WebSocket creates sessions as fast as it can (ttl
        30 days) for 60 s (quick: 10 s); or with 900 KB of metadata each; or
        creates sessions and watches each. The daemon's RSS must grow by less
        than 100 MB and its disk by less than 50 MB, and a canary on the Unix
        socket must keep its ping p99 under 50 ms.
    half-frames
        Unix connections each send half of a 1 MiB frame and stop: every one
        must be closed after the read timeout.
    stalled-subscribers
        A writer of 200 KB values, three subscribers that never read: the
        connections' queues are bounded in bytes (RSS under 100 MB growth).
    connection-flood
        Thousands of TCP connections held open on the WebSocket port; the
        next client must be told 503 at once, not left to time out.

``--quick`` runs every case at a smaller size (under ~3 minutes in all).
"""

from __future__ import annotations

import attrs

__all__ = ["Row"]


@attrs.frozen
class Row:
    """One case's result: `outcome` is "held", "FAILED: ..." or "not run: ..."."""

    case: str
    done: str
    outcome: str
    figures: str

    @property
    def failed(self) -> bool:
        return self.outcome.startswith("FAILED")
