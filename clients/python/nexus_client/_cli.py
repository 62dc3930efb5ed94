"""The ``nexus`` command: sessions, data and live events from the shell.

Every command opens one connection (channel label "cli"), does its work and
exits with a code from `ExitCode`. Errors are one line on stderr:
``nexus: error: ...``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, NoReturn, TextIO

import trio

from . import _commands
from ._async_client import AsyncClient
from ._backoff import Backoff
from ._commands import Context, UsageError
from ._credentials import CredentialStore, default_credentials_path
from ._errors import (
    BadRequest,
    Busy,
    CannotConnect,
    Conflict,
    ConnectionLost,
    Forbidden,
    InternalError,
    NexusError,
    ProtocolError,
    SessionExpired,
    SessionNotFound,
    Unauthorized,
    Unavailable,
)
from ._exit_codes import ExitCode, exit_code_for, exit_code_table
from ._render import parse_duration, parse_value
from ._transport import Target, default_target
from ._version import __version__

__all__ = ["build_parser", "main"]

CLI_CLIENT_NAME = "nexus-cli"

_DESCRIPTION = """\
Talk to a nexusd daemon: create sessions, read and write their data, follow
their changes live.

The daemon is found by --socket PATH or --url ws://HOST:PORT/, else the
NEXUS_SOCKET or NEXUS_URL environment variable, else its default Unix socket.
Session tokens come from --token, NEXUS_TOKEN, or the credentials file that
`nexus session create` fills ($NEXUS_CREDENTIALS, default
$XDG_CONFIG_HOME/nexus/credentials.json). The admin key (needed over WebSocket
for `status`, `sessions` and `analytics`) comes from --admin-key or
NEXUS_ADMIN_KEY.
"""


# ------------------------------------------------------------------ argument types


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _inputs(text: str) -> list[tuple[str, Any]]:
    """A workflow input: KEY=VALUE, or a JSON object of several."""
    if text.lstrip().startswith("{"):
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"--input is not a JSON object: {exc}") from None
        if not isinstance(doc, dict):
            raise argparse.ArgumentTypeError("--input JSON must be an object")
        return list(doc.items())
    return [_assignment(text)]


def _assignment(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, parse_value(value)


def _version_assignment(text: str) -> tuple[str, int]:
    key, sep, value = text.partition("=")
    if not sep or not key or not value.isdigit():
        raise argparse.ArgumentTypeError(f"expected KEY=VERSION, got {text!r}")
    return key, int(value)


def _json_of(kind: type) -> Callable[[str], Any]:
    name = "object" if kind is dict else "array"

    def parse(text: str) -> Any:
        value = parse_value(text)
        if not isinstance(value, kind):
            raise argparse.ArgumentTypeError(f"expected a JSON {name}, got {text!r}")
        return value

    parse.__name__ = f"JSON {name}"
    return parse


def _non_negative(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return int(text)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


# ------------------------------------------------------------------------ parser


class _Parser(argparse.ArgumentParser):
    """Prints ``nexus: error: ...`` and exits `ExitCode.USAGE`, as argparse does."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(int(ExitCode.USAGE), f"nexus: error: {message}\n")


def _common_options(*, suppress: bool) -> argparse.ArgumentParser:
    """Connection options, accepted before and after the command."""
    default = argparse.SUPPRESS if suppress else None
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("connection")
    g.add_argument("--socket", metavar="PATH", default=default,
                   help="daemon Unix socket (env NEXUS_SOCKET)")
    g.add_argument("--url", metavar="URL", default=default,
                   help="daemon WebSocket URL, ws://HOST:PORT/ or wss:// (env NEXUS_URL)")
    g.add_argument("--admin-key", metavar="KEY", default=default,
                   help="daemon admin key (env NEXUS_ADMIN_KEY)")
    g.add_argument("--token", metavar="TOKEN", default=default,
                   help="session token (env NEXUS_TOKEN; default: the credentials file)")
    g.add_argument("--timeout", metavar="SECONDS", type=_positive_float, default=default,
                   help="seconds to wait for the daemon (default 10)")
    return p


def build_parser() -> argparse.ArgumentParser:
    """The ``nexus`` argument parser."""
    common = _common_options(suppress=True)
    parser = _Parser(
        prog="nexus", description=_DESCRIPTION, parents=[_common_options(suppress=True)],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="exit codes:\n" + exit_code_table())
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                     parser_class=_Parser)

    def command(sub: Any, name: str, handler: Callable[..., Awaitable[int]], help_: str,
                **kw: Any) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(
            name, help=help_, description=help_, parents=[common], **kw)
        p.set_defaults(handler=handler)
        return p

    def json_flag(p: argparse.ArgumentParser, what: str = "the result as JSON") -> None:
        p.add_argument("--json", action="store_true", help=f"print {what}")

    # nexus session ...
    session = commands.add_parser("session", help="create, show or list sessions",
                                  description="Create, show or list sessions.")
    session_cmds = session.add_subparsers(dest="session_command", metavar="ACTION",
                                          required=True, parser_class=_Parser)
    p = command(session_cmds, "create", _commands.cmd_create, "create a session")
    p.add_argument("--channel", default="cli", help="channel it is created on (default: cli)")
    p.add_argument("--ttl", type=_duration, metavar="DURATION",
                   help="lifetime: 90s, 30m, 2h, 1d or seconds (default: the daemon's)")
    p.add_argument("--idle", type=_duration, metavar="DURATION",
                   help="expire after this long without activity")
    p.add_argument("--user", metavar="ID", help="user id to record with the session")
    p.add_argument("--meta", type=_assignment, action="append", default=[], metavar="K=V",
                   help="metadata entry (VALUE as JSON or text); repeatable")
    p.add_argument("--no-save", action="store_true",
                   help="do not store the token in the credentials file")
    json_flag(p, "session_id, token and expiry as one JSON object")
    p = command(session_cmds, "show", _commands.cmd_show, "show a session's state and context")
    p.add_argument("session_id", metavar="ID")
    json_flag(p, "the state as JSON")
    p = command(session_cmds, "list", _commands.cmd_sessions, "list sessions (admin)")
    _sessions_args(p)

    p = command(commands, "get", _commands.cmd_get,
                "print a value as JSON (all values as a JSON object without KEY); "
                "a key never written exits 3")
    p.add_argument("session_id", metavar="ID")
    p.add_argument("key", metavar="KEY", nargs="?")
    p.add_argument("--raw", action="store_true", help="print a string value without quotes")
    p.add_argument("--entry", action="store_true",
                   help="print {value, version, updated_at, channel} instead of the value")

    p = command(commands, "set", _commands.cmd_set, "write a value")
    p.add_argument("session_id", metavar="ID")
    p.add_argument("key", metavar="KEY")
    p.add_argument("value", metavar="VALUE",
                   help="JSON (42, true, {\"a\": 1}, \"text\"); anything else is taken as text")
    p.add_argument("--string", action="store_true", help="take VALUE as text even if it is JSON")
    p.add_argument("--expect", type=_non_negative, metavar="VERSION",
                   help="fail with a conflict unless the key is at this version (0: absent)")
    json_flag(p)

    p = command(commands, "delete", _commands.cmd_delete, "delete a key")
    p.add_argument("session_id", metavar="ID")
    p.add_argument("key", metavar="KEY")
    p.add_argument("--expect", type=_non_negative, metavar="VERSION",
                   help="fail with a conflict unless the key is at this version")
    json_flag(p)

    p = command(commands, "patch", _commands.cmd_patch,
                "set and delete several keys as one change, all or nothing")
    p.add_argument("session_id", metavar="ID")
    p.add_argument("entries", metavar="JSON", nargs="?", type=_json_of(dict),
                   help='a JSON object of keys to set, e.g. \'{"a": 1, "b": "x"}\'')
    p.add_argument("--set", dest="sets", type=_assignment, action="append", default=[],
                   metavar="K=V", help="key to set (VALUE as JSON or text); repeatable")
    p.add_argument("--delete", dest="deletes", action="append", default=[], metavar="K",
                   help="key to delete; repeatable")
    p.add_argument("--expect", dest="expects", type=_version_assignment, action="append",
                   default=[], metavar="K=VERSION", help="expected version of a key; repeatable")
    json_flag(p)

    p = command(commands, "context", _commands.cmd_context, "update the session context")
    p.add_argument("session_id", metavar="ID")
    p.add_argument("--channel", default="cli", help="the channel it is updated from (default cli)")
    p.add_argument("--preferences", type=_json_of(dict), metavar="JSON")
    p.add_argument("--history", type=_json_of(list), metavar="JSON")
    p.add_argument("--metrics", type=_json_of(dict), metavar="JSON")
    json_flag(p)

    p = command(commands, "watch", _commands.cmd_watch,
                "follow a session's changes live, one line per event (Ctrl-C stops)")
    p.add_argument("session_id", metavar="ID")
    p.add_argument("--since", type=_non_negative, metavar="SEQ",
                   help="first replay the changes after SEQ")
    p.add_argument("--channel", default="cli", help="channel shown in presence (default cli)")
    json_flag(p, "one JSON object per event")

    p = command(commands, "switch", _commands.cmd_switch, "move the session to another channel")
    p.add_argument("session_id", metavar="ID")
    p.add_argument("--to", required=True, metavar="CHANNEL", dest="to_channel")
    p.add_argument("--from", metavar="CHANNEL", dest="from_channel",
                   help="the session's current channel, checked (another one exits 6)")
    p.add_argument("--reason", metavar="TEXT")
    p.add_argument("--begin-only", action="store_true",
                   help="begin the transition without completing it")
    json_flag(p)

    p = command(commands, "renew", _commands.cmd_renew, "extend a session's lifetime")
    p.add_argument("session_id", metavar="ID")
    p.add_argument("--ttl", type=_duration, metavar="DURATION",
                   help="new lifetime from now (default: the session's ttl)")
    json_flag(p)

    p = command(commands, "invalidate", _commands.cmd_invalidate, "end a session now")
    p.add_argument("session_id", metavar="ID")
    p.add_argument("--reason", metavar="TEXT")

    p = command(commands, "grant", _commands.cmd_grant, "mint another token for a session")
    p.add_argument("session_id", metavar="ID")
    p.add_argument("--scope", required=True, choices=["read", "write", "admin"])
    json_flag(p)

    p = command(commands, "summary", _commands.cmd_summary, "a session's analytics")
    p.add_argument("session_id", metavar="ID")
    json_flag(p)

    p = command(commands, "insights", _commands.cmd_insights,
                "what the daemon's rules see in a session (or across sessions: admin)")
    p.add_argument("session_id", metavar="ID", nargs="?")
    json_flag(p)

    p = command(commands, "recommend", _commands.cmd_recommend,
                "the channel to use for a task in a session, and why")
    p.add_argument("session_id", metavar="ID")
    p.add_argument("--task", required=True, metavar="TYPE",
                   help="task type: data_analysis, ai_interaction, general, ...")
    p.add_argument("--experience", metavar="LEVEL", help="e.g. expert")
    json_flag(p)

    p = command(commands, "track", _commands.cmd_track,
                "journal a custom analytics event in a session")
    p.add_argument("session_id", metavar="ID")
    p.add_argument("event_type", metavar="TYPE")
    p.add_argument("data", metavar="JSON", type=_json_of(dict),
                   help='the event\'s data, a JSON object, e.g. \'{"workflow_name": "etl", '
                        '"execution_time": 12.5}\'')
    json_flag(p)

    p = command(commands, "sessions", _commands.cmd_sessions, "list sessions (admin)")
    _sessions_args(p)

    p = command(commands, "status", _commands.cmd_status,
                "daemon health: version, uptime, counts (admin)")
    json_flag(p)

    p = command(commands, "analytics", _commands.cmd_analytics,
                "channel and workflow analytics (admin); on a terminal, a chart of "
                "the channel distribution")
    p.add_argument("--chart", action=argparse.BooleanOptionalAction, default=None,
                   help="draw the channel chart (default: on a terminal)")
    json_flag(p)

    p = command(commands, "mcp", _cmd_mcp,
                "serve MCP on stdin/stdout for an AI agent's host (a bridge to the daemon, "
                "channel mcp); ends when the host closes stdin")
    p.add_argument("--session", metavar="ID", dest="session_id",
                   help="the session the agent works on (its token from --token, NEXUS_TOKEN "
                        "or the credentials file); default: every session of the credentials "
                        "file")

    p = command(commands, "ping", _commands.cmd_ping, "check that the daemon answers")
    json_flag(p)

    p = command(commands, "run", _commands.cmd_run,
                "run a workflow in a session and follow it to its end (a progress bar "
                "on a terminal, JSON lines otherwise); exit 1 if it fails")
    p.add_argument("workflow", metavar="WORKFLOW")
    p.add_argument("--session", required=True, metavar="ID", dest="session_id")
    p.add_argument("--continue", action="store_true", dest="resume",
                   help="join the run in flight, or continue from the step the session "
                        "records")
    p.add_argument("--input", dest="inputs", type=_inputs, action="append", default=[],
                   metavar="JSON|K=V",
                   help="workflow inputs: a JSON object, or K=V (VALUE as JSON or text); "
                        "repeatable")
    p.add_argument("--detach", action="store_true",
                   help="print the run id and exit without waiting")
    json_flag(p)

    p = command(commands, "worker", _commands.cmd_worker,
                "serve workflows: MODULE:OBJECT is a Worker, or a dict of name -> "
                "function; SIGINT/SIGTERM stop it cleanly")
    p.add_argument("spec", metavar="MODULE:OBJECT")
    p.add_argument("--concurrency", type=int, default=1, metavar="N",
                   help="runs at once (default 1)")
    return parser


def _sessions_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--limit", type=_non_negative, default=100, help="page size (default 100)")
    p.add_argument("--after", metavar="ID", help="start after this session id")
    p.add_argument("--json", action="store_true", help="print the page as JSON")


def resolve_target(args: argparse.Namespace, environ: Mapping[str, str]) -> Target:
    """The daemon address from the options, then the environment, then the default.

    Raises:
        ValueError: both --socket and --url, or an invalid URL.
    """
    socket, url = getattr(args, "socket", None), getattr(args, "url", None)
    if socket and url:
        raise ValueError("give either --socket or --url, not both")
    if socket:
        return Target(path=socket)
    if url:
        return Target.parse_url(url)
    return default_target(environ)


# ------------------------------------------------------------------------ errors


def describe_error(exc: BaseException, session_id: str | None = None) -> str:
    """The one line printed after ``nexus: error:``."""
    if not isinstance(exc, NexusError):
        return str(exc) or type(exc).__name__
    sid = exc.session_id or session_id
    msg = exc.message
    if isinstance(exc, SessionNotFound) and "key" in msg:
        return f"{msg} (session {sid})" if sid else msg  # a missing key, not session
    if isinstance(exc, SessionNotFound):
        phrase = f"session {sid} not found" if sid else "not found"
    elif isinstance(exc, SessionExpired):
        phrase = f"session {sid} has expired or was invalidated" if sid else "session expired"
    elif isinstance(exc, Forbidden):
        phrase = f"not allowed on session {sid}" if sid else "not allowed"
    elif isinstance(exc, Unauthorized):
        phrase = f"not authorized for session {sid}" if sid else "not authorized"
    elif isinstance(exc, Conflict):
        phrase = f"version conflict on session {sid}" if sid else "version conflict"
    elif isinstance(exc, Busy):
        wait = f"; retry in {exc.retry_after:g}s" if exc.retry_after else "; retry later"
        phrase = "the daemon is busy" + wait
    elif isinstance(exc, CannotConnect):
        return f"{msg} (is nexusd running?)"
    elif isinstance(exc, ConnectionLost | Unavailable):
        return msg
    elif isinstance(exc, ProtocolError):
        phrase = "protocol error"
    elif isinstance(exc, BadRequest):
        phrase = "bad request"
    elif isinstance(exc, InternalError):
        phrase = "the daemon failed" if exc.code == "internal" else f"error {exc.code!r}"
    else:
        return msg
    if msg and msg != exc.default_message and msg.lower() not in phrase.lower():
        return f"{phrase}: {msg}"
    return phrase


def _hint(exc: NexusError, ctx: Context) -> str | None:
    a = ctx.args
    admin_command = a.command in ("status", "sessions", "analytics") or (
        a.command == "insights" and not a.session_id) or (
        a.command == "session" and a.session_command == "list")
    if isinstance(exc, Forbidden) and admin_command:
        return ("admin only: run as the daemon's user over its Unix socket, "
                "or pass --admin-key / NEXUS_ADMIN_KEY")
    sid = getattr(a, "session_id", None)
    if (isinstance(exc, Unauthorized) and not isinstance(exc, Forbidden) and sid
            and ctx.token(sid) is None):
        return (f"no token for session {sid}: pass --token, set NEXUS_TOKEN, or create it "
                "with `nexus session create` (which stores it)")
    if isinstance(exc, Unavailable) and a.command == "run":
        return ("this daemon does not execute workflows; "
                f"exit code {int(ExitCode.UNAVAILABLE)}")
    if isinstance(exc, SessionNotFound) and a.command == "run" \
            and "unknown workflow" in exc.message:
        return "start a worker serving it: `nexus worker MODULE:OBJECT`"
    return None


# -------------------------------------------------------------------------- main


async def _cmd_mcp(client: AsyncClient, ctx: Context) -> int:
    # Imported here: the SDK is heavy, and only this command needs it.
    from ._mcp_bridge import serve_stdio

    sid = ctx.args.session_id
    if sid is not None:
        token = ctx.token(sid)
        return await serve_stdio(client, {sid: token} if token else {}, default_token=token)
    try:
        tokens = ctx.store.all()
    except (OSError, ValueError) as exc:
        ctx.note(f"nexus: warning: cannot read {ctx.store.path}: {exc}")
        tokens = {}
    return await serve_stdio(client, tokens, default_token=ctx.option("token", "NEXUS_TOKEN"))


async def _run(ctx: Context, target: Target) -> int:
    a = ctx.args
    # `watch`, `worker` and the MCP bridge ride out daemon restarts.
    watching = a.command in ("watch", "worker", "mcp")
    timeout = ctx.option("timeout") or 10.0
    client = AsyncClient(
        target, channel="mcp" if a.command == "mcp" else "cli",
        client_name="nexus-mcp" if a.command == "mcp" else CLI_CLIENT_NAME,
        admin_key=ctx.option("admin_key", "NEXUS_ADMIN_KEY"),
        # One-shot commands fail fast.
        reconnect=Backoff(base=0.2, max_delay=5.0, max_attempts=None) if watching else False,
        connect_timeout=timeout, request_timeout=None if watching else timeout)
    handler: Callable[[AsyncClient, Context], Awaitable[int]] = a.handler
    async with client:
        if watching and threading.current_thread() is threading.main_thread():
            return await _until_interrupted(handler(client, ctx))
        return await handler(client, ctx)


async def _until_interrupted(work: Awaitable[int]) -> int:
    """Runs `work`; SIGINT (Ctrl-C) or SIGTERM end it with exit code 0."""
    result = int(ExitCode.OK)
    error: Exception | None = None
    work_scope = trio.CancelScope()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                async for _ in signals:
                    work_scope.cancel()
                    return

            nursery.start_soon(stop_on_signal)
            try:
                with work_scope:
                    result = await work
            except Exception as exc:  # re-raised below, outside the nursery's group
                error = exc
            finally:
                nursery.cancel_scope.cancel()
    if error is not None:
        raise error
    return result


def main(argv: Sequence[str] | None = None, *, environ: Mapping[str, str] | None = None,
         stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Runs ``nexus`` with `argv` (default ``sys.argv[1:]``); returns the exit code."""
    env = os.environ if environ is None else environ
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else int(ExitCode.USAGE)
    ctx = Context(args=args, environ=env, out=out, err=err,
                   store=CredentialStore(default_credentials_path(env)))
    try:
        try:
            target = resolve_target(args, env)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        return int(trio.run(_run, ctx, target))
    except UsageError as exc:
        print(f"nexus: error: {exc}", file=err)
        return int(ExitCode.USAGE)
    except NexusError as exc:
        print(f"nexus: error: {describe_error(exc, getattr(args, 'session_id', None))}",
              file=err)
        hint = _hint(exc, ctx)
        if hint:
            print(f"nexus: hint: {hint}", file=err)
        return int(exit_code_for(exc))
    except KeyboardInterrupt:
        return int(ExitCode.INTERRUPTED)
    except BrokenPipeError:
        # The reader went away (`nexus watch ... | head -1`): stop quietly.
        _silence_stdout()
        return int(ExitCode.OK)
    except BaseExceptionGroup as group:
        interrupted, rest = group.split(KeyboardInterrupt)
        if interrupted is not None and rest is None:
            return int(ExitCode.INTERRUPTED)
        raise


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass
