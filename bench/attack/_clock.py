"""The clock-jump case: the wall clock stepped under a running daemon.

The daemon runs under libfaketime (Debian's `faketime` package), which makes
the process's wall clock (`CLOCK_REALTIME`) the real one plus an offset read
from a file at every call, and leaves the monotonic clock alone: exactly a
machine whose clock is stepped (NTP, a suspended laptop waking) while trio's
timers keep their pace.
"""

from __future__ import annotations

import glob
import time
from pathlib import Path

import nexus_protocol as p

from .._client import NexusClient, ServerError
from . import Row
from ._daemon import DaemonProc

__all__ = ["clock_jump", "faketime_library"]

#: How soon after a forward step the reaper must have expired what is due: it
#: re-reads the wall clock at least once a second.
EXPIRY_BOUND = 3.0
#: How long the daemon is watched after a backward step for early expiries.
BACKWARD_WATCH = 3.0


def faketime_library() -> Path | None:
    """libfaketime's shared library, if the machine has it."""
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
    return Path(found[0]) if found else None


def _state(c: NexusClient, made: p.Created) -> str:
    """"there", or why the session cannot be read ("expired: …")."""
    try:
        got = c.request(p.Get(id=c.next_id(), session_id=made.session_id, token=made.token),
                        timeout=5)
    except ServerError as exc:
        return str(exc)
    return "there" if isinstance(got, p.StateReply) else repr(got)


def _watcher_told(watcher: NexusClient, timeout: float) -> bool:
    """Whether `watcher` hears `expired` within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    if any(isinstance(e, p.Expired) for e in watcher.events):
        return True
    try:
        while True:
            event = watcher._next(max(0.0, deadline - time.monotonic()))
            if isinstance(event, p.Expired):
                return True
    except (TimeoutError, ConnectionError):
        return False


def _create(c: NexusClient, ttl: float) -> p.Created:
    # An idle timeout longer than every step: only the lifetimes are judged.
    made = c.request(p.Create(id=c.next_id(), ttl=ttl, idle_timeout=3 * 3600.0))
    assert isinstance(made, p.Created)
    return made


def clock_jump(tmp: Path, quick: bool) -> Row:
    done = ("wall clock stepped +1 h under a running daemon (one session watched, one "
            "hibernated, both due in 30 min; one due in 2 h), then back by 1.5 h")
    library = faketime_library()
    if library is None:
        return Row("clock-jump", done,
                   "not run: libfaketime is not installed (apt-get install faketime); the "
                   "unit tests step an injected wall clock (tests/daemon/test_daemon_clock.py)",
                   "")
    offset = tmp / "wall-offset"
    offset.write_text("+0\n")
    d = DaemonProc(tmp, "--hibernate-after", "1s", env={
        "LD_PRELOAD": str(library), "FAKETIME_TIMESTAMP_FILE": str(offset),
        "FAKETIME_NO_CACHE": "1", "FAKETIME_DONT_FAKE_MONOTONIC": "1"}).serve()
    try:
        c = d.client()
        watched, _dormant, later = _create(c, 1800), _create(c, 1800), _create(c, 7200)
        watcher = d.client()
        watcher.request(p.Attach(id=watcher.next_id(), session_id=watched.session_id,
                                 token=watched.token))
        time.sleep(1.5)  # `dormant` hibernates: its deadline is the store's to keep
        if d.stats()["sessions_active"] != 1:
            return Row("clock-jump", done, "FAILED: the unwatched sessions did not hibernate",
                       "")

        # Nobody asks for the sessions after the step: the reaper must find
        # them due by itself, tell the watcher and delete both.
        offset.write_text("+3600\n")
        stepped = time.monotonic()
        reaped = None
        while time.monotonic() - stepped < EXPIRY_BOUND:
            if d.stats()["sessions_stored"] == 1:
                reaped = time.monotonic() - stepped
                break
            time.sleep(0.05)
        told = _watcher_told(watcher, timeout=max(0.1, EXPIRY_BOUND - (reaped or 0.0)))
        forward = (f"both reaped {1000 * reaped:.0f} ms after the step" if reaped is not None
                   else f"not reaped within {EXPIRY_BOUND:g} s")
        forward += f", watcher {'told' if told else 'not told'} 'expired'"
        later_then = _state(c, later)

        offset.write_text("-1800\n")
        fresh = _create(c, 60)
        time.sleep(BACKWARD_WATCH)
        backward = {"2 h session": _state(c, later), "new 60 s session": _state(c, fresh)}
        figures = (f"forward: {forward or 'nothing expired'}; 2 h session {later_then}; "
                   f"backward, {BACKWARD_WATCH:g} s later: "
                   + ", ".join(f"{k} {v}" for k, v in backward.items()))
        c.close()
        watcher.close()
        if reaped is None or not told:
            return Row("clock-jump", done,
                       f"FAILED: the due sessions were not expired within {EXPIRY_BOUND:g} s "
                       "of the step", figures)
        if later_then != "there":
            return Row("clock-jump", done, "FAILED: a session not yet due expired", figures)
        if any(v != "there" for v in backward.values()):
            return Row("clock-jump", done, "FAILED: a step back expired a session early",
                       figures)
        if not d.alive():
            return Row("clock-jump", done, "FAILED: the daemon exited", figures)
        return Row("clock-jump", done, "held", figures)
    finally:
        d.kill()
