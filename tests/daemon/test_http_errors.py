"""Every error the HTTP channel answers: one JSON shape, the protocol's codes
as HTTP statuses, never a traceback or an HTML page, nothing changed."""

from __future__ import annotations

import json
from typing import Any

import httpx
import nexus_protocol as p
import pytest
import trio
from http_client import TIMEOUT, connect_events, http_client, open_events
from raw_client import connect_unix

from nexusd import Daemon
from nexusd._origins import BrowserRules, listen_hosts
from nexusd.http import HttpChannel, HttpSettings, Metrics

HTTP = pytest.mark.daemon_config(http="127.0.0.1:0", http_max_body=4096,
                                 allowed_origins="https://app.example")


def error_of(r: httpx.Response, status: int, code: str) -> str:
    """The message of an error response, after checking its shape."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code, body
    assert "Traceback" not in r.text and "<html" not in r.text.lower()
    return str(body["error"]["message"])


async def _session(client: httpx.AsyncClient) -> tuple[str, dict[str, str]]:
    created = (await client.post("/sessions")).json()
    return created["session_id"], {"Authorization": f"Bearer {created['token']}"}


@HTTP
async def test_bad_requests_are_400_and_change_nothing(daemon: Daemon) -> None:
    async with http_client(daemon) as client:
        sid, auth = await _session(client)
        data = f"/sessions/{sid}/data"
        assert "not JSON" in error_of(
            await client.put(f"{data}/k", content=b"{nope", headers=auth), 400, "bad_request")
        error_of(await client.put(f"{data}/k", content=b"NaN", headers=auth), 400,
                 "bad_request")
        error_of(await client.put(f"{data}/k", content=b"", headers=auth), 400, "bad_request")
        assert "64 bits" in error_of(await client.put(f"{data}/k", content=b"1" * 30,
                                                      headers=auth), 400, "bad_request")
        assert "'color'" in error_of(await client.post("/sessions", json={"color": "red"}),
                                     400, "bad_request")
        assert "ttl" in error_of(await client.post("/sessions", json={"ttl": "long"}), 400,
                                 "bad_request")
        assert "object" in error_of(await client.patch(data, json=[1], headers=auth), 400,
                                    "bad_request")
        error_of(await client.put(f"{data}/k", json=1, headers={**auth, "If-Match": "*"}),
                 400, "bad_request")
        error_of(await client.get(f"/sessions/{sid}/events",
                                  headers={**auth, "Last-Event-ID": "x1"}), 400, "bad_request")
        error_of(await client.get(f"/sessions/{sid}", params={"channel": "x" * 65},
                                  headers=auth), 400, "bad_request")
        deep: Any = 1
        for _ in range(40):
            deep = [deep]
        assert "deep" in error_of(await client.put(f"{data}/k", json=deep, headers=auth),
                                  400, "bad_request")
        # Nothing was written.
        assert (await client.get(f"/sessions/{sid}", headers=auth)).json()["seq"] == 0


@HTTP
async def test_too_large_is_413(daemon: Daemon) -> None:
    async with http_client(daemon) as client:
        sid, auth = await _session(client)
        big = "x" * 5000
        assert "4096" in error_of(await client.put(f"/sessions/{sid}/data/k", json=big,
                                                   headers=auth), 413, "too_large")
        # Without a Content-Length too (chunked).
        async def chunks() -> Any:
            for _ in range(5):
                yield b'"' + b"x" * 1000

        error_of(await client.put(f"/sessions/{sid}/data/k", content=chunks(), headers=auth),
                 413, "too_large")
        assert (await client.get(f"/sessions/{sid}", headers=auth)).json()["seq"] == 0


@HTTP
async def test_credentials_401_and_403(daemon: Daemon) -> None:
    assert daemon.socket_path is not None and daemon.admin_key is not None
    async with http_client(daemon) as client:
        sid, auth = await _session(client)
        r = await client.get(f"/sessions/{sid}")
        assert "token" in error_of(r, 401, "unauthorized")
        assert r.headers["www-authenticate"].startswith("Bearer")
        error_of(await client.get(f"/sessions/{sid}", headers={"Authorization": "Bearer nxs_no"}),
                 401, "unauthorized")
        error_of(await client.get(f"/sessions/{sid}", headers={"Authorization": "Basic eA=="}),
                 401, "unauthorized")
        error_of(await client.get("/status"), 401, "unauthorized")
        error_of(await client.get("/sessions"), 401, "unauthorized")
        # A session token is not the admin key.
        error_of(await client.get("/status", headers=auth), 403, "forbidden")
        # A read token cannot write.
        async with connect_unix(daemon.socket_path) as owner:
            granted = await owner.call(p.Grant, session_id=sid, scope="read",
                                       token=auth["Authorization"][7:])
            assert isinstance(granted, p.Granted)
        read = {"Authorization": f"Bearer {granted.token}"}
        assert (await client.get(f"/sessions/{sid}", headers=read)).status_code == 200
        error_of(await client.put(f"/sessions/{sid}/data/k", json=1, headers=read), 403,
                 "forbidden")
        # The admin key lists sessions and reports status.
        admin = {"Authorization": f"Bearer {daemon.admin_key}"}
        listed = (await client.get("/sessions", headers=admin, params={"limit": 5})).json()
        assert sid in [s["session_id"] for s in listed["sessions"]]
        status = (await client.get("/status", headers=admin)).json()
        assert status["listening"]["http_port"] == daemon.http_port


@HTTP
async def test_not_found_gone_and_conflicts(daemon: Daemon) -> None:
    async with http_client(daemon) as client:
        sid, auth = await _session(client)
        data = f"/sessions/{sid}/data"
        error_of(await client.get("/sessions/0123456789abcdef0123456789abcdef", headers=auth),
                 404, "not_found")
        error_of(await client.get(f"{data}/absent", headers=auth), 404, "not_found")
        error_of(await client.delete(f"{data}/absent", headers=auth), 404, "not_found")
        assert "no route" in error_of(await client.get("/nothing/here"), 404, "not_found")
        r = await client.delete("/sessions")
        error_of(r, 405, "bad_request")
        assert set(r.headers["allow"].replace(" ", "").split(",")) >= {"GET", "POST"}

        # Compare-and-set: 412 for a failed If-Match, 409 for other conflicts.
        assert (await client.put(f"{data}/k", json=1, headers=auth)).headers["etag"] == '"1"'
        error_of(await client.put(f"{data}/k", json=2, headers={**auth, "If-Match": '"5"'}),
                 412, "conflict")
        error_of(await client.put(f"{data}/k", json=2, headers={**auth, "If-None-Match": "*"}),
                 412, "conflict")
        error_of(await client.delete(f"{data}/k", headers={**auth, "If-Match": '"2"'}),
                 412, "conflict")
        error_of(await client.patch(data, json={"set": {"k": 3}, "expect": {"k": 7}},
                                    headers=auth), 409, "conflict")
        error_of(await client.post(f"/sessions/{sid}/switch",
                                   json={"to_channel": "mcp", "from_channel": "cli"},
                                   headers=auth), 409, "conflict")
        r = await client.get(f"{data}/k", headers=auth)
        assert (r.json()["value"], r.headers["etag"]) == (1, '"1"')

        # Invalidated: 204, then 410 for everything, the event stream included.
        async with open_events(daemon, sid, auth["Authorization"][7:]) as events:
            assert (await client.delete(f"/sessions/{sid}", headers=auth)).status_code == 204
            ending = await events.until("invalidated")
            assert await events.next() is None
        assert [e.event for e in ending] == ["snapshot", "invalidated"]
        assert "invalidated" in error_of(await client.get(f"/sessions/{sid}", headers=auth),
                                         410, "expired")
        async with connect_events(daemon, sid, auth["Authorization"][7:]) as refused:
            assert refused.status == 410


@HTTP
async def test_browser_rules_host_and_origin(daemon: Daemon) -> None:
    async with http_client(daemon) as client:
        sid, auth = await _session(client)
        put = f"/sessions/{sid}/data/k"
        # DNS rebinding: a name the daemon does not answer to.
        error_of(await client.get(f"/sessions/{sid}", headers={**auth, "Host": "evil.example"}),
                 403, "forbidden")
        ok = await client.get(f"/sessions/{sid}", headers={**auth, "Host": "localhost:8000"})
        assert ok.status_code == 200
        # A page on another site cannot write; the allowed origin and the
        # daemon's own can.
        error_of(await client.put(put, json=1, headers={**auth, "Origin": "https://evil.example"}),
                 403, "forbidden")
        own = f"http://127.0.0.1:{daemon.http_port}"
        for origin in ("https://app.example", own):
            r = await client.put(put, json=1, headers={**auth, "Origin": origin})
            assert r.status_code == 200, r.text
        assert (await client.get(f"/sessions/{sid}", headers=auth)).json()["seq"] == 2


@pytest.mark.daemon_config(http="127.0.0.1:0", create_burst=2, create_rate=0.01)
async def test_creates_past_the_peers_bucket_are_429(daemon: Daemon) -> None:
    async with http_client(daemon) as client:
        for _ in range(2):
            assert (await client.post("/sessions")).status_code == 201
        r = await client.post("/sessions")
        assert "faster" in error_of(r, 429, "busy")
        assert int(r.headers["retry-after"]) >= 1
        # The admin key is not limited.
        admin = {"Authorization": f"Bearer {daemon.admin_key}"}
        assert (await client.post("/sessions", headers=admin)).status_code == 201


@pytest.mark.daemon_config(http="127.0.0.1:0", require_create_key="always")
async def test_creating_needs_the_create_key_when_the_daemon_asks(daemon: Daemon) -> None:
    assert daemon.create_key is not None
    async with http_client(daemon) as client:
        assert "create key" in error_of(await client.post("/sessions"), 403, "forbidden")
        r = await client.post("/sessions",
                              headers={"Authorization": f"Bearer {daemon.create_key}"})
        assert r.status_code == 201, r.text


@pytest.mark.daemon_config(http="127.0.0.1:0", max_connections_per_peer=2)
async def test_connections_past_the_limit_are_503(daemon: Daemon) -> None:
    assert daemon.http_port is not None
    with trio.fail_after(TIMEOUT):
        held = [await trio.open_tcp_stream("127.0.0.1", daemon.http_port) for _ in range(2)]
        try:
            extra = await trio.open_tcp_stream("127.0.0.1", daemon.http_port)
            answer = b""
            while chunk := await extra.receive_some(4096):
                answer += chunk
            await extra.aclose()
        finally:
            for stream in held:
                await stream.aclose()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503")
    assert b"retry-after: 1" in head.lower()
    assert json.loads(body)["error"]["code"] == "busy"
    # Once they are gone (the daemon sees them close), a client is served again.
    assert daemon.http_listener is not None
    with trio.fail_after(TIMEOUT):
        await daemon.http_listener.wait_closed()
    async with http_client(daemon) as client:
        assert (await client.post("/sessions")).status_code == 201


class _Service:
    """A session service that answers every call with `reply`, or raises."""

    def __init__(self, reply: p.Message | None) -> None:
        self.reply = reply

    async def call(self, principal: object, request: p.Message) -> p.Message:
        if self.reply is None:
            raise RuntimeError("a bug")
        return self.reply


def _app(reply: p.Message | None) -> HttpChannel:
    settings = HttpSettings(server_name="test", limits=p.Limits(), max_body=1024,
                            read_timeout=30, sse_heartbeat=15, sse_queue=8,
                            sse_queue_bytes=1 << 20,
                            write_timeout=30, check_admin_key=lambda key: False)

    async def figures() -> dict[str, Any]:
        return {}

    return HttpChannel(_Service(reply), settings, Metrics(),  # type: ignore[arg-type]
                       BrowserRules(frozenset(), listen_hosts("127.0.0.1")),
                       figures, lambda client: None)


async def _put(channel: HttpChannel) -> httpx.Response:
    transport = httpx.ASGITransport(app=channel.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        with trio.fail_after(TIMEOUT):
            return await client.put("/sessions/s/data/k", json=1,
                                    headers={"Authorization": "Bearer t"})


async def test_busy_unavailable_and_internal_errors() -> None:
    r = await _put(_app(p.Error(id=0, code="busy", message="session s is busy",
                                retry_after=0.2)))
    error_of(r, 429, "busy")
    assert r.headers["retry-after"] == "1"
    error_of(await _put(_app(p.Error(id=0, code="unavailable", message="later"))), 503,
             "unavailable")
    error_of(await _put(_app(p.Error(id=0, code="no_such_code"))), 500, "internal")
    r = await _put(_app(None))
    assert "internal error" in error_of(r, 500, "internal")
    # While the daemon drains, every request is refused.
    draining = _app(p.Written(id=0, seq=1, version=1))
    assert (await _put(draining)).status_code == 200
    draining.shutdown()
    r = await _put(draining)
    error_of(r, 503, "unavailable")
    assert r.headers["retry-after"] == "1"


@pytest.mark.daemon_config(http="127.0.0.1:0", allowed_hosts="nexus.internal")
async def test_one_pair_of_allow_lists_for_both_listeners(daemon: Daemon) -> None:
    """--allowed-hosts names the hosts HTTP answers to as well, and the
    daemon's own origin under that name may write."""
    async with http_client(daemon) as client:
        host = f"nexus.internal:{daemon.http_port}"
        error_of(await client.post("/sessions"), 403, "forbidden")  # Host: 127.0.0.1:port
        created = (await client.post("/sessions", headers={"Host": host})).json()
        sid, auth = created["session_id"], {"Authorization": f"Bearer {created['token']}"}
        error_of(await client.get(f"/sessions/{sid}", headers={**auth, "Host": "localhost"}),
                 403, "forbidden")
        r = await client.put(f"/sessions/{sid}/data/k", json=1,
                             headers={**auth, "Host": host, "Origin": f"http://{host}"})
        assert r.status_code == 200, r.text
        error_of(await client.put(f"/sessions/{sid}/data/k", json=1,
                                  headers={**auth, "Host": host,
                                           "Origin": "http://nexus.internal:1"}),
                 403, "forbidden")
