"""Expired -> continue: a client carries an expired session's context and the
keys it names into a new session, from what it last synced; the daemon keeps
nothing of the expired one."""

from __future__ import annotations

import pytest
import trio
from nexus_client import SessionExpired, SessionNotFound, open_client

from nexusd import Daemon


async def test_an_expired_session_continues_with_its_context_and_named_keys(
        daemon: Daemon, autojump_clock: object) -> None:
    assert daemon.socket_path is not None
    async with open_client(str(daemon.socket_path), channel="cli") as client:
        old = (await client.create_session(ttl=30)).session_id
        await client.patch(old, set={"draft": {"title": "Q3"}, "scratch": [1, 2]})
        await client.merge_context(old, {"workflow_state": {"step": 3},
                                         "preferences": {"theme": "dark"}})
        await client.sync(old, "cli")
        await trio.sleep(31)
        with pytest.raises((SessionExpired, SessionNotFound)):
            await client.get(old)
        assert await daemon.store.load(old) is None  # nothing left to read

        info = await client.continue_session(old, keys=["draft", "never-there"])
        new = await client.get(info.session_id)
        assert new.values == {"draft": {"title": "Q3"}}
        assert new.context["workflow_state"] == {"step": 3}
        assert new.context["preferences"] == {"theme": "dark"}
        summary = await client.summary(info.session_id)
        assert summary["created_channel"] == "cli"
