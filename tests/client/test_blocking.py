"""The blocking `Nexus` facade, called from plain (non-trio) code."""

from __future__ import annotations

import threading
from pathlib import Path

import nexus_client as nc
import pytest
import trio

from .fakeserver import ThreadedServer


def test_no_target_is_the_daemon_nexus_finds(threaded: ThreadedServer,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEXUS_SOCKET", threaded.path)
    with nc.Nexus(credentials=False) as app:
        assert app.ping() >= 0
    assert len(threaded.server.hellos) == 1


def test_the_guides_calls(threaded: ThreadedServer) -> None:
    with nc.Nexus(threaded.path, credentials=False) as app:
        session_id = app.create_session(channel="api")
        assert isinstance(session_id, str)
        assert app.token_for(session_id) is not None

        assert app.set_session_data(session_id, "user_preferences",
                                    {"output_format": "json", "theme": "dark"}) == 1
        app.set_session_data(session_id, "workflow_context", {"current_step": 1})
        assert app.get_session_data(session_id, "user_preferences")["theme"] == "dark"
        assert app.get_session_data(session_id, "absent") is None
        assert app.get_session_data(session_id) == {
            "user_preferences": {"output_format": "json", "theme": "dark"},
            "workflow_context": {"current_step": 1}}

        seq = app.update_session_context(session_id, "cli", {
            "preferences": {"verbose": True}, "workflow_history": ["init"],
            "metrics": {"steps": 1}})
        assert seq == 3
        # Any other key is a free-form context key (merge_context).
        assert app.update_session_context(session_id, "cli", {"colour": "blue"}) == 4

        state = app.sync_session(session_id, "mcp")
        assert state["channel"] == "mcp" and state["session_id"] == session_id
        assert state["data"]["workflow_context"] == {"current_step": 1}
        assert state["context"]["history"] == ["init"]
        assert state["context"]["current_channel"] == "cli"

        tid = app.initiate_channel_switch(session_id, "api", "cli",
                                          {"reason": "interactive_exploration"})
        app.complete_channel_switch(session_id, tid, True)
        switch = threaded.server.requests_of("switch_begin")[0]
        assert switch.reason == "interactive_exploration"  # type: ignore[attr-defined]

        assert app.renew_session(session_id, 600) > 0
        assert app.get_session_summary(session_id)["session_id"] == session_id
        assert app.delete_session_data(session_id, "workflow_context") > 0
        assert app.ping() >= 0
        assert "uptime_seconds" in app.stats()
        assert [s["session_id"] for s in app.list_sessions(limit=1)] == [session_id]
        with pytest.raises(nc.Unavailable):
            app.run("data-processor", session_id, {"data": "initial"})
        app.invalidate_session(session_id)
        with pytest.raises(nc.SessionExpired):
            app.get_session_data(session_id)


def test_errors_propagate_to_the_caller(threaded: ThreadedServer) -> None:
    with nc.Nexus(threaded.path, credentials=False) as app:
        with pytest.raises(nc.SessionNotFound):
            app.get_session_data("no-such-session")
        sid = threaded.call_sync(threaded.server.add_session, "tok_other")
        with pytest.raises(nc.Unauthorized):
            app.get_session_data(sid, "k")


def test_watch_as_a_plain_generator(threaded: ThreadedServer) -> None:
    with nc.Nexus(threaded.path, credentials=False) as app:
        sid = app.create_session()
        events = app.watch(sid)
        snap = next(events)
        assert isinstance(snap, nc.Snapshot) and snap.seq == 0
        assert isinstance(next(events), nc.Presence)
        app.set_session_data(sid, "k", 1)
        threaded.call(threaded.server.write, sid, "k", 2)
        got = [next(events), next(events)]
        assert [(e.seq, e.value) for e in got] == [(1, 1), (2, 2)]  # type: ignore[attr-defined]
        events.close()  # detaches before returning
        assert [r.TAG for r in threaded.server.requests_of("detach")] == ["detach"]
        # The generator ends by itself when the session does.
        events = app.watch(sid, since=2)
        assert isinstance(next(events), nc.Presence)  # attached, nothing missed
        threaded.call(threaded.server.end, sid, "expired", "ttl")
        assert [type(e) for e in events] == [nc.Expired]


def test_watch_errors_are_raised_by_the_generator(threaded: ThreadedServer) -> None:
    with nc.Nexus(threaded.path, credentials=False) as app, pytest.raises(nc.SessionNotFound):
        next(app.watch("missing"))


def test_calls_from_many_threads(threaded: ThreadedServer) -> None:
    with nc.Nexus(threaded.path, credentials=False) as app:
        sid = app.create_session()
        errors: list[BaseException] = []

        def work(i: int) -> None:
            try:
                app.set_session_data(sid, f"k{i}", i)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert app.get_session_data(sid) == {f"k{i}": i for i in range(8)}


def test_tokens_from_the_credentials_file(threaded: ThreadedServer, tmp_path: Path) -> None:
    sid = threaded.call_sync(threaded.server.add_session, "tok_cli")
    path = tmp_path / "creds.json"
    nc.CredentialStore(path).put(sid, "tok_cli")
    with nc.Nexus(threaded.path, credentials=path) as app:
        assert app.sync_session(sid, "api")["session_id"] == sid
    with nc.Nexus(threaded.path, tokens={sid: "tok_cli"}, credentials=False) as app:
        assert app.get_session_data(sid) == {}


def test_save_credentials_lets_the_cli_continue(threaded: ThreadedServer,
                                                tmp_path: Path) -> None:
    store = nc.CredentialStore(tmp_path / "creds.json")
    with nc.Nexus(threaded.path, credentials=store, save_credentials=True) as app:
        sid = app.create_session(channel="api")
        assert store.get(sid) == app.token_for(sid)
        app.invalidate_session(sid)
        assert store.get(sid) is None
    with nc.Nexus(threaded.path, credentials=store) as app:
        sid = app.create_session(channel="api")
    assert store.get(sid) is None  # saving is opt-in


def test_cannot_connect_raises_from_the_constructor(sock_path: str) -> None:
    with pytest.raises(nc.CannotConnect):
        nc.Nexus(sock_path)


def test_close_is_idempotent_and_final(threaded: ThreadedServer) -> None:
    app = nc.Nexus(threaded.path, credentials=False)
    app.close()
    app.close()
    with pytest.raises(trio.ClosedResourceError):
        app.ping()
