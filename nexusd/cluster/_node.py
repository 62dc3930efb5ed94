"""This daemon as one of several sharing a Redis engine.

The node joins the cluster (its epoch and lease: `Membership`), links to the
other daemons (`Link`) and forwards requests for sessions another daemon owns
(`Forwarder`); the registry asks it who owns a session (`acquire`) and hands
it what must be forwarded. See README "Scale out".
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Final

import trio
from coredis.tokens import PureToken
from nexus_protocol import Limits

from .._principal import Principal
from ..session._mailbox import Envelope
from ..store import KeyRing, RedisStore, StoreError, open_redis_store
from ._forward import Forwarder, Service
from ._link import Link, LinkSeal
from ._membership import Membership

__all__ = ["ClusterNode", "node_id", "open_cluster"]

log = logging.getLogger("nexusd.cluster")

#: Check values of the master keys the cluster's data is sealed under: a
#: daemon whose ring lacks them would seal what the others cannot open.
_KEYS_FIELD: Final = "keys"
#: In the data directory: this daemon's node id (see `node_id`).
NODE_FILE: Final = "node"
#: How often a request for a session whose owner is gone asks whether its
#: lease has lapsed, and how much longer than a lease it waits for that.
_TAKEOVER_POLL: Final = 0.05
_TAKEOVER_SLACK: Final = 0.5
#: Sessions whose owner elsewhere a daemon remembers (forwarding without a
#: lookup in Redis); the oldest are forgotten past it.
_OWNERS_KEPT: Final = 100_000
#: Epochs a daemon tries before it gives up finding one no live daemon holds.
_EPOCH_TRIES: Final = 16


class ClusterNode:
    """See the module's docstring. `lease` is how long a daemon that stops
    renewing keeps its sessions; `forward_timeout` how long a forwarded
    request waits for its owner; `queue_bytes` how much may wait to be sent
    to one daemon."""

    def __init__(self, store: RedisStore, ring: KeyRing, *, lease: float, limits: Limits,
                 forward_timeout: float, queue_bytes: int,
                 endpoints: dict[str, Any] | None = None) -> None:
        self.store = store
        self._epoch = store.epoch
        self.lease = lease
        self.link = Link(store.client, store.prefix, store.epoch, LinkSeal(ring, store.prefix),
                         deliver=self._deliver, gone=self._gone, lost=self._lost,
                         reset=self._reset)
        self.forwarder = Forwarder(self.link, limits=limits, timeout=forward_timeout,
                                   queue_bytes=queue_bytes, retry_after=lease,
                                   on_moved=self._moved)
        # Session -> the daemon last found owning it, oldest first.
        self._owners: dict[str, int] = {}
        self.membership = Membership(store.client, store.prefix, store.epoch, lease=lease,
                                     endpoints=endpoints or {}, peers=self.forwarder.peers,
                                     gone=self._gone, alive=self.forwarder.alive)

    @property
    def epoch(self) -> int:
        return self._epoch

    def set_endpoints(self, endpoints: dict[str, Any]) -> None:
        """Where this daemon listens, as its lease tells the others."""
        self.membership.endpoints = endpoints

    # -------------------------------------------------- the registry's side

    async def acquire(self, session_id: str) -> int | None:
        """The session's owner, made this daemon if no live daemon holds it.
        An owner found gone whose lease has not lapsed yet is waited for (a
        lease at most): the request is then served here, not failed."""
        self._owners.pop(session_id, None)
        give_up = None
        while True:
            owner = await self.store.acquire(session_id)
            if owner is None or owner == self._epoch:
                return owner
            if not self.forwarder.gone(owner):
                self._remember(session_id, owner)
                return owner
            now = trio.current_time()
            give_up = now + self.lease + _TAKEOVER_SLACK if give_up is None else give_up
            if now >= give_up:
                return owner
            await trio.sleep(_TAKEOVER_POLL)

    async def release(self, session_id: str) -> None:
        await self.store.release(session_id)

    def forward(self, owner: int, item: Envelope) -> None:
        if self.forwarder.forwarded_here(item):
            self.forwarder.moved(item, owner)  # its sender sends it on
        else:
            self.forwarder.forward(owner, item)

    def _moved(self, session_id: str, owner: int) -> None:
        if owner == self._epoch:
            self._owners.pop(session_id, None)
        else:
            self._remember(session_id, owner)

    def owner_of(self, session_id: str, item: Envelope) -> int | None:
        """The daemon last found owning the session, unless it was found gone
        since. It may have let the session go meanwhile (hibernated): it then
        takes it again to serve what it is sent, or sends it back (`MOVED`,
        and this daemon learns the owner). None for a request another daemon
        forwarded here: that one is served here or sent back, never on."""
        if self.forwarder.forwarded_here(item):
            return None
        owner = self._owners.get(session_id)
        if owner is not None and self.forwarder.gone(owner):
            del self._owners[session_id]
            return None
        return owner

    def _remember(self, session_id: str, owner: int) -> None:
        owners = self._owners
        owners[session_id] = owner
        if len(owners) > _OWNERS_KEPT:
            del owners[next(iter(owners))]  # the oldest

    def disconnect(self, principal: Principal) -> None:
        self.forwarder.disconnect(principal)

    # ----------------------------------------------------------- the rest

    def _deliver(self, sender: int, frame: list[Any]) -> None:
        self.forwarder.deliver(sender, frame)

    def _gone(self, epoch: int, undelivered: list[list[Any]] | None = None) -> None:
        self.forwarder.owner_gone(epoch, undelivered)

    def _lost(self, epoch: int, frames: list[list[Any]]) -> None:
        self.forwarder.lost(epoch, frames)

    def _reset(self) -> None:
        self.forwarder.reset()

    @property
    def reaper(self) -> bool:
        """Whether this daemon looks for dormant sessions past their deadline
        (one daemon of the cluster at a time)."""
        return self.membership.reaper

    def holds_lease(self) -> bool:
        """Whether this daemon's lease is surely held (see `Membership`)."""
        return trio.current_time() < self.membership.held_until

    async def run(self, service: Service, let_go: Callable[[], None], *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Joins, links and forwards until cancelled; `let_go()` is called
        when this daemon finds its lease had lapsed (every session it has
        may have been taken over)."""
        self.membership.lapsed = let_go
        async with trio.open_nursery() as nursery:
            await nursery.start(self.membership.run)
            await nursery.start(self.link.run)
            await nursery.start(self.forwarder.run, service)
            log.info("cluster: joined as daemon %d (lease %g s)", self._epoch, self.lease)
            task_status.started()

    async def leave(self) -> None:
        """Gives up this daemon's lease: the others take its sessions at once."""
        try:
            with trio.move_on_after(5, shield=True):
                await self.membership.leave()
        except Exception as exc:
            log.warning("cluster: cannot give up the lease (it lapses by itself): %s", exc)

    def statistics(self) -> dict[str, Any]:
        return {"epoch": self._epoch, "reaper": self.reaper, "lease_seconds": self.lease,
                **self.forwarder.statistics(), "link": self.link.statistics.as_dict()}


async def claim_epoch(store: RedisStore, lease: float) -> None:
    """Makes sure no live daemon has the store's epoch (Redis may have lost
    the counter's last increments: a restart without fsync, a replica
    promoted), taking the next one while it does; holds its lease.

    Raises:
        StoreError: no free epoch in a few tries.
    """
    for _ in range(_EPOCH_TRIES):
        claimed = await store.client.set(f"{store.prefix}:live:{store.epoch}", "{}",
                                         px=max(int(lease * 1000), 1), condition=PureToken.NX)
        if claimed:
            return
        log.warning("cluster: epoch %d is held by a live daemon; taking another", store.epoch)
        store.use_epoch(int(await store.client.incr(f"{store.prefix}:epoch")))
    raise StoreError(f"no free epoch in {_EPOCH_TRIES} tries: is {store.prefix}:epoch being "
                     "reset?")


def node_id(data: Path) -> str:
    """The id of the daemon that runs on data directory `data`, made (and
    kept in DATA/node) on its first start: what is this daemon's own in
    Redis across its restarts (its analytics)."""
    path = data / NODE_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        node = secrets.token_hex(8)
        path.write_text(node + "\n")
        return node


async def check_key_ring(store: RedisStore, ring: KeyRing) -> None:
    """Refuses a key ring that is not the cluster's, and records its keys.

    Raises:
        StoreError: data in Redis was sealed under master keys this ring
            does not hold.
    """
    key = f"{store.prefix}:{_KEYS_FIELD}"
    stored: dict[bytes, bytes] = await store.client.hgetall(key)
    known = {kid.decode(): value for kid, value in stored.items()}
    missing = [kid for kid in known if kid not in ring]
    wrong = [kid for kid, value in known.items()
             if kid in ring and not ring.verify_check_value(kid, value)]
    if wrong or (known and len(missing) == len(known)):
        raise StoreError(
            "this daemon's key ring is not the one the other daemons seal sessions with "
            f"(Redis holds data under master keys {', '.join(sorted(known))}); give every "
            "daemon the same ring: copy DATA/keys.json, or set $NEXUSD_MASTER_KEYS")
    if missing:
        log.warning("cluster: the key ring lacks master keys %s that other daemons "
                    "used; sessions sealed under them cannot be read here",
                    ", ".join(sorted(missing)))
    for kid in ring.ids:
        if kid not in known:
            await store.client.hsetnx(key, kid, ring.check_value(kid))


@contextlib.asynccontextmanager
async def open_cluster(url: str, *, prefix: str, durability: str, ring: KeyRing,
                       retention: int, lease: float, limits: Limits, forward_timeout: float,
                       queue_bytes: int, replicas: int = 0, replica_timeout: float = 1.0,
                       node: str = "0") -> AsyncIterator[ClusterNode]:
    """Opens the Redis engine at `url` and makes this daemon a node of its
    cluster (joined by `ClusterNode.run`); closes the engine on the way out.
    `node` names this daemon across its restarts (see `node_id`).

    Raises:
        StoreError: Redis cannot be used (see `open_redis_store`), or the key
            ring is not the cluster's.
    """
    store = await open_redis_store(url, durability=durability, keyring=ring,
                                   retention_events=retention, prefix=prefix)
    store.replicas, store.replica_timeout, store.node = replicas, replica_timeout, node
    try:
        await claim_epoch(store, lease)
        await check_key_ring(store, ring)
        if replicas:
            info = await store.client.info("replication")
            connected = int(str(info.get("connected_slaves", 0)))
            if connected < replicas:
                log.warning("cluster: Redis has %d replicas connected; writes wait for %d "
                            "(--engine-replicas) and fail until they connect",
                            connected, replicas)
        yield ClusterNode(store, ring, lease=lease, limits=limits,
                          forward_timeout=forward_timeout, queue_bytes=queue_bytes)
    finally:
        # Where it was opened: the Redis client's task group is exited at
        # the depth it was entered.
        await store.aclose()
