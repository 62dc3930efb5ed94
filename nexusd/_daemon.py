"""The daemon: the store, the registry of session actors, the reaper and the
listeners (Unix socket, WebSocket, HTTP), in one nursery tree, with an
orderly shutdown.

Shutdown order: stop accepting; tell every client `shutdown` (HTTP event
streams too) and let the requests already in flight finish (within
`shutdown_grace`); stop the actors, each of which serves what its mailbox
holds and writes its snapshot; close the store.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import resource
import ssl
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import trio
from nexus_protocol import Limits

from ._auth import new_admin_key
from ._bus import LocalBus
from ._clock import WallClock
from ._config import Config, ws_address
from ._limits import LimitSettings, PeerLimits
from ._origins import ANY, BrowserRules, listen_hosts, normalize_origin, own_origins
from ._reaper import Deadlines, Reaper
from ._registry import Registry, SessionPolicy
from ._service import SessionService
from ._version import __version__
from .cluster import ClusterNode, node_id, open_cluster
from .http import HttpChannel, HttpListener, HttpSettings, Metrics
from .session._actor import ActorConfig
from .session._analytics import ChannelAnalytics
from .session._commands import CommandLimits
from .session._insights import InsightSettings
from .store import KeyManagement, KeyRingError, Store, StoreError, open_store
from .store._crypto import load_keyring
from .transports._handler import ConnectionHandler, ConnectionSettings, Transport
from .transports._outbox import Flusher
from .transports._unix import open_unix_listener, serve_unix
from .transports._websocket import WebSocketSettings, serve_ws
from .workflows import RunPolicy, Workflows

__all__ = ["Daemon"]

log = logging.getLogger("nexusd")

#: In the data directory while a daemon serves it: its process id, so that
#: `nexusd keys rotate` can tell it to reload its keys.
PID_FILE = "nexusd.pid"
#: The index of workflow runs in flight, in the data directory.
RUNS_INDEX = "runs.json"
#: Descriptors kept out of `max_connections`: the store, listeners, logs.
SPARE_DESCRIPTORS = 256


def raise_descriptor_limit() -> int:
    """Raises the soft limit on open descriptors to the hard one; returns
    the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the descriptor limit from %d to %d: %s", soft, target,
                        exc)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_or_create_admin_key(data: Path, name: str = "admin.key") -> str:
    """The key in DATA/`name` (the admin key by default), created (mode 0600)
    if missing."""
    path = data / name
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    data.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = new_admin_key()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key


class Daemon:
    """A running nexusd. Start it with `nursery.start(daemon.run)`; the value
    reported is the daemon itself, with `socket_path`, `ws_port` and
    `http_port` bound."""

    def __init__(self, config: Config, *, store: Store | None = None,
                 wall: Callable[[], float] = time.time) -> None:
        """`wall` is the wall clock that deadlines are judged by (tests give
        one that follows trio's `MockClock`, or one that jumps)."""
        self.config = config
        self.wall = wall
        self.limits = Limits(max_frame=config.max_frame, max_key=config.max_key,
                             max_depth=config.max_depth, max_patch=config.max_patch)
        self.server_name = f"nexusd/{__version__}"
        self.store: Store = store  # type: ignore[assignment]
        self.cluster: ClusterNode | None = None
        self.connections: dict[str, ConnectionHandler] = {}
        self._connections_by_kind: Counter[str] = Counter()  # stats reads it; never sums
        self.flusher = Flusher()
        self.socket_path: Path | None = None
        self.ws_port: int | None = None
        self.http_port: int | None = None
        self.http: HttpChannel | None = None
        self.http_listener: HttpListener | None = None
        self.metrics = Metrics()
        self.admin_key = config.admin_key
        self._stop = trio.Event()
        self.stopped = trio.Event()
        self._services: trio.Nursery | None = None
        self._no_connections = trio.Event()
        self._started_at = 0.0
        self._started_wall = 0.0
        self.bus = LocalBus(retention=config.retention,
                            retention_bytes=config.retention_bytes)
        self.create_key = config.create_key
        self.peer_limits = PeerLimits(LimitSettings(
            max_connections=config.max_connections,
            max_connections_per_peer=config.max_connections_per_peer,
            create_rate=config.create_rate, create_burst=config.create_burst))
        self.insight = InsightSettings(
            long_session=config.insight_long_session,
            high_activity=config.insight_high_activity,
            many_channels=config.insight_many_channels,
            idle_warning=config.insight_idle_warning,
            expiry_warning=config.insight_expiry_warning,
            slow_workflow=config.insight_slow_workflow,
            success_rate=config.recommend_success_rate,
            avoid_for=config.recommend_avoid_for)
        self.analytics = ChannelAnalytics(self.insight)
        self.clock: WallClock  # made in `run`, from trio's clock
        self.registry: Registry
        self.reaper: Reaper
        self.service: SessionService

    def stop(self) -> None:
        """Begins the orderly shutdown; `run` returns when it is done."""
        self._stop.set()

    def check_admin_key(self, credential: str) -> bool:
        return self.admin_key is not None and hmac.compare_digest(
            credential.encode(), self.admin_key.encode())

    def check_create_key(self, credential: str) -> bool:
        return self.create_key is not None and hmac.compare_digest(
            credential.encode(), self.create_key.encode())

    def requires_create_key(self) -> bool:
        """Whether network clients need the create key to create sessions."""
        setting = self.config.require_create_key
        if setting != "auto":
            return setting == "always"
        return any(address is not None and not _loopback(ws_address(address)[0])
                   for address in (self.config.ws, self.config.http))

    def _bound_connections(self) -> None:
        """Raises the descriptor limit, and lowers `max_connections` to fit it."""
        nofile = raise_descriptor_limit()
        fits = max(nofile - SPARE_DESCRIPTORS, 1)
        settings = self.peer_limits.settings
        if settings.max_connections > fits:
            log.warning("max_connections lowered from %d to %d: the process may open %d "
                        "descriptors", settings.max_connections, fits, nofile)
            self.peer_limits.settings = attrs.evolve(settings, max_connections=fits)

    async def run(self, *, task_status: trio.TaskStatus[Daemon] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        config = self.config
        if self.store is not None or config.engine is None:
            await self._run(task_status)
            return
        config.data.mkdir(mode=0o700, parents=True, exist_ok=True)
        async with open_cluster(
                config.engine, prefix=config.engine_prefix, durability=config.durability,
                ring=load_keyring(config.data), retention=config.retention,
                lease=config.lease, limits=self.limits,
                forward_timeout=config.forward_timeout, queue_bytes=config.queue_bytes,
                replicas=config.engine_replicas, replica_timeout=config.replica_timeout,
                node=node_id(config.data)) as cluster:
            self.cluster = cluster
            self.store = cluster.store
            await self._run(task_status)

    async def _run(self, task_status: trio.TaskStatus[Daemon]) -> None:
        """`run`, on a store open (or to open)."""
        config = self.config
        if self.admin_key is None and (config.ws is not None or config.http is not None):
            self.admin_key = read_or_create_admin_key(config.data)
        if self.create_key is None and self.requires_create_key():
            self.create_key = read_or_create_admin_key(config.data, "create.key")
        self._bound_connections()
        clock = self.clock = WallClock(self.wall)
        if self.store is None:
            # The store reads its clock in its writer thread, where trio's clock
            # (and so `WallClock.now`) cannot be read: it gets the plain wall clock.
            self.store = await open_store(config.durability, config.data,
                                          retention=config.retention, clock=time.time,
                                          wal_limit=config.wal_limit)
        keys = self.store.keys
        pid_file = config.data / PID_FILE if keys is not None else None
        if pid_file is not None:
            pid_file.write_text(f"{os.getpid()}\n")
        self._started_at = trio.current_time()
        self._started_wall = time.time()
        self.analytics.restore(await self.store.load_analytics())
        try:
            async with trio.open_nursery() as actors:
                deadlines = Deadlines()
                self.registry = Registry(
                    store=self.store, clock=clock, bus=self.bus, batch=self.flusher,
                    analytics=self.analytics,
                    limits=CommandLimits(max_depth=config.max_depth,
                                         max_patch=config.max_patch,
                                         max_keys=config.max_keys, max_ttl=config.max_ttl,
                                         max_context=config.max_context,
                                         max_context_keys=config.max_context_keys,
                                         max_track=config.max_track,
                                         track_rate=config.track_rate,
                                         insight=self.insight),
                    max_frame=config.max_frame,
                    policy=SessionPolicy(
                        config.default_ttl, config.max_ttl, config.default_idle,
                        max_idle=config.max_idle, max_metadata=config.max_metadata,
                        max_sessions=config.max_sessions,
                        max_active=config.max_active_sessions,
                        max_memory=config.max_memory),
                    actor_config=ActorConfig(mailbox_size=config.mailbox_size,
                                             hibernate_after=config.hibernate_after),
                    schedule=deadlines.schedule, nursery=actors,
                    stored=await self.store.count(),
                    observe_flush=self.metrics.observe_flush, cluster=self.cluster)
                cluster = self.cluster
                self.reaper = Reaper(deadlines, self.registry, self.store, clock,
                                     dormant=None if cluster is None else lambda: cluster.reaper)
                self.service = SessionService(registry=self.registry, store=self.store,
                                              analytics=self.analytics, stats=self.stats,
                                              busy_timeout=config.busy_timeout,
                                              max_page=config.max_page,
                                              limits=self.peer_limits,
                                              workflows=self._workflows)
                async with trio.open_nursery() as services:
                    self._services = services
                    if cluster is not None:
                        await services.start(cluster.run, self.service, self.registry.let_go)
                    await services.start(self.reaper.run)
                    assert self.service.workflows is not None
                    await services.start(self.service.workflows.run)
                    await services.start(self.registry.hibernate_quiet)
                    await services.start(self.peer_limits.run)
                    await services.start(self.analytics.keep, self.store,
                                         config.analytics_save_every)
                    if keys is not None:
                        # After a key rotation, move data keys to the current
                        # master key; values are never rewritten.
                        services.start_soon(self._rewrap_keys, keys)
                    async with trio.open_nursery() as connections:
                        async with trio.open_nursery() as listeners:
                            await self._listen(listeners, connections)
                            if cluster is not None:
                                cluster.set_endpoints(self._endpoints())
                            task_status.started(self)
                            await self._stop.wait()
                            log.info("shutting down: %d connections, %d active sessions",
                                     len(self.connections),
                                     self.registry.statistics().active)
                            listeners.cancel_scope.cancel()
                        await self._drain_connections()
                    services.cancel_scope.cancel()
                await self.registry.aclose()
            # After the last commit: a clean restart gives the same figures.
            with trio.move_on_after(10, shield=True):
                await self.analytics.save(self.store)
            if self.cluster is not None:
                await self.cluster.leave()
        finally:
            if self.cluster is None:  # else `open_cluster` closes it
                with trio.move_on_after(30, shield=True):
                    await self.store.aclose()
            if self.socket_path is not None:
                self.socket_path.unlink(missing_ok=True)
            if pid_file is not None:
                pid_file.unlink(missing_ok=True)
            self.stopped.set()
        log.info("stopped")

    def _workflows(self, service: SessionService) -> Workflows:
        config = self.config
        # The index of runs in flight lives beside a store on disk, or in the
        # data directory of a daemon of a cluster (its runs are its own).
        on_disk = self.store.keys is not None or self.cluster is not None
        return Workflows(call=service.call, policy=RunPolicy(
            attempts=config.run_attempts, wait=config.run_wait, lease=config.run_lease,
            timeout=config.run_timeout, backoff=config.run_backoff,
            max_inputs=config.run_max_inputs),
            index=config.data / RUNS_INDEX if on_disk else None,
            fsync=config.durability == "power", clock=self.clock)

    def reload_keys_soon(self) -> None:
        """Starts `reload_keys` beside the daemon's other services."""
        if self._services is not None and not self._stop.is_set():
            self._services.start_soon(self.reload_keys)

    async def reload_keys(self) -> None:
        """Reads the master key ring again (after `nexusd keys rotate`) and
        re-wraps every session's data key under the current master key."""
        keys = self.store.keys
        if keys is None:
            log.info("no key ring to reload: durability is %s", self.config.durability)
            return
        try:
            current = await keys.reload()
        except (KeyRingError, StoreError) as exc:
            log.error("key ring not reloaded: %s", exc)
            return
        log.info("key ring reloaded; current master key %s", current)
        await self._rewrap_keys(keys)

    async def _rewrap_keys(self, keys: KeyManagement) -> None:
        moved = await keys.rewrap()
        if moved:
            log.info("re-wrapped %d session keys under master key %s", moved, keys.current)

    async def _listen(self, listeners: trio.Nursery, connections: trio.Nursery) -> None:
        """Starts each listener in `listeners`; connections run in `connections`."""
        config = self.config

        settings = ConnectionSettings(
            server_name=self.server_name, limits=self.limits,
            check_admin_key=self.check_admin_key, queue_size=config.queue_size,
            max_in_flight=config.max_in_flight, handshake_timeout=config.handshake_timeout,
            write_timeout=config.write_timeout, peer_limits=self.peer_limits,
            check_create_key=self.check_create_key,
            require_create_key=self.requires_create_key(), queue_bytes=config.queue_bytes,
            read_timeout=config.read_timeout, idle_timeout=config.idle_connection_timeout)

        async def handle(transport: Transport) -> None:
            handler = ConnectionHandler(self.service, settings, self.flusher, transport)
            self.connections[handler.connection_id] = handler
            self._connections_by_kind[transport.kind] += 1
            try:
                await handler.run()
            except Exception:
                # A bug in one connection must not take the others down.
                log.exception("%s: connection failed", handler.connection_id)
            finally:
                self._connections_by_kind[transport.kind] -= 1
                self.connections.pop(handler.connection_id, None)
                if not self.connections:
                    self._no_connections.set()

        async def serve_websocket(host: str, port: int, tls: ssl.SSLContext | None,
                                  task_status: trio.TaskStatus[int]) -> None:
            await serve_ws(handle, host, port,
                           websocket_settings(config, host, self.http_port),
                           ssl_context=tls, handler_nursery=connections,
                           limits=self.peer_limits,
                           task_status=task_status)

        if config.socket is not None:
            listener = await open_unix_listener(config.socket)
            self.socket_path = config.socket
            await listeners.start(partial(serve_unix, handle, listener,
                                          handler_nursery=connections,
                                          limits=self.peer_limits))
            log.info("listening on unix:%s", config.socket)
        # HTTP first: pages it serves may open a WebSocket, from an origin
        # that names the port it is bound to.
        if config.http is not None:
            await self._listen_http(config.http, listeners, connections)
        if config.ws is not None:
            host, port = ws_address(config.ws)
            tls = self._tls()
            self.ws_port = await listeners.start(serve_websocket, host, port, tls)
            scheme = "wss" if tls else "ws"
            log.info("listening on %s://%s:%d/", scheme, _bracket(host), self.ws_port)

    def _tls(self) -> ssl.SSLContext | None:
        config = self.config
        if config.tls_cert is None:
            return None
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(config.tls_cert, config.tls_key)
        return tls

    async def _listen_http(self, address: str, listeners: trio.Nursery,
                           connections: trio.Nursery) -> None:
        config = self.config
        host, port = ws_address(address, "http")
        listener = self.http_listener = HttpListener(
            self.peer_limits, keep_alive=config.http_keep_alive,
            max_header=config.max_request_head, handshake_timeout=config.handshake_timeout)
        settings = HttpSettings(
            server_name=self.server_name, limits=self.limits, max_body=config.http_max_body,
            read_timeout=config.read_timeout, sse_heartbeat=config.sse_heartbeat,
            sse_queue=config.sse_queue,
            sse_queue_bytes=config.sse_queue_bytes, write_timeout=config.write_timeout,
            check_admin_key=self.check_admin_key, check_create_key=self.check_create_key,
            require_create_key=self.requires_create_key())

        def make_app(bound_port: int) -> Any:
            self.http = HttpChannel(self.service, settings, self.metrics,
                                    browser_rules(config, host, bound_port), self.stats,
                                    listener.abort_client,
                                    mcp_max_sessions=config.mcp_max_sessions,
                                    mcp_idle_timeout=config.mcp_idle_timeout)
            return self.http.app

        tls = self._tls()
        self.http_port = await listeners.start(partial(
            listener.serve, make_app, host, port, tls, handler_nursery=connections))
        if self.http is not None and self.http.mcp is not None:
            assert self._services is not None
            await self._services.start(self.http.mcp.run)
        log.info("listening on %s://%s:%d/", listener.scheme, _bracket(host), self.http_port)

    def _endpoints(self) -> dict[str, Any]:
        """Where this daemon listens, as its cluster lease tells the others."""
        ws = http = None
        if self.config.ws is not None and self.ws_port is not None:
            scheme = "wss" if self.config.tls_cert else "ws"
            ws = f"{scheme}://{_bracket(ws_address(self.config.ws)[0])}:{self.ws_port}/"
        if self.config.http is not None and self.http_port is not None:
            scheme = "https" if self.config.tls_cert else "http"
            http = (f"{scheme}://{_bracket(ws_address(self.config.http, 'http')[0])}:"
                    f"{self.http_port}/")
        return {"pid": os.getpid(), "unix": str(self.socket_path) if self.socket_path else None,
                "ws": ws, "http": http}

    async def _drain_connections(self) -> None:
        for handler in list(self.connections.values()):
            handler.shutdown("the daemon is shutting down")
        http = self.http_listener
        if self.http is not None and http is not None:
            self.http.shutdown()
            await http.shutdown()
        with trio.move_on_after(self.config.shutdown_grace):
            while self.connections:
                self._no_connections = trio.Event()
                await self._no_connections.wait()
            if http is not None:
                await http.wait_closed()
        for handler in list(self.connections.values()):
            handler.abort()
        if http is not None:
            http.abort()

    async def stats(self) -> dict[str, Any]:
        """The daemon's figures; costs the same whatever the number of sessions
        and connections (counters kept as they change, and one store read)."""
        r = self.registry.statistics()
        store_statistics = getattr(self.store, "statistics", None)  # a disk store's figures
        lim = self.peer_limits.statistics()
        bus = self.bus.statistics()
        kinds = {kind: n for kind, n in self._connections_by_kind.items() if n}
        http = self.http_listener
        http_connections = http.statistics().connections if http is not None else 0
        if http_connections:
            kinds["http"] = http_connections
        return {
            "server": self.server_name,
            "pid": os.getpid(),
            "started_at": self._started_wall,
            "uptime_seconds": trio.current_time() - self._started_at,
            "durability": self.config.durability,
            **(self.service.workflows.statistics() if self.service.workflows else {}),
            "sessions_active": r.active,
            "sessions_stored": await self.store.count(),
            "sessions_created": r.created,
            "activations": r.activations,
            "hibernations": r.hibernations,
            "sessions_ended": r.ended,
            "sessions_ended_by": r.ended_by,
            "changes_published": bus.published,
            "lagged": bus.lagged,
            "connections": len(self.connections) + http_connections,
            "connections_by_transport": kinds,
            "subscribers": bus.subscribers,
            "limits": {
                "memory_bytes": r.memory,
                "history_bytes": bus.history_bytes,
                "sessions_made_room": r.made_room,
                "sessions_refused": r.refused,
                "creates_refused": lim.creates_refused,
                "connections_refused": lim.connections_refused,
                "peers_connected": lim.peers_connected,
                "protocol_errors": lim.protocol_errors,
                "protocol_errors_not_logged": lim.protocol_errors_not_logged,
            },
            "listening": {"unix": str(self.socket_path) if self.socket_path else None,
                          "ws_port": self.ws_port, "http_port": self.http_port},
            "store": attrs.asdict(store_statistics()) if store_statistics else None,
            "cluster": self.cluster.statistics() if self.cluster is not None else None,
        }


def browser_rules(config: Config, host: str, http_port: int | None = None) -> BrowserRules:
    """The allow-lists of a listener on `host`, WebSocket or HTTP alike.

    Pages may come from the origins of `allowed_origins` and from the
    daemon's own HTTP origin: `http_port` (default: the port `http` names)
    under each name the HTTP listener answers to. Browsers may name the
    daemon by the hosts of `allowed_hosts`, by default those `host` answers to.
    """
    hosts = frozenset(h.strip("[]").lower() for h in config.allowed_hosts)
    origins = {o if o == ANY else normalize_origin(o) for o in config.allowed_origins}
    if config.http is not None:
        http_host, configured_port = ws_address(config.http, "http")
        port = http_port or configured_port
        if port:
            scheme = "https" if config.tls_cert is not None else "http"
            names = hosts - {ANY} or listen_hosts(http_host) or {http_host}
            origins |= own_origins(scheme, names, port)
    return BrowserRules(frozenset(origins), hosts if hosts else listen_hosts(host))


def websocket_settings(config: Config, host: str, http_port: int | None = None
                       ) -> WebSocketSettings:
    """The WebSocket listener's bounds and allow-lists (`browser_rules`), for
    a listener on `host`."""
    rules = browser_rules(config, host, http_port)
    return WebSocketSettings(
        # One byte over the protocol's limit reaches the protocol, which
        # answers `too_large`; longer messages are refused unread.
        max_message=config.max_frame + 1, max_request=config.max_request_head,
        handshake_timeout=config.handshake_timeout, read_timeout=config.read_timeout,
        ping_interval=config.ws_ping_interval, allowed_origins=rules.origins,
        allowed_hosts=rules.hosts)


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host
