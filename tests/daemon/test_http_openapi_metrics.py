"""The HTTP channel's OpenAPI document matches the routes served, and its
metrics are the Prometheus text format with bounded labels."""

from __future__ import annotations

import re

import nexus_protocol as p
import pytest
from http_client import http_client
from prometheus_client.parser import text_string_to_metric_families
from raw_client import connect_unix
from starlette.routing import Route

from nexusd import Daemon

HTTP = pytest.mark.daemon_config(http="127.0.0.1:0")


def _served(daemon: Daemon) -> set[tuple[str, str]]:
    """(method, path) of every route the app serves, as OpenAPI spells paths."""
    assert daemon.http is not None
    served = set()
    for route in daemon.http.app.routes:
        assert isinstance(route, Route) and route.methods
        if route.path == "/mcp":
            continue  # JSON-RPC, which MCP describes (tools/list), not OpenAPI
        path = route.path.replace(":path}", "}")
        served |= {(m, path) for m in route.methods if m != "HEAD"}
    return served


@HTTP
async def test_every_route_is_documented_and_every_documented_route_exists(
        daemon: Daemon) -> None:
    async with http_client(daemon) as client:
        doc = (await client.get("/openapi.json")).json()
        assert doc["openapi"].startswith("3.1")
        documented = {(m.upper(), path) for path, ops in doc["paths"].items() for m in ops}
        assert documented == _served(daemon)
        # Each documented route answers on the live listener: never "no route"
        # nor "method not allowed", whatever else it says without credentials.
        for method, path in sorted(documented):
            url = re.sub(r"{\w+}", "x", path)
            r = await client.request(method, url)
            assert r.status_code != 405, (method, path)
            assert not (r.status_code == 404 and "no route" in r.text), (method, path)
        # Every schema a route names is defined.
        schemas = doc["components"]["schemas"]
        for ops in doc["paths"].values():
            for op in ops.values():
                for ref in re.findall(r'"\$ref": "#/components/schemas/(\w+)"',
                                      str(op).replace("'", '"')):
                    assert ref in schemas


@HTTP
async def test_metrics_in_the_prometheus_format_without_per_session_labels(
        daemon: Daemon) -> None:
    assert daemon.socket_path is not None
    async with connect_unix(daemon.socket_path) as unix, http_client(daemon) as client:
        created = (await client.post("/sessions")).json()
        sid, auth = created["session_id"], {"Authorization": f"Bearer {created['token']}"}
        await unix.call(p.Attach, session_id=sid, token=created["token"])
        for i in range(3):
            assert (await client.put(f"/sessions/{sid}/data/k", json=i,
                                     headers=auth)).status_code == 200
        await client.get(f"/sessions/{sid}/data/absent", headers=auth)  # a 404
        r = await client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}

    def value(name: str, suffix: str = "", **labels: str) -> float:
        return next(s.value for s in families[name].samples
                    if s.name in (name + suffix, name + "_total")
                    and all(s.labels.get(k) == v for k, v in labels.items()))

    assert value("nexusd_sessions", state="active") == 1
    assert value("nexusd_connections", transport="unix") == 1
    assert value("nexusd_connections", transport="http") == 1
    assert value("nexusd_acknowledged_writes") == 3
    assert value("nexusd_lagged") == 0
    assert value("nexusd_subscribers") == 1
    assert value("nexusd_commit_seconds", "_count") == 3
    assert value("nexusd_sync_seconds", "_count") == 3
    assert value("nexusd_http_requests", method="PUT", status="200",
                 route="/sessions/{session_id}/data/{key}") == 3
    assert value("nexusd_http_errors", code="not_found") == 1
    for reason in ("ttl", "idle", "invalidated"):
        assert value("nexusd_sessions_ended", reason=reason) == 0
    # Bounded cardinality: no label holds a session id, a key or a path.
    assert sid not in r.text and "/absent" not in r.text


@HTTP
async def test_methods_a_client_invents_are_counted_as_other(daemon: Daemon) -> None:
    async with http_client(daemon) as client:
        for i in range(50):
            r = await client.request(f"INVENTED{i}", "/sessions" if i % 2 else "/nowhere")
            assert r.status_code in (404, 405)
        await client.request("OPTIONS", "/sessions")
        r = await client.get("/metrics")
    assert "INVENTED" not in r.text
    samples = [s for f in text_string_to_metric_families(r.text)
               if f.name == "nexusd_http_requests" for s in f.samples
               if s.name == "nexusd_http_requests_total"]
    assert {s.labels["method"] for s in samples} <= {
        "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"}
    assert sum(s.value for s in samples if s.labels["method"] == "other") == 50
    assert any(s.labels["method"] == "OPTIONS" for s in samples)
