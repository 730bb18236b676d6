"""Observability on the gateway, over toy nodes on loopback: /metrics, /api/sollol/nodes,
/api/sollol/events, /dashboard; API keys; no credential anywhere; a third-party observer."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from routing_support import ToyEmulator, cluster_nodes, toy, toy_plugins

from sollol import hookimpl
from sollol.gateway import Gateway
from sollol.pool import AsyncPool
from sollol.testing.emulator import EmulatedModel, EmuRequest, EmuResponse, json_response, route
from sollol.testing.servers import LoopbackServers

GATEWAY_KEY = "gw-secret-7f3a"
NODE_KEY = "node-secret-91bc"
HI = [{"role": "user", "content": "hi"}]
GiB = 1024**3


class VramToy(ToyEmulator):
    """A toy node that also reports VRAM, like Ollama's /api/ps does."""

    @route("GET", "/ps")
    async def ps(self, request: EmuRequest) -> EmuResponse:
        return json_response(
            {
                "loaded": [m.name for m in self.config.models if m.loaded],
                "running": self.in_flight,
                "waiting": 0,
                "vram_used": 3 * GiB,
                "vram_total": 8 * GiB,
            }
        )


class Seen:
    """A third-party observer, written the way a plugin would be: it only implements the hook."""

    def __init__(self) -> None:
        self.kinds: list[str] = []
        self._wanted: dict[str, threading.Event] = {}

    @hookimpl
    def sollol_activity_event(self, event: Any) -> None:
        self.kinds.append(event.kind)
        wanted = self._wanted.get(f"{event.kind} {event.node}")
        if wanted is not None:
            wanted.set()

    def expect(self, kind: str, node: str) -> threading.Event:
        return self._wanted.setdefault(f"{kind} {node}", threading.Event())


class Cluster:
    def __init__(self, servers: LoopbackServers, gateway: Gateway, url: str, toys: dict[str, Any], seen: Seen) -> None:
        self.servers = servers
        self.gateway = gateway
        self.url = url
        self.toys = toys
        self.seen = seen
        self.client = httpx.Client(base_url=url, headers={"authorization": f"Bearer {GATEWAY_KEY}"}, timeout=10)

    def metrics(self) -> dict[str, Any]:
        answer = self.client.get("/metrics")
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/plain")
        return {f.name: f for f in text_string_to_metric_families(answer.text)}

    def status(self) -> dict[str, Any]:
        answer = self.client.get("/api/sollol/nodes")
        assert answer.status_code == 200, answer.text
        document: dict[str, Any] = answer.json()
        return document


def total(family: Any, suffix: str = "", **labels: str) -> float:
    return sum(
        s.value
        for s in family.samples
        if s.name.endswith(suffix) and all(s.labels.get(k) == v for k, v in labels.items())
    )


@pytest.fixture
def cluster(loopback_servers: LoopbackServers) -> Iterator[Cluster]:
    a = VramToy(toy("a", EmulatedModel(name="llama3.2:latest", loaded=True)).config)
    b = toy("b", EmulatedModel(name="llama3.2:latest", loaded=False), EmulatedModel(name="qwen3:0.6b", loaded=False))
    specs = list(cluster_nodes(loopback_servers, a, b))
    for spec in specs:
        spec["api_key"] = NODE_KEY
    seen = Seen()
    plugins = toy_plugins(seen)
    pool = AsyncPool(specs, plugins=plugins, health_interval=0.05, refresh_interval=0.2, failure_threshold=1)
    gateway = Gateway(pool, api_keys=[GATEWAY_KEY])
    running = loopback_servers.start(gateway)
    toys = {"a": (a, loopback_servers.running[0]), "b": (b, loopback_servers.running[1])}
    cluster = Cluster(loopback_servers, gateway, running.url, toys, seen)
    cluster.status()  # starts the pool: health probes begin
    try:
        yield cluster
    finally:
        cluster.client.close()
        loopback_servers._call(gateway.aclose())


def serve_some(cluster: Cluster) -> None:
    client = cluster.client
    assert client.post("/api/chat", json={"model": "llama3.2", "messages": HI, "stream": False}).status_code == 200
    assert client.post("/api/chat", json={"model": "llama3.2", "messages": HI}).status_code == 200  # streamed
    assert client.post("/api/generate", json={"model": "llama3.2", "prompt": "hi", "stream": False}).status_code == 200
    assert client.post("/v1/chat/completions", json={"model": "llama3.2", "messages": HI}).status_code == 200
    answer = client.post("/v1/chat/completions", json={"model": "llama3.2", "messages": HI, "stream": True})
    assert answer.status_code == 200


def test_metrics_parse_and_counters_move_as_requests_are_served(cluster: Cluster) -> None:
    before = cluster.metrics()
    assert total(before["sollol_requests"], "_total") == 0
    serve_some(cluster)
    after = cluster.metrics()
    requests = after["sollol_requests"]
    assert total(requests, "_total") == 5
    assert total(requests, "_total", protocol="ollama", outcome="ok") == 3
    assert total(requests, "_total", protocol="openai", outcome="ok") == 2
    assert total(requests, "_total", model="llama3.2", operation="chat") == 4
    assert {s.labels["node"] for s in requests.samples} <= {"a", "b"}
    assert total(after["sollol_request_duration_seconds"], "_count") == 5
    assert total(after["sollol_time_to_first_token_seconds"], "_count") == 2  # the two streamed answers
    durations = after["sollol_request_duration_seconds"]
    assert total(durations, "_bucket", le="+Inf") == 5  # cumulative buckets end at the count
    assert total(durations, "_bucket", le="300.0") == 5 and total(durations, "_sum") > 0
    serve_some(cluster)
    assert total(cluster.metrics()["sollol_requests"], "_total") == 10


def test_metrics_describe_every_node(cluster: Cluster) -> None:
    families = cluster.metrics()
    assert total(families["sollol_node_up"], node="a", backend="toy") == 1
    assert total(families["sollol_node_up"], node="b") == 1
    assert total(families["sollol_node_state"], node="a", state="up") == 1
    assert total(families["sollol_node_state"], node="a", state="down") == 0
    assert total(families["sollol_node_circuit_state"], node="b", state="closed") == 1
    assert total(families["sollol_node_in_flight"], node="a") == 0
    assert total(families["sollol_node_queued"], node="a") == 0
    assert total(families["sollol_node_models"], node="b") == 2
    assert total(families["sollol_node_loaded_models"], node="a") == 1
    assert total(families["sollol_node_vram_used_bytes"], node="a") == 3 * GiB
    assert total(families["sollol_node_vram_total_bytes"], node="a") == 8 * GiB
    assert [
        s for s in families["sollol_node_vram_total_bytes"].samples if s.labels["node"] == "b"
    ] == []  # not reported
    assert total(families["sollol_node_backend_running"], node="b") == 0
    assert "sollol_queue_depth" in families


def test_a_stopped_node_shows_down_in_metrics_and_status_and_comes_back(cluster: Cluster) -> None:
    _, running = cluster.toys["b"]
    down = cluster.seen.expect("node.down", "b")
    cluster.servers.stop(running)
    assert down.wait(5), "the pool never saw node b go down"
    families = cluster.metrics()
    assert total(families["sollol_node_up"], node="b") == 0
    assert total(families["sollol_node_state"], node="b", state="down") == 1
    assert total(families["sollol_node_state_changes"], "_total", node="b", state="down") == 1
    node = next(n for n in cluster.status()["nodes"] if n["id"] == "b")
    assert node["state"] == "down" and node["healthy"] is False and node["last_error"]
    up = cluster.seen.expect("node.up", "b")
    cluster.servers.restart(running)
    assert up.wait(5), "the pool never saw node b come back"
    assert total(cluster.metrics()["sollol_node_up"], node="b") == 1


def test_status_document_has_every_node_and_the_routing_decisions(cluster: Cluster) -> None:
    serve_some(cluster)
    document = cluster.status()
    assert document["schema"] == 1
    assert document["summary"]["nodes"] == 2 and document["summary"]["healthy"] == 2
    nodes = {n["id"]: n for n in document["nodes"]}
    a, b = nodes["a"], nodes["b"]
    assert a["backend"] == "toy" and a["state"] == "up" and a["circuit"] == "closed"
    assert a["models"] == [{"name": "llama3.2:latest", "loaded": True}]
    assert {m["name"]: m["loaded"] for m in b["models"]} == {"llama3.2:latest": False, "qwen3:0.6b": False}
    assert a["vram"] == {"used": 3 * GiB, "total": 8 * GiB}
    assert b["vram"] == {"used": None, "total": None}
    assert a["in_flight"] == 0 and a["queued"] == 0
    assert a["served"] + b["served"] == 5
    decisions = document["decisions"]
    assert len(decisions) == 5
    assert decisions[0]["protocol"] == "openai" and decisions[-1]["protocol"] == "ollama"
    for decision in decisions:
        assert decision["node"] in ("a", "b") and decision["outcome"] == "ok"
        assert decision["policy"] == "sollol" and decision["reason"].startswith("sollol picked it")
        assert decision["latency"] is not None and decision["parts"]
    series = document["series"]
    assert sum(series["requests"]) == 5 and len(series["requests"]) == 120
    assert sum(sum(v) for v in series["requests_by_node"].values()) == 5
    assert any(v is not None for v in series["latency_avg"])


def test_a_failed_attempt_is_a_decision_with_its_reason(cluster: Cluster) -> None:
    from sollol.testing.emulator import Fault

    a, _ = cluster.toys["a"]
    b, _ = cluster.toys["b"]
    a.inject(Fault.error(500, {"error": "boom"}))
    b.inject(Fault.error(500, {"error": "boom"}))
    answer = cluster.client.post("/api/chat", json={"model": "llama3.2", "messages": HI, "stream": False})
    assert answer.status_code >= 500
    document = cluster.status()
    failed = [d for d in document["decisions"] if d["outcome"] == "error"]
    assert failed and all("boom" in (d["error"] or "") for d in failed)
    retried = [d for d in failed if d["attempt"] == 2]
    assert retried and "after" in retried[0]["reason"]
    families = cluster.metrics()
    assert total(families["sollol_requests"], "_total", outcome="error") == len(failed)
    assert total(families["sollol_request_failures"], "_total") == len(failed)


def test_no_credential_appears_anywhere(cluster: Cluster) -> None:
    serve_some(cluster)
    for path in ("/api/sollol/nodes", "/metrics", "/dashboard"):
        text = cluster.client.get(path).text
        assert GATEWAY_KEY not in text and NODE_KEY not in text, path


def test_api_key_protects_every_observability_route(cluster: Cluster) -> None:
    with httpx.Client(base_url=cluster.url, timeout=5) as anonymous:
        for path in ("/metrics", "/dashboard", "/api/sollol/nodes", "/api/sollol/events"):
            answer = anonymous.get(path)
            assert answer.status_code == 401, path
            challenges = answer.headers.get_list("www-authenticate")
            assert any(c.startswith("Basic") for c in challenges)  # so a browser asks for the key
            assert anonymous.get(path, auth=("anyone", "wrong")).status_code == 401
        assert anonymous.get("/api/sollol/nodes", auth=("anyone", GATEWAY_KEY)).status_code == 200
        assert anonymous.get("/metrics", headers={"x-api-key": GATEWAY_KEY}).status_code == 200


def test_event_stream_pushes_a_node_change_at_once(cluster: Cluster) -> None:
    _, running = cluster.toys["a"]
    with cluster.client.stream("GET", "/api/sollol/events", params={"interval": 30}) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        events = _sse(stream.iter_lines())
        first = next(events)
        assert {n["id"]: n["state"] for n in first["nodes"]} == {"a": "up", "b": "up"}
        cluster.servers.stop(running)  # the interval is 30 s: only a pushed change arrives this soon
        for document in events:
            if next(n for n in document["nodes"] if n["id"] == "a")["state"] == "down":
                break
    cluster.servers.restart(running)


def _sse(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    kind = None
    for line in lines:
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: ") and kind == "status":
            yield json.loads(line[6:])


def test_dashboard_page_is_self_contained(cluster: Cluster) -> None:
    answer = cluster.client.get("/dashboard")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/html")
    csp = answer.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    page = answer.text
    assert "<script src" not in page and "<link" not in page and "@import" not in page
    for scheme in ("http://", "https://"):
        assert page.count(scheme) == page.count(scheme + "www.w3.org/2000/svg"), "only the SVG namespace URI"
    assert 'EventSource("api/sollol/events")' in page


def test_observers_go_away_with_the_gateway(loopback_servers: LoopbackServers) -> None:
    nodes = list(cluster_nodes(loopback_servers, toy("a")))
    plugins = toy_plugins()
    hooks = plugins.pm.hook.sollol_activity_batch
    before = len(hooks.get_hookimpls())
    gateway = Gateway(AsyncPool(nodes, plugins=plugins, health_interval=0))
    assert len(hooks.get_hookimpls()) == before + 3  # metrics, dashboard feed and event log
    loopback_servers._call(gateway.aclose())
    assert len(hooks.get_hookimpls()) == before
    plain = Gateway(AsyncPool(nodes, plugins=plugins, health_interval=0), observe=False)
    assert "/metrics" not in plain.paths and len(hooks.get_hookimpls()) == before
    loopback_servers._call(plain.aclose())


def test_a_raising_third_party_observer_breaks_nothing(loopback_servers: LoopbackServers) -> None:
    class Broken:
        @hookimpl
        def sollol_activity_event(self, event: Any) -> None:
            raise RuntimeError("observer bug")

    nodes = list(cluster_nodes(loopback_servers, toy("a")))
    seen = Seen()
    pool = AsyncPool(nodes, plugins=toy_plugins(Broken(), seen), health_interval=0)
    gateway = Gateway(pool)
    url = loopback_servers.start(gateway).url
    with httpx.Client(base_url=url, timeout=5) as client:
        assert client.post("/api/chat", json={"model": "llama3.2", "messages": HI, "stream": False}).status_code == 200
        families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
    assert total(families["sollol_requests"], "_total") == 1
    # one event per plain request: request.finished carries the routing decision
    assert seen.kinds.count("request.finished") == 1 and "request.routed" not in seen.kinds
    loopback_servers._call(gateway.aclose())
