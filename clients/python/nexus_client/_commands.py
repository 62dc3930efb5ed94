"""What each ``nexus`` command does, given a connected client.

Each handler takes the `AsyncClient` and the `Context` (parsed arguments,
environment, output streams, credentials file) and returns an exit code.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

import attrs
from nexus_protocol import Expired, Invalidated, Progress

from ._async_client import AsyncClient
from ._credentials import CredentialStore
from ._errors import SessionNotFound
from ._exit_codes import ExitCode
from ._render import (
    channel_chart,
    event_to_json,
    format_duration,
    format_event,
    format_report,
    format_state,
    format_time,
    parse_value,
    to_json,
)
from ._worker import Worker

__all__ = ["Context", "UsageError"]


class UsageError(Exception):
    """A command line that argparse accepted but that cannot be run."""


@attrs.define
class Context:
    args: argparse.Namespace
    environ: Mapping[str, str]
    out: TextIO
    err: TextIO
    store: CredentialStore

    def option(self, name: str, env: str | None = None) -> Any:
        value = getattr(self.args, name, None)
        if value is None and env is not None:
            value = self.environ.get(env) or None
        return value

    def print(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def note(self, text: str) -> None:
        print(text, file=self.err, flush=True)

    def token(self, session_id: str) -> str | None:
        explicit = self.option("token", "NEXUS_TOKEN")
        if explicit:
            return str(explicit)
        try:
            return self.store.get(session_id)
        except (OSError, ValueError) as exc:
            self.note(f"nexus: warning: cannot read {self.store.path}: {exc}")
            return None

    def use_session(self, client: AsyncClient, session_id: str) -> str:
        token = self.token(session_id)
        if token is not None:
            client.set_token(session_id, token)
        return session_id



# ---------------------------------------------------------------------- commands


async def cmd_create(client: AsyncClient, ctx: Context) -> int:
    a = ctx.args
    info = await client.create_session(a.channel, user_id=a.user, ttl=a.ttl,
                                       idle_timeout=a.idle, metadata=dict(a.meta) or None)
    saved: str | None = None
    if not a.no_save:
        try:
            ctx.store.put(info.session_id, info.token, expires_at=info.expires_at,
                          channel=a.channel, target=str(client.target))
            saved = str(ctx.store.path)
        except OSError as exc:
            ctx.note(f"nexus: warning: could not save the token to {ctx.store.path}: {exc}")
    if a.json:
        ctx.print(to_json({"session_id": info.session_id, "token": info.token,
                           "channel": a.channel, "seq": info.seq,
                           "expires_at": info.expires_at, "idle_timeout": info.idle_timeout,
                           "credentials": saved}))
        return ExitCode.OK
    now = time.time()
    ctx.print(f"session   {info.session_id}")
    ctx.print(f"token     {info.token}")
    ctx.print(f"channel   {a.channel}")
    ctx.print(f"expires   {format_time(info.expires_at, now)}")
    if info.idle_timeout is not None:
        ctx.print(f"idle      {format_duration(info.idle_timeout)}")
    if saved:
        ctx.print(f"saved to  {saved}")
    return ExitCode.OK


async def cmd_show(client: AsyncClient, ctx: Context) -> int:
    sid = ctx.use_session(client, ctx.args.session_id)
    state = await client.get(sid)
    if ctx.args.json:
        ctx.print(to_json(state.to_dict(), indent=2))
    else:
        for line in format_state(state, time.time()):
            ctx.print(line)
    return ExitCode.OK


async def cmd_get(client: AsyncClient, ctx: Context) -> int:
    a = ctx.args
    sid = ctx.use_session(client, a.session_id)
    if a.key is None:
        state = await client.get(sid)
        if a.entry:
            ctx.print(to_json({k: e.to_dict() for k, e in state.entries.items()}))
        else:
            ctx.print(to_json(state.values))
        return ExitCode.OK
    entry = await client.get(sid, a.key)
    if entry.version == 0:  # never written (a key set to null has a version)
        raise SessionNotFound(f"no key {a.key!r} in the session", session_id=sid)
    if a.entry:
        ctx.print(to_json(entry.to_dict()))
    elif a.raw and isinstance(entry.value, str):
        ctx.print(entry.value)
    else:
        ctx.print(to_json(entry.value))
    return ExitCode.OK


def _print_written(ctx: Context, what: str, seq: int, version: int | None,
                   versions: dict[str, int] | None = None) -> None:
    if ctx.args.json:
        ctx.print(to_json({"seq": seq, "version": version, "versions": versions}))
    elif version is not None:
        ctx.print(f"{what}: version {version} (seq {seq})")
    else:
        ctx.print(f"{what} (seq {seq})")


async def cmd_set(client: AsyncClient, ctx: Context) -> int:
    a = ctx.args
    sid = ctx.use_session(client, a.session_id)
    value = a.value if a.string else parse_value(a.value)
    result = await client.set(sid, a.key, value, expect=a.expect)
    _print_written(ctx, f"set {a.key}", result.seq, result.version)
    return ExitCode.OK


async def cmd_delete(client: AsyncClient, ctx: Context) -> int:
    a = ctx.args
    sid = ctx.use_session(client, a.session_id)
    result = await client.delete(sid, a.key, expect=a.expect)
    _print_written(ctx, f"deleted {a.key}", result.seq, result.version)
    return ExitCode.OK


async def cmd_patch(client: AsyncClient, ctx: Context) -> int:
    a = ctx.args
    entries = dict(a.entries or {})
    entries.update(dict(a.sets))
    if not entries and not a.deletes:
        raise UsageError("patch needs a JSON object, --set K=V or --delete K")
    sid = ctx.use_session(client, a.session_id)
    result = await client.patch(sid, entries, list(a.deletes),
                                expect=dict(a.expects) or None)
    what = f"patched {len(entries)} set, {len(a.deletes)} deleted"
    _print_written(ctx, what, result.seq, None, result.versions)
    return ExitCode.OK


async def cmd_context(client: AsyncClient, ctx: Context) -> int:
    a = ctx.args
    sid = ctx.use_session(client, a.session_id)
    result = await client.update_context(sid, channel=a.channel, preferences=a.preferences,
                                         history=a.history, metrics=a.metrics)
    _print_written(ctx, "context updated", result.seq, None)
    return ExitCode.OK


async def cmd_watch(client: AsyncClient, ctx: Context) -> int:
    a = ctx.args
    sid = ctx.use_session(client, a.session_id)
    async with client.watch(sid, since=a.since, channel=a.channel) as events:
        async for event in events:
            ctx.print(event_to_json(event) if a.json else format_event(event))
            if isinstance(event, Expired):
                return ExitCode.EXPIRED
            if isinstance(event, Invalidated):
                return ExitCode.INVALIDATED
    return ExitCode.OK


async def cmd_switch(client: AsyncClient, ctx: Context) -> int:
    a = ctx.args
    sid = ctx.use_session(client, a.session_id)
    begun = await client.switch_channel(sid, a.to_channel, from_channel=a.from_channel,
                                        reason=a.reason)
    done = None if a.begin_only else await client.complete_switch(sid, begun.transition_id)
    if a.json:
        ctx.print(to_json({"transition_id": begun.transition_id, "seq": begun.seq,
                           "completed": done is not None,
                           "completed_seq": done.seq if done else None}))
    elif done is None:
        ctx.print(f"transition {begun.transition_id} to {a.to_channel} begun (seq {begun.seq})")
    else:
        ctx.print(f"switched to {a.to_channel} (transition {begun.transition_id}, "
                  f"seq {done.seq})")
    return ExitCode.OK


async def cmd_renew(client: AsyncClient, ctx: Context) -> int:
    a = ctx.args
    sid = ctx.use_session(client, a.session_id)
    renewal = await client.renew(sid, a.ttl)
    if a.json:
        ctx.print(to_json({"seq": renewal.seq, "expires_at": renewal.expires_at}))
    else:
        ctx.print(f"session {sid} now expires {format_time(renewal.expires_at, time.time())}")
    return ExitCode.OK


async def cmd_invalidate(client: AsyncClient, ctx: Context) -> int:
    a = ctx.args
    sid = ctx.use_session(client, a.session_id)
    await client.invalidate(sid, reason=a.reason)
    # The session is gone either way; a stale entry would be pruned later.
    with contextlib.suppress(OSError, ValueError):
        ctx.store.remove(sid)
    ctx.print(f"session {sid} invalidated")
    return ExitCode.OK


async def cmd_grant(client: AsyncClient, ctx: Context) -> int:
    a = ctx.args
    sid = ctx.use_session(client, a.session_id)
    token = await client.grant(sid, a.scope)
    ctx.print(to_json({"session_id": sid, "scope": a.scope, "token": token})
              if a.json else token)
    return ExitCode.OK


def _print_report(ctx: Context, report: dict[str, Any]) -> None:
    if ctx.args.json:
        ctx.print(to_json(report, indent=2))
    else:
        for line in format_report(report):
            ctx.print(line)


async def cmd_summary(client: AsyncClient, ctx: Context) -> int:
    sid = ctx.use_session(client, ctx.args.session_id)
    _print_report(ctx, await client.summary(sid))
    return ExitCode.OK


async def cmd_status(client: AsyncClient, ctx: Context) -> int:
    report = await client.stats()
    if not ctx.args.json:
        ctx.print(f"daemon: {client.server} at {client.target}")
    _print_report(ctx, report)
    return ExitCode.OK


async def cmd_analytics(client: AsyncClient, ctx: Context) -> int:
    report = await client.analytics()
    chart = ctx.args.chart
    if chart is None:
        chart = not ctx.args.json and ctx.out.isatty()
    if chart:
        for line in channel_chart(report.get("channel_distribution") or {}):
            ctx.print(line)
        ctx.print()
    _print_report(ctx, report)
    return ExitCode.OK


async def cmd_insights(client: AsyncClient, ctx: Context) -> int:
    sid = ctx.args.session_id
    if sid is None:
        found = (await client.analytics())["insights"]
    else:
        found = await client.insights(ctx.use_session(client, sid))
    if ctx.args.json:
        ctx.print(to_json(found, indent=2))
    elif not found:
        ctx.print("no insights: nothing over a threshold")
    for insight in [] if ctx.args.json else found:
        ctx.print(f"- {insight['message']}  [{insight['rule']}]")
    return ExitCode.OK


async def cmd_recommend(client: AsyncClient, ctx: Context) -> int:
    a = ctx.args
    sid = ctx.use_session(client, a.session_id)
    pick = await client.recommend(sid, a.task, experience=a.experience)
    if a.json:
        ctx.print(to_json(pick, indent=2))
    else:
        ctx.print(f"{pick['channel']}: {pick['reason']} [{pick['rule']}]")
    return ExitCode.OK


async def cmd_track(client: AsyncClient, ctx: Context) -> int:
    a = ctx.args
    sid = ctx.use_session(client, a.session_id)
    result = await client.track(sid, a.event_type, a.data)
    if a.json:
        ctx.print(to_json({"session_id": sid, "seq": result.seq}))
    else:
        ctx.print(f"tracked {a.event_type} in {sid} (seq {result.seq})")
    return ExitCode.OK


async def cmd_sessions(client: AsyncClient, ctx: Context) -> int:
    a = ctx.args
    page = await client.list_sessions(limit=a.limit or None, after=a.after)
    if a.json:
        ctx.print(to_json({"sessions": page.sessions, "after": page.after}, indent=2))
        return ExitCode.OK
    now = time.time()
    for s in page.sessions:
        active = "active" if s.get("active") else "dormant"
        ctx.print(f"{s.get('session_id')}  {active:8} expires "
                  f"{format_time(s.get('expires_at'), now)}")
    if not page.sessions:
        ctx.note("no sessions")
    if page.after is not None:
        ctx.note(f"more: nexus sessions --after {page.after}")
    return ExitCode.OK


async def cmd_ping(client: AsyncClient, ctx: Context) -> int:
    rtt = await client.ping()
    if ctx.args.json:
        ctx.print(to_json({"server": client.server, "connection_id": client.connection_id,
                           "rtt": rtt}))
    else:
        ctx.print(f"pong from {client.server} in {rtt * 1000:.2f} ms")
    return ExitCode.OK


async def cmd_run(client: AsyncClient, ctx: Context) -> int:
    a = ctx.args
    sid = ctx.use_session(client, a.session_id)
    inputs = {k: v for group in a.inputs for k, v in group} or None
    if a.detach:
        run_id = await client.run(sid, a.workflow, inputs, resume=a.resume)
        ctx.print(to_json({"run_id": run_id}) if a.json else f"run {run_id} started")
        return ExitCode.OK
    bar = not a.json and ctx.out.isatty()

    def on_progress(event: Progress) -> None:
        if bar:
            filled = int(event.progress * 30)
            print(f"\r[{'#' * filled}{'.' * (30 - filled)}] {event.progress * 100:5.1f}% "
                  f"{event.step or ''}"[:79].ljust(79), end="", file=ctx.out, flush=True)
        else:
            ctx.print(to_json({"run_id": event.run_id, "event": "progress",
                               "progress": event.progress, "step": event.step}))

    result = await client.run_and_wait(sid, a.workflow, inputs, resume=a.resume,
                                       on_progress=on_progress)
    if bar:
        print(file=ctx.out)
    ctx.print(to_json({"run_id": result.run_id, "event": "result", "state": result.status,
                       "result": result.result}))
    return ExitCode.OK if result.status == "completed" else ExitCode.FAILURE


def load_object(spec: str) -> Any:
    """The object `MODULE:OBJECT` names (MODULE imported, or a .py file).

    Raises:
        ValueError: it cannot be found.
    """
    module_name, sep, name = spec.partition(":")
    if not sep or not module_name or not name:
        raise ValueError(f"expected MODULE:OBJECT, got {spec!r}")
    try:
        if module_name.endswith(".py"):
            module_spec = importlib.util.spec_from_file_location("_nexus_worker", module_name)
            if module_spec is None or module_spec.loader is None:
                raise ImportError(module_name)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            if "" not in sys.path:
                sys.path.insert(0, "")
            module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import {module_name}: {exc}") from None
    obj = module
    for part in name.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"{module_name} has no {name}") from None
    return obj


async def cmd_worker(client: AsyncClient, ctx: Context) -> int:
    a = ctx.args
    try:
        obj = load_object(a.spec)
        if callable(obj) and not isinstance(obj, Worker):
            obj = obj()
        worker = obj if isinstance(obj, Worker) else Worker(obj)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"worker {a.spec}: {exc}") from None
    if not worker.names:
        raise UsageError(f"worker {a.spec}: it serves no workflow")
    if a.concurrency < 1:
        raise UsageError("--concurrency must be at least 1")
    ctx.note(f"nexus: worker serving {', '.join(worker.names)}")
    await worker.serve(client, concurrency=a.concurrency)
    return ExitCode.OK
