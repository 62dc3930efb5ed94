"""One session, four channels: the Session Management Guide's flow against a real nexusd.

A session is created on "api" with the guide's `user_preferences` and
`workflow_context`, read back as "cli" (the guide's ``sync_session(session_id,
"cli")``), watched from a WebSocket client, handed over to "mcp" (a channel
transition, begun and completed) and updated there. The watcher prints every
change as it arrives: seq, op, the channel that wrote it, the key.

Start a daemon, then run this against it::

    nexusd serve --socket /tmp/nx/n.sock --ws 127.0.0.1:8765 --data /tmp/nx/data &
    python examples/cross_channel.py --socket /tmp/nx/n.sock --url ws://127.0.0.1:8765/

The socket defaults to $NEXUS_SOCKET, else the daemon's default socket; the
WebSocket URL to $NEXUS_URL, else ws://127.0.0.1:8765/. No admin key is needed:
the token that `create_session` returns authorises every channel to the session.
Ids are printed shortened, so the output is the same on every run apart from them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import trio
from nexus_client import Change, NexusError, Snapshot, Watch, open_client

#: Seconds any one step may take before the example gives up.
STEP_TIMEOUT = 10.0

USER_PREFERENCES = {"output_format": "json", "verbose": True, "theme": "dark"}
WORKFLOW_CONTEXT = {"current_step": 1, "total_steps": 5, "data_source": "database"}


def short(identifier: str) -> str:
    """Ids are random: show enough to tell them apart, not the whole secret-looking thing."""
    return identifier[:8] + "…"


def say(channel: str, text: str) -> None:
    print(f"[{channel:>9}] {text}", flush=True)


def compact(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def describe(event: Any) -> str:
    """One line per watched event: seq, op, channel, key."""
    if isinstance(event, Change):
        return f"seq={event.seq} op={event.op} channel={event.channel} key={event.key or '-'}"
    if isinstance(event, Snapshot):
        return f"seq={event.seq} snapshot keys={','.join(sorted(event.entries)) or '-'}"
    return f"{event.TAG}"


async def show_until(events: Watch, seq: int) -> None:
    """Prints what the watcher receives, up to and including change `seq`."""
    with trio.fail_after(STEP_TIMEOUT):
        async for event in events:
            say("websocket", describe(event))
            if isinstance(event, Change | Snapshot) and event.seq >= seq:
                return
    raise RuntimeError("the watch ended early")


async def cross_channel(socket: str | None, url: str) -> None:
    # 1. Created on "api", with the guide's session data.
    async with open_client(socket, channel="api", request_timeout=STEP_TIMEOUT) as api:
        info = await api.create_session("api")  # the guide's app.create_session(channel="api")
        sid, token = info.session_id, info.token
        say("api", f"created session {short(sid)}")
        for key, value in (("user_preferences", USER_PREFERENCES),
                           ("workflow_context", WORKFLOW_CONTEXT)):
            written = await api.set(sid, key, value)  # the guide's set_session_data
            say("api", f"set {key} -> seq {written.seq}, version {written.version}")

    # 2. Read as "cli": another connection, the same session, the same token.
    async with open_client(socket, channel="cli", tokens={sid: token},
                           request_timeout=STEP_TIMEOUT) as cli:
        state = await cli.sync(sid, "cli")  # the guide's app.sync_session(session_id, "cli")
        say("cli", f"synced as cli at seq {state.seq}; current channel "
                   f"{state.context['current_channel']}")
        for key, entry in sorted(state.entries.items()):
            say("cli", f"  {key} = {compact(entry.value)} (v{entry.version}, "
                       f"from {entry.channel})")

    # 3. Watched over WebSocket. since=0 replays what happened before the
    #    watcher came; then it sees each change live, in seq order.
    async with open_client(url, channel="websocket", tokens={sid: token},
                           request_timeout=STEP_TIMEOUT) as web, \
            web.watch(sid, since=0) as events:
        say("websocket", f"watching session {short(sid)} from seq 0")
        await show_until(events, state.seq)

        # 4. Handed over to "mcp" (an AI agent), which carries on.
        async with open_client(socket, channel="mcp", tokens={sid: token},
                               request_timeout=STEP_TIMEOUT) as mcp:
            # From the session's current channel: "api", where it was made
            # (reading as "cli" moved nothing).
            begun = await mcp.switch_channel(sid, "mcp", from_channel="api",
                                             reason="agent takes over")
            say("mcp", f"switch api -> mcp begun: transition {short(begun.transition_id)}, "
                       f"seq {begun.seq}")
            await show_until(events, begun.seq)
            done = await mcp.complete_switch(sid, begun.transition_id)
            say("mcp", f"switch completed -> seq {done.seq}")
            await show_until(events, done.seq)

            written = await mcp.update_context(  # the guide's update_session_context
                sid, preferences={**USER_PREFERENCES, "verbose": False},
                history=[{"workflow": "data-processor", "step": 1, "channel": "api"}],
                metrics={"steps_done": 1})
            say("mcp", f"context updated (preferences, history, metrics) -> seq {written.seq}")
            await show_until(events, written.seq)
            step2 = {**WORKFLOW_CONTEXT, "current_step": 2}
            # expect=1: only if nobody changed it since it was read.
            written = await mcp.set(sid, "workflow_context", step2, expect=1)
            say("mcp", f"set workflow_context (step 2, expect v1) -> seq {written.seq}, "
                       f"version {written.version}")
            await show_until(events, written.seq)
            last = written.seq

    say("websocket", f"watch stopped after seq {last}")

    # 5. Back on "cli": everything the other channels did is there.
    async with open_client(socket, channel="cli", tokens={sid: token},
                           request_timeout=STEP_TIMEOUT) as cli:
        state = await cli.sync(sid, "cli")
        ctx = state.context
        say("cli", f"synced as cli at seq {state.seq}; current channel "
                   f"{ctx['current_channel']}")
        say("cli", f"  preferences = {compact(ctx['preferences'])}")
        say("cli", f"  history = {compact(ctx['history'])}")
        entry = state.entries["workflow_context"]
        say("cli", f"  workflow_context = {compact(entry.value)} (v{entry.version}, "
                   f"from {entry.channel})")
        summary = await cli.summary(sid)
        say("cli", f"summary: channels {', '.join(summary['channels_used'])}; "
                   f"{summary['transitions']} transition; events "
                   f"{compact(summary['event_breakdown'])}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--socket", default=os.environ.get("NEXUS_SOCKET") or None,
                        help="the daemon's Unix socket (default: $NEXUS_SOCKET, else the "
                             "daemon's default socket)")
    parser.add_argument("--url", default=os.environ.get("NEXUS_URL") or "ws://127.0.0.1:8765/",
                        help="the daemon's WebSocket URL (default: $NEXUS_URL, else "
                             "ws://127.0.0.1:8765/)")
    args = parser.parse_args(argv)
    try:
        trio.run(cross_channel, args.socket, args.url)
    except NexusError as exc:
        print(f"cross_channel: {type(exc).__name__}: {exc.message}", file=sys.stderr)
        return 1
    except trio.TooSlowError:
        print(f"cross_channel: a step took over {STEP_TIMEOUT:g}s", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
