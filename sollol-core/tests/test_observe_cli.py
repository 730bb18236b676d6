"""`sollol nodes`: from a running gateway (with its API key) and straight from nodes."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from routing_support import cluster_nodes, toy, toy_plugins

import sollol.plugins
from sollol.cli import main
from sollol.gateway import Gateway
from sollol.pool import AsyncPool
from sollol.testing.emulator import EmulatedModel
from sollol.testing.servers import LoopbackServers

KEY = "cli-key-5521"


@pytest.fixture
def gateway_url(loopback_servers: LoopbackServers) -> Iterator[str]:
    nodes = list(cluster_nodes(loopback_servers, toy("a"), toy("b", EmulatedModel(name="qwen3:0.6b", loaded=False))))
    gateway = Gateway(AsyncPool(nodes, plugins=toy_plugins(), health_interval=0), api_keys=[KEY])
    yield loopback_servers.start(gateway).url
    loopback_servers._call(gateway.aclose())


def test_nodes_json_from_a_gateway(gateway_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["nodes", "--url", gateway_url, "--api-key", KEY, "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert [n["id"] for n in document["nodes"]] == ["a", "b"]
    assert all(n["state"] == "up" and n["backend"] == "toy" for n in document["nodes"])


def test_nodes_table_from_a_gateway_with_the_key_from_the_environment(
    gateway_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOLLOL_API_KEY", KEY)
    monkeypatch.setenv("SOLLOL_URL", gateway_url)
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["nodes"]) == 0
    out = capsys.readouterr().out
    assert "2 of 2 healthy" in out
    assert "llama3.2:latest*" in out and "qwen3:0.6b" in out and "qwen3:0.6b*" not in out
    assert KEY not in out


def test_nodes_says_what_is_wrong(gateway_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["nodes", "--url", gateway_url]) == 2
    assert "wants an API key" in capsys.readouterr().out
    assert main(["nodes", "--url", "http://127.0.0.1:9", "--timeout", "2"]) == 2
    assert "cannot reach a SOLLOL gateway" in capsys.readouterr().out


def test_nodes_watch_straight_from_nodes(
    loopback_servers: LoopbackServers, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sollol.plugins, "_default", toy_plugins())
    urls = [spec["url"] for spec in cluster_nodes(loopback_servers, toy("a"), toy("b"))]
    assert main(["nodes", *urls, "--backend", "toy", "--watch", "--count", "2", "--interval", "0.1", "--json"]) == 0
    out = capsys.readouterr().out
    documents = [json.loads(part) for part in _json_objects(out)]
    assert len(documents) == 2
    assert all(len(d["nodes"]) == 2 and d["summary"]["healthy"] == 2 for d in documents)


def _json_objects(text: str) -> Iterator[str]:
    depth, start = 0, 0
    for index, char in enumerate(text):
        if char == "{":
            depth += 1
            if depth == 1:
                start = index
        elif char == "}":
            depth -= 1
            if depth == 0:
                yield text[start : index + 1]
