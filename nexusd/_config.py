"""Configuration: embedded defaults, then a TOML file, then NEXUSD_* environment
variables, then command-line flags, each overriding the one before."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import attrs
from nexus_protocol import DEFAULT_WS_HOST, DEFAULT_WS_PORT, default_socket_path, default_state_dir

from .store import DURABILITIES

__all__ = ["DURATIONS", "FIELDS", "Config", "ConfigError", "default_config_path", "load_config",
           "parse_duration"]


class ConfigError(ValueError):
    """A setting that cannot be used; the message names it."""


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str | float | int) -> float:
    """Seconds from ``90``, ``1.5``, ``250ms``, ``90s``, ``30m``, ``2h`` or ``7d``.

    Raises:
        ConfigError: not a duration.
    """
    if isinstance(text, int | float) and not isinstance(text, bool):
        return float(text)
    s = str(text).strip().lower()
    for unit in ("ms", "s", "m", "h", "d"):
        if s.endswith(unit):
            number, scale = s[: -len(unit)], _UNITS[unit]
            break
    else:
        number, scale = s, 1.0
    try:
        value = float(number) * scale
    except ValueError:
        raise ConfigError(f"{text!r} is not a duration (e.g. 90s, 30m, 2h, 7d)") from None
    if value != value or value < 0:
        raise ConfigError(f"{text!r} is not a duration (e.g. 90s, 30m, 2h, 7d)")
    return value


def _duration(value: Any) -> float:
    return parse_duration(value)


def _optional_duration(value: Any) -> float | None:
    if value is None or str(value).lower() in ("", "none", "off", "0"):
        return None
    return parse_duration(value)


def _names(value: Any) -> tuple[str, ...]:
    """A list setting: a TOML array, or one string of comma-separated items."""
    items = value.split(",") if isinstance(value, str) else list(value)
    return tuple(str(item).strip() for item in items if str(item).strip())


def _home() -> str:
    return os.path.expanduser("~")


@attrs.frozen
class Config:
    """Every setting of the daemon. Durations are in seconds."""

    socket: Path | None = attrs.field(
        factory=lambda: Path(default_socket_path(os.environ, _home())),
        metadata={"help": "Unix socket path, or 'off'"})
    ws: str | None = attrs.field(
        default=f"{DEFAULT_WS_HOST}:{DEFAULT_WS_PORT}",
        metadata={"help": "WebSocket listen address HOST:PORT (port 0: any free port), or 'off'"})
    http: str | None = attrs.field(
        default="127.0.0.1:8000",
        metadata={"help": "HTTP listen address HOST:PORT (port 0: any free port), or 'off'"})
    data: Path = attrs.field(
        factory=lambda: Path(default_state_dir(os.environ, _home())),
        metadata={"help": "data directory (store, keys, admin key)"})
    durability: str = attrs.field(
        default="process",
        metadata={"choices": DURABILITIES,
                  "help": "when a write is acknowledged: process (in the OS: survives "
                          "kill -9 of the daemon), power (fsync'd: survives power loss), "
                          "memory (nothing on disk); with --engine, what Redis's "
                          "persistence must guarantee (appendonly for process, and "
                          "appendfsync always for power)"})
    engine: str | None = attrs.field(
        default=None, repr=False,
        metadata={"help": "where sessions live: off (the embedded store in DATA) or a Redis "
                          "URL, redis://[:PASSWORD@]HOST:PORT/DB or rediss://, shared by "
                          "several daemons (README \"Scale out\")"})
    engine_prefix: str = attrs.field(
        default="nexus",
        metadata={"help": "with --engine redis: the prefix of every key the daemons keep in "
                          "Redis (clusters sharing one Redis need one each)"})
    engine_replicas: int = attrs.field(
        default=0,
        metadata={"help": "with --engine redis: how many of Redis's replicas must hold a write "
                          "before it is acknowledged (WAIT); 0: the primary alone"})
    replica_timeout: float = attrs.field(
        default=1.0, converter=_duration,
        metadata={"help": "with --engine-replicas: how long a write waits for its replicas; "
                          "past it the write is answered unavailable (it may survive)"})
    lease: float = attrs.field(
        default=1.5, converter=_duration,
        metadata={"help": "with --engine redis: how long a daemon that stops renewing its "
                          "lease (it died) keeps its sessions before another takes them over"})
    forward_timeout: float = attrs.field(
        default=10.0, converter=_duration,
        metadata={"help": "with --engine redis: how long a request forwarded to the daemon "
                          "that owns its session waits for the answer before `unavailable`"})
    admin_key: str | None = attrs.field(
        default=None, repr=False,
        metadata={"help": "WebSocket and HTTP admin credential "
                          "(default: DATA/admin.key, made on first start)"})
    tls_cert: Path | None = attrs.field(
        default=None, metadata={"help": "certificate chain for wss:// and https://"})
    tls_key: Path | None = attrs.field(
        default=None, metadata={"help": "private key for wss:// and https://"})
    max_frame: int = attrs.field(default=1 << 20, metadata={"help": "largest frame body, bytes"})
    max_key: int = attrs.field(default=256, metadata={"help": "longest key, UTF-8 bytes"})
    max_depth: int = attrs.field(default=32, metadata={"help": "deepest nesting in a value"})
    max_patch: int = attrs.field(default=256, metadata={"help": "most keys in one patch"})
    max_keys: int = attrs.field(default=10_000, metadata={"help": "most keys in one session"})
    default_ttl: float = attrs.field(default=86400.0, converter=_duration,
                                     metadata={"help": "session lifetime when create gives none"})
    max_ttl: float = attrs.field(default=30 * 86400.0, converter=_duration,
                                 metadata={"help": "longest session lifetime allowed"})
    default_idle: float | None = attrs.field(
        default=3600.0, converter=_optional_duration,
        metadata={"help": "idle timeout when create gives none ('off': none)"})
    hibernate_after: float = attrs.field(
        default=60.0, converter=_duration,
        metadata={"help": "unwatched sessions leave memory after this long without traffic"})
    retention: int = attrs.field(default=1000,
                                 metadata={"help": "changes kept per session for resume"})
    mailbox_size: int = attrs.field(default=64,
                                    metadata={"help": "requests queued per session actor"})
    queue_size: int = attrs.field(
        default=1024, metadata={"help": "frames queued per connection before a watcher lags"})
    max_in_flight: int = attrs.field(default=256,
                                     metadata={"help": "unanswered requests per connection"})
    busy_timeout: float = attrs.field(
        default=5.0, converter=_duration,
        metadata={"help": "wait for a full session mailbox before answering busy"})
    handshake_timeout: float = attrs.field(
        default=10.0, converter=_duration,
        metadata={"help": "time allowed for hello (and before it, the WebSocket upgrade)"})
    ws_ping_interval: float | None = attrs.field(
        default=20.0, converter=_optional_duration,
        metadata={"help": "ping a WebSocket client silent this long, and close it if it "
                          "stays silent as long again ('off': never)"})
    allowed_origins: tuple[str, ...] = attrs.field(
        default=(), converter=_names,
        metadata={"help": "web pages that may open a WebSocket or write over HTTP, besides "
                          "the daemon's own HTTP origin: comma-separated origins "
                          "(https://app.example:8443) or '*'; clients that send no "
                          "Origin (programs, not pages) are always allowed"})
    allowed_hosts: tuple[str, ...] = attrs.field(
        default=(), converter=_names,
        metadata={"help": "host names browsers may reach the daemon by (the Host header, "
                          "WebSocket and HTTP), comma-separated, or '*'; default: the "
                          "address each listener listens on "
                          "(every loopback name for a loopback address; any name for "
                          "0.0.0.0 or ::)"})
    write_timeout: float = attrs.field(
        default=30.0, converter=_duration,
        metadata={"help": "close a connection whose client stops reading this long"})
    # Limits for untrusted clients (README "Limits").
    create_key: str | None = attrs.field(
        default=None, repr=False,
        metadata={"help": "key a network client gives (hello credential) to create sessions "
                          "(default: DATA/create.key, made when first needed)"})
    require_create_key: str = attrs.field(
        default="auto",
        metadata={"choices": ("auto", "always", "never"),
                  "help": "network clients need the create key to create sessions: auto "
                          "(when a listener binds a non-loopback address), always, never"})
    create_rate: float = attrs.field(
        default=10.0, converter=float,
        metadata={"help": "sessions a network peer may create per second (sustained)"})
    create_burst: int = attrs.field(
        default=100, metadata={"help": "sessions a network peer may create at once"})
    max_sessions: int = attrs.field(
        default=1_000_000, metadata={"help": "most sessions stored; create is busy beyond"})
    max_active_sessions: int = attrs.field(
        default=50_000,
        metadata={"help": "most sessions in memory; beyond, the least recently used "
                          "unwatched ones hibernate, and activations are busy if none can"})
    max_memory: int = attrs.field(
        default=1 << 30,
        metadata={"help": "bytes of state and replay history held for active sessions (as "
                          "encoded); beyond, as for max_active_sessions"})
    max_idle: float = attrs.field(
        default=7 * 86400.0, converter=_duration,
        metadata={"help": "longest idle timeout allowed (a longer one is clamped)"})
    max_metadata: int = attrs.field(
        default=16 * 1024,
        metadata={"help": "largest create metadata (and user id), encoded bytes"})
    max_context: int = attrs.field(
        default=64 * 1024,
        metadata={"help": "largest context part (preferences, history, metrics, a "
                          "transition's context), encoded bytes"})
    queue_bytes: int = attrs.field(
        default=8 << 20,
        metadata={"help": "bytes queued per connection before a watcher lags"})
    retention_bytes: int = attrs.field(
        default=4 << 20,
        metadata={"help": "bytes of changes kept per active session for resume"})
    read_timeout: float = attrs.field(
        default=30.0, converter=_duration,
        metadata={"help": "close a connection whose frame, once started, is not complete "
                          "within this"})
    idle_connection_timeout: float | None = attrs.field(
        default=600.0, converter=_optional_duration,
        metadata={"help": "close a connection with no subscription and no request for "
                          "this long ('off': never)"})
    max_connections: int = attrs.field(
        default=10_000,
        metadata={"help": "most client connections (lowered to fit the descriptor limit); "
                          "beyond, new ones are told busy and closed"})
    max_connections_per_peer: int = attrs.field(
        default=1_000,
        metadata={"help": "most connections from one network address"})
    # Session intelligence (README "Analytics and insights").
    max_track: int = attrs.field(
        default=4096, metadata={"help": "largest tracked event's data, encoded bytes"})
    track_rate: int = attrs.field(
        default=600, metadata={"help": "events a session may track per minute"})
    max_context_keys: int = attrs.field(
        default=64, metadata={"help": "free-form context keys a session may hold"})
    analytics_save_every: float = attrs.field(
        default=5.0, converter=_duration,
        metadata={"help": "store the daemon-wide analytics this often when they changed"})
    insight_long_session: float = attrs.field(
        default=3600.0, converter=_duration,
        metadata={"help": "insight: a session open longer is long"})
    insight_high_activity: int = attrs.field(
        default=10, metadata={"help": "insight: a session with more events is very active"})
    insight_many_channels: int = attrs.field(
        default=2, metadata={"help": "insight: a session on more channels is multi-channel"})
    insight_idle_warning: float = attrs.field(
        default=0.8, converter=float,
        metadata={"help": "insight: warn once this fraction of the idle timeout is gone"})
    insight_expiry_warning: float = attrs.field(
        default=600.0, converter=_duration,
        metadata={"help": "insight: warn this long before a session's lifetime ends"})
    insight_slow_workflow: float = attrs.field(
        default=30.0, converter=_duration,
        metadata={"help": "insight: a workflow whose p95 run time is above is slow"})
    recommend_success_rate: float = attrs.field(
        default=0.8, converter=float,
        metadata={"help": "recommend a channel from history if switches to it succeeded "
                          "at least this often (also the failing-switches insight)"})
    recommend_avoid_for: float = attrs.field(
        default=600.0, converter=_duration,
        metadata={"help": "avoid recommending a channel this long after a switch to it "
                          "failed"})
    shutdown_grace: float = attrs.field(
        default=10.0, converter=_duration,
        metadata={"help": "time given to in-flight requests on SIGINT/SIGTERM"})
    http_max_body: int = attrs.field(
        default=1 << 20, metadata={"help": "largest HTTP request body, bytes"})
    http_keep_alive: float = attrs.field(
        default=5.0, converter=_duration,
        metadata={"help": "close an idle HTTP connection after this long, and one that has "
                          "not sent its first request's head within it"})
    max_request_head: int = attrs.field(
        default=16 * 1024,
        metadata={"help": "largest HTTP request head, and WebSocket upgrade request "
                          "(request line and headers), bytes"})
    max_page: int = attrs.field(
        default=1000,
        metadata={"help": "most sessions one page of the session list holds (admin)"})
    sse_heartbeat: float = attrs.field(
        default=15.0, converter=_duration,
        metadata={"help": "an HTTP event stream sends a comment after this long without "
                          "events"})
    sse_queue: int = attrs.field(
        default=1024, metadata={"help": "events queued per HTTP event stream before it lags"})
    sse_queue_bytes: int = attrs.field(
        default=8 << 20,
        metadata={"help": "bytes queued per HTTP event stream before it lags"})
    mcp_max_sessions: int = attrs.field(
        default=1000, metadata={"help": "MCP sessions open at once on /mcp (one more is "
                                        "answered 503)"})
    mcp_idle_timeout: float = attrs.field(
        default=1800.0, converter=_duration,
        metadata={"help": "an MCP session on /mcp with no request for this long ends"})
    # Workflow runs (README "Workflows").
    run_attempts: int = attrs.field(
        default=3, metadata={"help": "dispatches of one workflow run at most (a worker that "
                                     "dies or misses its lease loses the run)"})
    run_wait: float = attrs.field(
        default=30.0, converter=_duration,
        metadata={"help": "a run waits this long for a worker serving its workflow, then "
                          "fails"})
    run_lease: float = attrs.field(
        default=30.0, converter=_duration,
        metadata={"help": "a worker reports (heartbeat, progress) within this, or its run "
                          "is dispatched again"})
    run_timeout: float = attrs.field(
        default=3600.0, converter=_duration,
        metadata={"help": "a run that has not ended this long after it started fails"})
    run_backoff: float = attrs.field(
        default=1.0, converter=_duration,
        metadata={"help": "wait before a run's second attempt; doubles for each after"})
    run_max_inputs: int = attrs.field(
        default=64 * 1024, metadata={"help": "largest inputs of a run, encoded bytes"})
    wal_limit: int = attrs.field(
        default=64 << 20,
        metadata={"help": "WAL file size, bytes, past which the store empties the WAL even "
                          "if commits wait a moment for readers to finish"})
    log_level: str = attrs.field(default="info",
                                 metadata={"choices": ("debug", "info", "warning", "error"),
                                           "help": "how much the daemon logs"})

    def __attrs_post_init__(self) -> None:
        for name in ("max_frame", "max_key", "max_depth", "max_patch", "max_keys",
                     "retention", "mailbox_size", "queue_size", "max_in_flight",
                     "create_burst", "max_sessions", "max_active_sessions", "max_memory",
                     "max_metadata", "max_context", "queue_bytes", "retention_bytes",
                     "max_connections", "max_connections_per_peer",
                     "http_max_body", "max_request_head", "max_page", "sse_queue",
                     "sse_queue_bytes", "run_attempts",
                     "run_max_inputs", "wal_limit", "max_track", "track_rate",
                     "max_context_keys", "mcp_max_sessions"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1")
        if self.durability not in DURABILITIES:
            raise ConfigError(f"durability must be one of {', '.join(DURABILITIES)}")
        if self.default_ttl > self.max_ttl or self.default_ttl <= 0:
            raise ConfigError("default_ttl must be in (0, max_ttl]")
        if self.default_idle is not None and self.default_idle > self.max_idle:
            raise ConfigError("default_idle must not be above max_idle")
        if self.create_rate <= 0:
            raise ConfigError("create_rate must be above 0")
        if self.require_create_key not in ("auto", "always", "never"):
            raise ConfigError("require_create_key must be auto, always or never")
        if self.run_lease <= 0:
            raise ConfigError("run_lease must be above 0")
        if not 0 < self.insight_idle_warning <= 1 or not 0 <= self.recommend_success_rate <= 1:
            raise ConfigError("insight_idle_warning and recommend_success_rate are "
                              "fractions in (0, 1] and [0, 1]")
        if self.analytics_save_every <= 0:
            raise ConfigError("analytics_save_every must be above 0")
        if self.lease <= 0 or self.forward_timeout <= 0 or self.replica_timeout <= 0:
            raise ConfigError("lease, forward_timeout and replica_timeout must be above 0")
        if self.engine_replicas < 0:
            raise ConfigError("engine_replicas must be 0 or more")
        if self.engine is not None and not self.engine.startswith(("redis://", "rediss://")):
            scheme = self.engine.partition("://")[0] if "://" in self.engine else ""
            # Only the scheme: the rest may hold a password.
            raise ConfigError("engine must be off or a Redis URL (redis://HOST:PORT/DB or "
                              "rediss://…), not "
                              + (f"{scheme}://…" if scheme else "that"))
        if self.read_timeout <= 0:
            raise ConfigError("read_timeout must be above 0")
        if self.ws is not None:
            ws_address(self.ws)
        if self.http is not None:
            ws_address(self.http, "http")
        if self.http_keep_alive <= 0:
            raise ConfigError("http_keep_alive must be positive")
        if self.sse_heartbeat <= 0:
            raise ConfigError("sse_heartbeat must be positive")
        if self.mcp_idle_timeout <= 0:
            raise ConfigError("mcp_idle_timeout must be positive")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("tls_cert and tls_key go together")
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise ConfigError("log_level must be debug, info, warning or error")


def ws_address(text: str, name: str = "ws") -> tuple[str, int]:
    """(host, port) from ``HOST:PORT`` (``[::1]:PORT`` for IPv6); `name` is
    the setting it came from.

    Raises:
        ConfigError: not an address.
    """
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{name} must be HOST:PORT or off, not {text!r}")
    return host, int(port)


FIELDS = {f.name: f for f in attrs.fields(Config)}
#: The settings that are durations (shown with a unit).
DURATIONS = frozenset(name for name, f in FIELDS.items()
                      if cast(Any, f.converter) in (_duration, _optional_duration))
_NUMBERS = {name for name, f in FIELDS.items() if cast(Any, f.converter) is float}


def default_config_path(environ: Mapping[str, str]) -> Path:
    base = environ.get("XDG_CONFIG_HOME") or os.path.join(_home(), ".config")
    return Path(base) / "nexusd" / "config.toml"


def _coerce(name: str, value: Any) -> Any:
    """A file, environment or flag value as the field holds it."""
    kind = str(FIELDS[name].type)
    if name in ("socket", "ws", "http", "engine") and str(value).lower() == "off":
        return None
    if kind in ("Path", "Path | None") and value is not None:
        return Path(os.path.expanduser(str(value)))
    if name in _NUMBERS:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name} must be a number, not {value!r}") from None
    if kind == "int":
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name} must be an integer, not {value!r}") from None
    if kind in ("str", "str | None") and value is not None:
        return str(value)
    return value


def load_config(file: Path | None, environ: Mapping[str, str],
                flags: Mapping[str, Any]) -> Config:
    """Builds the configuration from its layers.

    `file` None means the default path, used only if it exists. Environment
    variables are NEXUSD_<SETTING> (NEXUSD_MAX_FRAME, NEXUSD_WS, ...). `flags`
    holds only the flags given.

    Raises:
        ConfigError: naming the setting and where it came from.
    """
    values: dict[str, Any] = {}
    path = file if file is not None else default_config_path(environ)
    if file is not None or path.exists():
        try:
            doc = tomllib.loads(path.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
        for key, value in doc.items():
            name = key.replace("-", "_")
            if name not in FIELDS:
                raise ConfigError(f"config file {path}: unknown setting {key!r}")
            values[name] = _coerce(name, value)
    for name in FIELDS:
        env = environ.get(f"NEXUSD_{name.upper()}")
        if env is not None:
            values[name] = _coerce(name, env)
    for name, value in flags.items():
        values[name] = _coerce(name, value)
    try:
        return Config(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from None
