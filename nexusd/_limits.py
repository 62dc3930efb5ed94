"""Per-peer limits for untrusted clients: connections, the create bucket, and
the rate at which their protocol errors reach the log.

A peer is who a limit applies to: over the network the client's IP address
(every port of it, every channel: WebSocket, HTTP), over the Unix socket its
uid. Every channel asks the same `PeerLimits`:

- `admit_connection(peer)` before serving a connection (False: refuse it at
  once with `busy`), and `release_connection(peer)` when it ends;
- `allow_create(peer)` before creating a session (False: answer `busy`);
- `protocol_error(peer, connection_id, message)` for each protocol error: it
  is counted, and logged unless the peer (or everyone together) has had its
  share of log lines this interval; what was not logged is summed up in one
  line per interval.

Memory is bounded whatever the number of peers: per-peer connection counts
exist only while a peer has connections, and create buckets and log
counters are kept for at most `MAX_PEERS` peers (a forgotten bucket is a
full one).
"""

from __future__ import annotations

import ipaddress
import logging
import math
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import Final

import attrs
import trio

__all__ = ["LimitSettings", "LimitStatistics", "Peer", "PeerLimits", "peer_of_address",
           "peer_of_uid"]

log = logging.getLogger("nexusd.limits")

#: Peers whose create bucket and log counter are remembered.
MAX_PEERS: Final = 65_536


@attrs.frozen(slots=True)
class Peer:
    """Who a connection comes from. `name` is the key limits are kept by;
    `network` is false for the Unix socket (whose permissions decide who
    connects), `loopback` true for a network peer on this machine."""

    name: str
    network: bool = True
    loopback: bool = False


def peer_of_address(host: str) -> Peer:
    """The peer for a network client at IP address `host`."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return Peer(host)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return Peer(str(address), loopback=address.is_loopback)


def peer_of_uid(uid: int | None) -> Peer:
    """The peer for a Unix-socket client running as `uid` (None: unknown)."""
    return Peer(f"uid:{'?' if uid is None else uid}", network=False, loopback=True)


@attrs.frozen
class LimitSettings:
    """`max_connections` counts every connection; Unix-socket connections of
    the daemon's own user get `admin_reserve` more, so that an operator can
    still look in during a flood. `max_connections_per_peer` applies to
    network peers. `create_rate` (per second) and `create_burst` shape each
    network peer's create bucket. A peer's first `log_per_peer` protocol
    errors in each `log_interval` are logged, at most `log_per_interval`
    lines in all."""

    max_connections: int = 10_000
    max_connections_per_peer: int = 1_000
    admin_reserve: int = 32
    create_rate: float = 10.0
    create_burst: int = 100
    log_interval: float = 10.0
    log_per_peer: int = 3
    log_per_interval: int = 20


@attrs.frozen
class LimitStatistics:
    connections: int
    peers_connected: int
    connections_refused: int
    creates_refused: int
    protocol_errors: int
    protocol_errors_not_logged: int


class PeerLimits:
    """The per-peer accounting of one daemon; see the module's docstring."""

    def __init__(self, settings: LimitSettings,
                 clock: Callable[[], float] = trio.current_time) -> None:
        self.settings = settings
        self._clock = clock
        self._connections = 0
        self._by_peer: Counter[str] = Counter()
        # peer -> [tokens, when last filled], least recently used first.
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()
        self._connections_refused = 0
        self._creates_refused = 0
        self._protocol_errors = 0
        self._not_logged_total = 0
        # The current log interval: its start, lines logged, per-peer counts
        # (bounded by MAX_PEERS), and what was not logged.
        self._window = -math.inf  # the first error opens the first interval
        self._lines = 0
        self._errors_by_peer: Counter[str] = Counter()
        self._not_logged: Counter[str] = Counter()

    def statistics(self) -> LimitStatistics:
        return LimitStatistics(self._connections, len(self._by_peer),
                               self._connections_refused, self._creates_refused,
                               self._protocol_errors, self._not_logged_total)

    # ---------------------------------------------------------- connections

    def admit_connection(self, peer: Peer, *, admin: bool = False) -> bool:
        """Counts a new connection from `peer`; False (counting nothing) if
        it is over a limit. `admin`: the daemon's own user over the Unix
        socket, who may use the reserve."""
        s = self.settings
        ceiling = s.max_connections + (s.admin_reserve if admin and not peer.network else 0)
        if self._connections >= ceiling or (
                peer.network and self._by_peer[peer.name] >= s.max_connections_per_peer):
            self._connections_refused += 1
            return False
        self._connections += 1
        self._by_peer[peer.name] += 1
        return True

    def release_connection(self, peer: Peer) -> None:
        """A connection `admit_connection` counted has ended."""
        self._connections -= 1
        left = self._by_peer[peer.name] - 1
        if left > 0:
            self._by_peer[peer.name] = left
        else:
            del self._by_peer[peer.name]

    # --------------------------------------------------------------- create

    def allow_create(self, peer: Peer) -> bool:
        """Takes one token from `peer`'s create bucket; False if it is empty.
        Peers over the Unix socket are not limited here."""
        if not peer.network:
            return True
        s, now = self.settings, self._clock()
        bucket = self._buckets.get(peer.name)
        if bucket is None:
            bucket = self._buckets[peer.name] = [float(s.create_burst), now]
            if len(self._buckets) > MAX_PEERS:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(peer.name)
            bucket[0] = min(float(s.create_burst), bucket[0] + (now - bucket[1]) * s.create_rate)
            bucket[1] = now
        if bucket[0] < 1.0:
            self._creates_refused += 1
            return False
        bucket[0] -= 1.0
        return True

    def create_retry_after(self, peer: Peer) -> float:
        """Seconds until `peer`'s bucket holds a token again."""
        bucket = self._buckets.get(peer.name)
        missing = 1.0 - (bucket[0] if bucket is not None else 1.0)
        return max(missing, 0.0) / self.settings.create_rate

    # ------------------------------------------------------------------ log

    def protocol_error(self, peer: Peer, connection_id: str, message: str) -> None:
        """Counts a protocol error from `peer`; logs it unless its share of
        lines for this interval is spent."""
        self._protocol_errors += 1
        self._roll()
        s = self.settings
        seen = self._errors_by_peer[peer.name]
        if seen < s.log_per_peer and self._lines < s.log_per_interval:
            if len(self._errors_by_peer) <= MAX_PEERS:
                self._errors_by_peer[peer.name] = seen + 1
            self._lines += 1
            log.info("%s (%s): protocol error: %s", connection_id, peer.name, message)
            return
        self._not_logged_total += 1
        if peer.name in self._not_logged or len(self._not_logged) < MAX_PEERS:
            self._not_logged[peer.name] += 1
        else:
            self._not_logged["others"] += 1

    def _roll(self) -> None:
        """Starts a new log interval if the current one is over, summing up
        what it did not log in one line."""
        now = self._clock()
        if now - self._window < self.settings.log_interval:
            return
        self.summarize()
        self._window = now
        self._lines = 0
        self._errors_by_peer.clear()

    def summarize(self) -> None:
        """Logs one line for the protocol errors not logged so far, if any."""
        if not self._not_logged:
            return
        total = sum(self._not_logged.values())
        worst = ", ".join(f"{name} {n}" for name, n in self._not_logged.most_common(3))
        log.warning("%d protocol errors from %d peers not logged (most: %s)", total,
                    len(self._not_logged), worst)
        self._not_logged.clear()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Writes the summary line at the end of each interval, even when the
        errors have stopped."""
        task_status.started()
        while True:
            await trio.sleep(self.settings.log_interval)
            self._roll()
