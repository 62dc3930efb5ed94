"""The daemon: the store, the registry of session actors, the reaper and the
listeners, in one nursery tree, with an orderly shutdown.

Shutdown order: stop accepting; tell every client `shutdown` and let the
requests already in flight finish (within `shutdown_grace`); stop the
actors, each of which serves what its mailbox holds and writes its snapshot;
close the store.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
import ssl
import time
from pathlib import Path
from typing import Any

import attrs
import trio
from nexus_protocol import Limits

from . import __version__
from ._actor import ActorConfig
from ._clock import WallClock
from ._config import Config, ws_address
from ._crypto import KeyRingError
from ._handler import ConnectionHandler, Transport
from ._outbox import Flusher
from ._reaper import Reaper
from ._registry import Registry, SessionPolicy
from ._sqlite_store import SqliteStore, StoreError, open_sqlite_store
from ._store import MemoryStore, Store
from ._transports import StreamTransport, open_unix_listener, serve_ws

__all__ = ["Daemon", "open_store"]

log = logging.getLogger("nexusd")

#: In the data directory while a daemon serves it: its process id, so that
#: `nexusd keys rotate` can tell it to reload its keys.
PID_FILE = "nexusd.pid"


async def open_store(config: Config) -> Store:
    """The store the configuration asks for: SQLite in the data directory,
    encrypted at rest, or for durability "memory" nothing on disk at all.

    Raises:
        StoreError, KeyRingError: the store or its keys cannot be opened.
    """
    if config.durability == "memory":
        return MemoryStore(retention=config.retention)
    # The store reads its clock in its writer thread, where trio's clock (and
    # so `WallClock.now`) cannot be read: it gets the plain wall clock.
    return await open_sqlite_store(config.data, durability=config.durability,
                                   retention_events=config.retention, clock=time.time,
                                   wal_limit=config.wal_limit)


def read_or_create_admin_key(data: Path) -> str:
    """The admin key in DATA/admin.key, created (mode 0600) if missing."""
    path = data / "admin.key"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    data.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key


class Daemon:
    """A running nexusd. Start it with `nursery.start(daemon.run)`; the value
    reported is the daemon itself, with `socket_path` and `ws_port` bound."""

    def __init__(self, config: Config, *, store: Store | None = None) -> None:
        self.config = config
        self.limits = Limits(max_frame=config.max_frame, max_key=config.max_key,
                             max_depth=config.max_depth, max_patch=config.max_patch)
        self.server_name = f"nexusd/{__version__}"
        self.store: Store = store  # type: ignore[assignment]
        self.connections: dict[str, ConnectionHandler] = {}
        self.flusher = Flusher()
        self.socket_path: Path | None = None
        self.ws_port: int | None = None
        self.admin_key = config.admin_key
        self._stop = trio.Event()
        self.stopped = trio.Event()
        self._services: trio.Nursery | None = None
        self._no_connections = trio.Event()
        self._started_at = 0.0
        self._started_wall = 0.0
        self.registry: Registry
        self.reaper: Reaper

    def stop(self) -> None:
        """Begins the orderly shutdown; `run` returns when it is done."""
        self._stop.set()

    def check_admin_key(self, credential: str) -> bool:
        return self.admin_key is not None and hmac.compare_digest(
            credential.encode(), self.admin_key.encode())

    async def run(self, *, task_status: trio.TaskStatus[Daemon] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        config = self.config
        if self.admin_key is None and config.ws is not None:
            self.admin_key = read_or_create_admin_key(config.data)
        clock = WallClock()
        if self.store is None:
            self.store = await open_store(config)
        pid_file = config.data / PID_FILE if isinstance(self.store, SqliteStore) else None
        if pid_file is not None:
            pid_file.write_text(f"{os.getpid()}\n")
        self._started_at = trio.current_time()
        self._started_wall = time.time()
        try:
            async with trio.open_nursery() as actors:
                self.registry = Registry(
                    self.store, clock, self.limits,
                    SessionPolicy(config.default_ttl, config.max_ttl, config.default_idle),
                    ActorConfig(mailbox_size=config.mailbox_size,
                                hibernate_after=config.hibernate_after,
                                retention=config.retention, max_keys=config.max_keys,
                                max_ttl=config.max_ttl),
                    actors, self.flusher)
                self.reaper = self.registry.reaper = Reaper(self.registry, self.store, clock)
                async with trio.open_nursery() as services:
                    self._services = services
                    await services.start(self.reaper.run)
                    await services.start(self.registry.hibernate_quiet)
                    if isinstance(self.store, SqliteStore):
                        # After a key rotation, move data keys to the current
                        # master key; values are never rewritten.
                        services.start_soon(self._rewrap_keys, self.store)
                    async with trio.open_nursery() as connections:
                        async with trio.open_nursery() as listeners:
                            await self._listen(listeners, connections)
                            task_status.started(self)
                            await self._stop.wait()
                            log.info("shutting down: %d connections, %d active sessions",
                                     len(self.connections),
                                     self.registry.statistics().active)
                            listeners.cancel_scope.cancel()
                        await self._drain_connections()
                    services.cancel_scope.cancel()
                await self.registry.aclose()
        finally:
            with trio.move_on_after(30, shield=True):
                await self.store.aclose()
            if self.socket_path is not None:
                self.socket_path.unlink(missing_ok=True)
            if pid_file is not None:
                pid_file.unlink(missing_ok=True)
            self.stopped.set()
        log.info("stopped")

    def reload_keys_soon(self) -> None:
        """Starts `reload_keys` beside the daemon's other services."""
        if self._services is not None and not self._stop.is_set():
            self._services.start_soon(self.reload_keys)

    async def reload_keys(self) -> None:
        """Reads the master key ring again (after `nexusd keys rotate`) and
        re-wraps every session's data key under the current master key."""
        store = self.store
        if not isinstance(store, SqliteStore):
            log.info("no key ring to reload: durability is %s", self.config.durability)
            return
        try:
            ring = await store.reload_keyring(self.config.data)
        except (KeyRingError, StoreError) as exc:
            log.error("key ring not reloaded: %s", exc)
            return
        log.info("key ring reloaded; current master key %s", ring.current)
        await self._rewrap_keys(store)

    async def _rewrap_keys(self, store: SqliteStore) -> None:
        moved = await store.rewrap_keys()
        if moved:
            log.info("re-wrapped %d session keys under master key %s", moved,
                     store.keyring.current)

    async def _listen(self, listeners: trio.Nursery, connections: trio.Nursery) -> None:
        """Starts each listener in `listeners`; connections run in `connections`."""
        config = self.config

        async def handle(transport: Transport) -> None:
            handler = ConnectionHandler(self, transport)
            self.connections[handler.connection_id] = handler
            try:
                await handler.run()
            except Exception:
                # A bug in one connection must not take the others down.
                log.exception("%s: connection failed", handler.connection_id)
            finally:
                self.connections.pop(handler.connection_id, None)
                if not self.connections:
                    self._no_connections.set()

        async def handle_stream(stream: trio.SocketStream) -> None:
            await handle(StreamTransport(stream))

        async def serve_unix(listener: trio.SocketListener,
                             task_status: trio.TaskStatus[list[trio.SocketListener]]) -> None:
            await trio.serve_listeners(handle_stream, [listener],
                                       handler_nursery=connections, task_status=task_status)

        async def serve_websocket(host: str, port: int, tls: ssl.SSLContext | None,
                                  task_status: trio.TaskStatus[int]) -> None:
            await serve_ws(handle, host, port, max_frame=config.max_frame, ssl_context=tls,
                           handler_nursery=connections, task_status=task_status)

        if config.socket is not None:
            listener = await open_unix_listener(config.socket)
            self.socket_path = config.socket
            await listeners.start(serve_unix, listener)
            log.info("listening on unix:%s", config.socket)
        if config.ws is not None:
            host, port = ws_address(config.ws)
            tls = None
            if config.tls_cert is not None:
                tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
                tls.load_cert_chain(config.tls_cert, config.tls_key)
            self.ws_port = await listeners.start(serve_websocket, host, port, tls)
            scheme = "wss" if tls else "ws"
            log.info("listening on %s://%s:%d/", scheme, _bracket(host), self.ws_port)

    async def _drain_connections(self) -> None:
        for handler in list(self.connections.values()):
            handler.shutdown("the daemon is shutting down")
        with trio.move_on_after(self.config.shutdown_grace):
            while self.connections:
                self._no_connections = trio.Event()
                await self._no_connections.wait()
        for handler in list(self.connections.values()):
            handler.abort()

    async def stats(self) -> dict[str, Any]:
        r = self.registry.statistics()
        store_statistics = getattr(self.store, "statistics", None)  # a disk store's figures
        kinds: dict[str, int] = {}
        for h in self.connections.values():
            kinds[h.transport.kind] = kinds.get(h.transport.kind, 0) + 1
        return {
            "server": self.server_name,
            "pid": os.getpid(),
            "started_at": self._started_wall,
            "uptime_seconds": trio.current_time() - self._started_at,
            "durability": self.config.durability,
            "sessions_active": r.active,
            "sessions_stored": await self.store.count(),
            "sessions_created": r.created,
            "activations": r.activations,
            "hibernations": r.hibernations,
            "sessions_ended": r.ended,
            "connections": len(self.connections),
            "connections_by_transport": kinds,
            "subscribers": sum(a.subscriber_count for a in self.registry.actors()),
            "listening": {"unix": str(self.socket_path) if self.socket_path else None,
                          "ws_port": self.ws_port},
            "store": attrs.asdict(store_statistics()) if store_statistics else None,
        }

    def analytics(self) -> dict[str, Any]:
        return self.registry.analytics()


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host
