"""A daemon's membership of the cluster: its lease, and the others' liveness.

A daemon joins with an *epoch*, a number no other daemon ever had (`INCR`),
which is also its fencing token: a session's hash names the epoch of its
owner, and every write to the session checks it. The daemon keeps the key
``P:live:<epoch>`` alive, renewing it every third of the lease; when it
stops renewing (it died, hangs, or lost Redis) the key expires and any other
daemon may take its sessions over. The key holds the daemon's endpoints, for
people and tools (`nexus status`).

The same loop checks the daemons this one deals with (owners it forwards to,
daemons whose clients it serves) and reports each whose key is gone, and
holds the reaper's lease: one daemon at a time looks for dormant sessions
past their deadline.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable
from typing import Any, Final

import trio

__all__ = ["Membership"]

log = logging.getLogger("nexusd.cluster")

#: Renews (or takes) the reaper's lease if it is free or ours; 1 if we hold it.
_REAPER_SCRIPT: Final = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

#: Deletes a key only if it holds the value given (our lease, not a successor's).
_RELEASE_SCRIPT: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Membership:
    """See the module's docstring. `peers()` names the daemons to check;
    `gone(epoch)` is called for each whose lease has lapsed, `alive(epoch)`
    for each whose lease is held; `lapsed()` when this daemon finds its own
    lease had lapsed (it was paused, or cut off from Redis, past the lease)."""

    def __init__(self, client: Any, prefix: str, epoch: int, *, lease: float,
                 endpoints: dict[str, Any], peers: Callable[[], Iterable[int]],
                 gone: Callable[[int], None], alive: Callable[[int], None],
                 lapsed: Callable[[], None] = lambda: None) -> None:
        self._client = client
        self._prefix = prefix
        self.epoch = epoch
        self.lease = lease
        self.endpoints = endpoints
        self._peers = peers
        self._gone = gone
        self._alive = alive
        self.lapsed = lapsed
        #: Until when (trio's clock) the lease is surely held: a lease from
        #: the last renewal sent, not answered.
        self.held_until = -math.inf
        self.reaper = False  # whether this daemon holds the reaper's lease
        self._last_renewed = 0.0
        self._failing = False
        self._reaper_script = client.register_script(_REAPER_SCRIPT)
        self._release_script = client.register_script(_RELEASE_SCRIPT)

    def live_key(self, epoch: int) -> str:
        return f"{self._prefix}:live:{epoch}"

    @property
    def _value(self) -> str:
        return json.dumps({"epoch": self.epoch, **self.endpoints}, sort_keys=True)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Holds the lease until cancelled; started once it is held."""
        await self._renew()
        task_status.started()
        while True:
            await trio.sleep(self.lease / 3)
            try:
                await self._renew()
                await self._check_peers()
                self._failing = False
            except Exception as exc:
                if not self._failing:
                    log.warning("cluster: cannot renew this daemon's lease: %s", exc)
                    self._failing = True
                if trio.current_time() - self._last_renewed > self.lease:
                    self.reaper = False

    async def _renew(self) -> None:
        ms = max(int(self.lease * 1000), 1)
        sent = trio.current_time()
        before = await self._client.set(self.live_key(self.epoch), self._value, px=ms, get=True)
        self.held_until = sent + self.lease
        if before is None and self._last_renewed:
            # Paused or cut off past the lease: sessions taken over meanwhile
            # refuse this daemon's writes (their owner is another epoch now),
            # and their readers here must go to the new owner.
            log.warning("cluster: this daemon's lease had lapsed; renewed it")
            self.lapsed()
        self._last_renewed = sent
        self.reaper = bool(await self._reaper_script(keys=[f"{self._prefix}:reaper"],
                                                     args=[str(self.epoch), ms]))

    async def _check_peers(self) -> None:
        peers = sorted(set(self._peers()) - {self.epoch})
        if not peers:
            return
        async with self._client.pipeline(transaction=False) as pipe:
            found = [(epoch, pipe.exists([self.live_key(epoch)])) for epoch in peers]
        for epoch, exists in found:
            if await exists:
                self._alive(epoch)
            else:
                log.info("cluster: daemon %d is gone (its lease lapsed)", epoch)
                self._gone(epoch)

    async def leave(self) -> None:
        """Gives up the lease (and the reaper's): the others take over at once."""
        me = str(self.epoch)
        await self._release_script(keys=[f"{self._prefix}:reaper"], args=[me])
        await self._client.delete([self.live_key(self.epoch)])
        self.reaper = False
