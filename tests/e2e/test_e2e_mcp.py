"""The MCP channel with the SDK's own client: ``nexus mcp`` (stdio) as an MCP
host launches it, against a real daemon, and the daemon's ``/mcp``."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import mcp_types as types
import pytest
import trio
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from nexus_client import RunContext, Worker, open_client

from ._procs import NEXUS, Cli, DaemonProcess, clean_environ

TOOLS = {"run_workflow", "get_recommended_channel", "generate_insights",
         "track_session_event", "create_session", "sync_session", "get_session_data",
         "set_session_data",
         "delete_session_data", "patch_session_data", "update_session_context",
         "initiate_channel_switch", "complete_channel_switch", "renew_session",
         "get_session_summary"}

#: Hard bound of one MCP exchange in these tests, in seconds.
TIMEOUT = 30


class Notes:
    """The resource-updated notifications a client received."""

    def __init__(self) -> None:
        self.updated: list[str] = []
        self._changed = trio.Event()

    async def handle(self, message: Any) -> None:
        if isinstance(message, types.ResourceUpdatedNotification):
            self.updated.append(str(message.params.uri))
            self._changed.set()
            self._changed = trio.Event()

    async def wait_for(self, uri: str) -> None:
        with trio.fail_after(TIMEOUT):
            while uri not in self.updated:
                await self._changed.wait()


def _create(cli: Cli, *extra: str) -> dict[str, Any]:
    result = cli.run("session", "create", "--json", *extra)
    assert result.code == 0, result.err
    return dict(json.loads(result.out))


@asynccontextmanager
async def bridge(cli: Cli, *args: str, notes: Notes | None = None) -> AsyncIterator[Client]:
    params = StdioServerParameters(command=NEXUS[0], args=[*NEXUS[1:], "mcp", *args],
                                   env=cli.env)
    with trio.fail_after(TIMEOUT):
        async with Client(params, mode="legacy",
                          message_handler=notes.handle if notes else None) as client:
            yield client


def _text(result: types.CallToolResult) -> str:
    block = result.content[0]
    assert isinstance(block, types.TextContent)
    return block.text


# Hosts of the handshake era (all of them today) subscribe this way; the SDK
# warns that the 2026-07-28 protocol replaces it with `subscriptions/listen`.
@pytest.mark.filterwarnings("ignore:resources/subscribe is removed")
async def test_stdio_round_trip_and_cli_write_notified(daemon: DaemonProcess, cli: Cli) -> None:
    sid = _create(cli)["session_id"]
    notes = Notes()
    async with bridge(cli, "--session", sid, notes=notes) as client:
        tools = await client.list_tools()
        assert {t.name for t in tools.tools} == TOOLS
        resources = await client.list_resources()
        assert [r.uri for r in resources.resources] == [f"nexus://sessions/{sid}"]
        written = await client.call_tool("set_session_data",
                                         {"session_id": sid, "key": "task", "value": "draft"})
        assert not written.is_error, _text(written)
        state = await client.call_tool("sync_session", {"session_id": sid})
        assert state.structured_content["entries"]["task"]["value"] == "draft"
        assert state.structured_content["entries"]["task"]["channel"] == "mcp"

        uri = f"nexus://sessions/{sid}/data/task"
        await client.subscribe_resource(uri)
        done = await trio.to_thread.run_sync(cli.run, "set", sid, "task", "final")
        assert done.code == 0, done.err
        await notes.wait_for(uri)
        read = await client.read_resource(uri)
        content = read.contents[0]
        assert isinstance(content, types.TextResourceContents)
        assert json.loads(content.text)["value"] == "final"

        conflict = await client.call_tool("set_session_data", {
            "session_id": sid, "key": "task", "value": "x", "expected_version": 1})
        assert conflict.is_error
        assert _text(conflict).startswith("conflict: ")
        assert "re-read" in _text(conflict)


async def test_stdio_wrong_token_refused(daemon: DaemonProcess, cli: Cli) -> None:
    other = _create(cli, "--no-save")["session_id"]
    async with bridge(cli) as client:
        result = await client.call_tool("get_session_data",
                                        {"session_id": other, "token": "not-the-token"})
        assert result.is_error
        assert _text(result).startswith("unauthorized: ")
        bare = await client.call_tool("sync_session", {"session_id": other})
        assert bare.is_error


async def test_create_then_continue_without_token(daemon: DaemonProcess, cli: Cli) -> None:
    async with bridge(cli) as client:
        created = await client.call_tool("create_session", {"metadata": {"from": "agent"}})
        assert not created.is_error, _text(created)
        sid = created.structured_content["session_id"]
        assert "token" not in created.structured_content
        written = await client.call_tool("set_session_data",
                                         {"session_id": sid, "key": "k", "value": [1, 2]})
        assert not written.is_error, _text(written)
        assert written.structured_content["version"] == 1
        advice = await client.call_tool("get_recommended_channel",
                                        {"session_id": sid, "task_type": "ai_interaction"})
        assert advice.structured_content["channel"] == "mcp", _text(advice)
        insights = await client.call_tool("generate_insights", {"session_id": sid})
        assert not insights.is_error, _text(insights)


def test_bridge_exits_when_stdin_closes(daemon: DaemonProcess, cli: Cli) -> None:
    # An empty stdin: the host closed it before saying anything.
    done = subprocess.run([*NEXUS, "mcp"], input=b"", capture_output=True, env=cli.env,
                          timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    assert done.stdout == b""


# ------------------------------------------------------------ streamable HTTP


@pytest.fixture(scope="module")
def http_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """A daemon with its HTTP listener (and so ``/mcp``) on a free port."""
    base = tmp_path_factory.mktemp("mcp-http")
    sockets = Path(tempfile.mkdtemp(prefix="nx-"))
    (base / "home").mkdir()
    process = DaemonProcess(base / "data", sockets / "n.sock", base / "nexusd.log",
                            "--durability", "memory", env=clean_environ(base / "home"),
                            http=True)
    process.start()
    try:
        process.wait_ready()
        yield process
        code = process.stop()
        log = process.log_text()
        assert code == 0, log
        assert "Traceback" not in log, log
    finally:
        process.kill()
        shutil.rmtree(sockets, ignore_errors=True)


@asynccontextmanager
async def over_http(daemon: DaemonProcess, token: str | None = None,
                    notes: Notes | None = None) -> AsyncIterator[Client]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with trio.fail_after(TIMEOUT):
        async with httpx2.AsyncClient(headers=headers) as http, Client(
                streamable_http_client(f"{daemon.http_url}/mcp", http_client=http),
                mode="legacy", message_handler=notes.handle if notes else None) as client:
            yield client


# The SDK's HTTP client leaves httpx2's (and httpcore2's) stream generators for trio to finalize.
HTTPX2_GENERATORS = "ignore:Async generator 'http:ResourceWarning"


@pytest.mark.filterwarnings("ignore:resources/subscribe is removed", HTTPX2_GENERATORS)
async def test_http_bearer_round_trip_and_cli_write_notified(http_daemon: DaemonProcess,
                                                             home: Path) -> None:
    cli = Cli({**clean_environ(home), "NEXUS_SOCKET": str(http_daemon.socket)})
    created = _create(cli)
    sid, token = created["session_id"], created["token"]
    notes = Notes()
    async with over_http(http_daemon, token, notes) as client:
        before = _subscribers(cli)
        assert {t.name for t in (await client.list_tools()).tools} == TOOLS
        templates = await client.list_resource_templates()
        assert {t.uri_template for t in templates.resource_templates} == {
            "nexus://sessions/{session_id}", "nexus://sessions/{session_id}/data/{key}"}
        written = await client.call_tool("set_session_data",
                                         {"session_id": sid, "key": "step", "value": 1})
        assert not written.is_error, _text(written)
        state = await client.call_tool("sync_session", {"session_id": sid})
        assert state.structured_content["entries"]["step"] == {
            "value": 1, "version": 1, "channel": "mcp",
            "updated_at": state.structured_content["entries"]["step"]["updated_at"]}

        uri = f"nexus://sessions/{sid}"
        await client.subscribe_resource(uri)
        done = await trio.to_thread.run_sync(cli.run, "set", sid, "step", "2")
        assert done.code == 0, done.err
        await notes.wait_for(uri)

        conflict = await client.call_tool("delete_session_data", {
            "session_id": sid, "key": "step", "expected_version": 1})
        assert conflict.is_error
        assert conflict.structured_content["error"]["code"] == "conflict"
    # The MCP session is over (the client deleted it): its subscription ends with it.
    with trio.fail_after(TIMEOUT):
        while _subscribers(cli) != before:  # noqa: ASYNC110 - another process's figure
            await trio.sleep(0.05)


def _subscribers(cli: Cli) -> int:
    status = cli.run("status", "--json")
    assert status.code == 0, status.err
    return int(json.loads(status.out)["subscribers"])


@pytest.mark.filterwarnings(HTTPX2_GENERATORS)
async def test_http_wrong_token_refused(http_daemon: DaemonProcess, home: Path) -> None:
    cli = Cli({**clean_environ(home), "NEXUS_SOCKET": str(http_daemon.socket)})
    sid = _create(cli)["session_id"]
    async with over_http(http_daemon, "wrong-token") as client:
        result = await client.call_tool("sync_session", {"session_id": sid})
        assert result.is_error
        assert _text(result).startswith("unauthorized: ")
    async with over_http(http_daemon) as client:
        result = await client.call_tool("get_session_data", {"session_id": sid, "key": "k"})
        assert result.is_error
        assert result.structured_content["error"]["code"] == "unauthorized"


# ------------------------------------------------------------------ workflows


async def _tally(ctx: RunContext, inputs: dict[str, Any]) -> dict[str, Any]:
    await ctx.progress(1, 2, "counting")
    await ctx.progress(2, 2, "done")
    return {"sum": sum(inputs["values"])}


async def _run_with_progress(client: Client, sid: str) -> tuple[types.CallToolResult,
                                                                list[tuple[float, str | None]]]:
    seen: list[tuple[float, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, message))

    result = await client.call_tool("run_workflow", {
        "session_id": sid, "workflow": "tally", "inputs": {"values": [1, 2, 3]}},
        progress_callback=on_progress)
    return result, seen


@pytest.mark.filterwarnings(HTTPX2_GENERATORS)
async def test_run_workflow_reports_progress_and_returns_the_result(
        http_daemon: DaemonProcess, home: Path) -> None:
    cli = Cli({**clean_environ(home), "NEXUS_SOCKET": str(http_daemon.socket)})
    created = _create(cli)
    sid, token = created["session_id"], created["token"]
    async with trio.open_nursery() as nursery, open_client(
            str(http_daemon.socket), channel="worker") as worker_client:
        await nursery.start(Worker({"tally": _tally}).serve, worker_client)
        async with bridge(cli, "--session", sid) as client:
            result, seen = await _run_with_progress(client, sid)
            assert not result.is_error, _text(result)
            assert result.structured_content["status"] == "completed"
            assert result.structured_content["result"] == {"sum": 6}
            assert seen == [(0.5, "counting"), (1.0, "done")]
        async with over_http(http_daemon, token) as client:
            result, seen = await _run_with_progress(client, sid)
            assert result.structured_content["result"] == {"sum": 6}
            assert seen == [(0.5, "counting"), (1.0, "done")]
            missing = await client.call_tool("run_workflow",
                                             {"session_id": sid, "workflow": "nobody-serves"})
            assert missing.is_error
        nursery.cancel_scope.cancel()


@pytest.mark.filterwarnings(HTTPX2_GENERATORS)
async def test_http_mcp_refuses_a_foreign_page(http_daemon: DaemonProcess) -> None:
    # A page of another site (or a rebound DNS name) reaches nothing, reads included.
    async with httpx2.AsyncClient() as http:
        for method, headers in [("POST", {"Origin": "http://evil.example"}),
                                ("GET", {"Origin": "http://evil.example"}),
                                ("POST", {"Host": "evil.example"})]:
            r = await http.request(method, f"{http_daemon.http_url}/mcp", headers={
                "Accept": "application/json, text/event-stream",
                "Content-Type": "application/json", **headers},
                content=b'{"jsonrpc": "2.0", "id": 1, "method": "ping"}')
            assert r.status_code == 403, (method, headers, r.text)
            assert r.json()["error"]["code"] == "forbidden"


@pytest.mark.filterwarnings(HTTPX2_GENERATORS)
async def test_the_sdks_default_protocol_reaches_the_tools(http_daemon: DaemonProcess,
                                                           home: Path) -> None:
    # The SDK's client speaks 2026-07-28 by default: no MCP session, a credential per request.
    cli = Cli({**clean_environ(home), "NEXUS_SOCKET": str(http_daemon.socket)})
    created = _create(cli)
    sid, token = created["session_id"], created["token"]
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as http, \
            Client(streamable_http_client(f"{http_daemon.http_url}/mcp",
                                          http_client=http)) as client:
        assert client.protocol_version == "2026-07-28"
        written = await client.call_tool("set_session_data",
                                         {"session_id": sid, "key": "k", "value": "v"})
        assert not written.is_error, _text(written)
    params = StdioServerParameters(command=NEXUS[0], args=[*NEXUS[1:], "mcp", "--session", sid],
                                   env=cli.env)
    async with Client(params) as client:
        assert client.protocol_version == "2026-07-28"
        state = await client.call_tool("get_session_data", {"session_id": sid, "key": "k"})
        assert state.structured_content["value"] == "v"
