"""`UnifiedPool.auto_discover()`, its async form, and the per-backend discovery conveniences."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from test_detect import OtherEmulator, ToyEmulator, toy_plugins

import sollol
from sollol import unified
from sollol.errors import ConfigError
from sollol.node import Node
from sollol.testing.servers import LoopbackServers, free_port
from sollol.unified import AsyncUnifiedPool, UnifiedPool, discover_nodes, discover_nodes_async


def test_discover_nodes_keeps_usable_nodes_of_the_kinds_asked(loopback_servers: LoopbackServers) -> None:
    toy = loopback_servers.start(ToyEmulator(), host="127.0.0.71")
    loading = loopback_servers.start(ToyEmulator(loading=True), host="127.0.0.72")
    other = loopback_servers.start(OtherEmulator(), host="127.0.0.73")
    closed = f"127.0.0.74:{free_port('127.0.0.74')}"
    specs = [toy.url, loading.url, other.url, closed]
    plugins = toy_plugins()
    found = discover_nodes(specs, plugins=plugins, localhost=False, environ={})
    assert [f.url for f in found] == [toy.url, loading.url]
    assert discover_nodes(specs, plugins=plugins, localhost=False, environ={}, backends=["vllm"]) == []
    every = asyncio.run(discover_nodes_async(specs, plugins=plugins, localhost=False, environ={}, usable_only=False))
    assert len(every) == 4


def test_unified_pool_auto_discover(loopback_servers: LoopbackServers) -> None:
    port = free_port("127.0.0.75")
    toys = [loopback_servers.start(ToyEmulator(), host=f"127.0.0.{x}", port=port) for x in (75, 77)]
    pool = UnifiedPool.auto_discover(
        plugins=toy_plugins(), scan="127.0.0.72/29", ports=[port], localhost=False, environ={}, refresh_interval=0
    )
    assert isinstance(pool, UnifiedPool)
    assert [(n["url"], n["backend"]) for n in pool.nodes()] == [(t.url, "toy") for t in toys]
    assert [d.source for d in pool.discovered] == ["scan", "scan"]
    pool.close()


def test_async_unified_pool_auto_discover(loopback_servers: LoopbackServers) -> None:
    toy = loopback_servers.start(ToyEmulator(), host="127.0.0.78")

    async def build() -> AsyncUnifiedPool:
        return await sollol.auto_discover_async(
            [toy.url], plugins=toy_plugins(), localhost=False, environ={}, policy="round_robin"
        )

    pool = asyncio.run(build())
    assert isinstance(pool, AsyncUnifiedPool)
    assert [(n["url"], n["backend"]) for n in pool.nodes()] == [(toy.url, "toy")]
    assert pool.discovered[0].backend == "toy"


def test_nothing_found_is_an_actionable_error() -> None:
    closed = f"127.0.0.79:{free_port('127.0.0.79')}"
    with pytest.raises(ConfigError, match="no usable node of kind vllm"):
        UnifiedPool.auto_discover([closed], plugins=toy_plugins(), localhost=False, environ={}, backends=["vllm"])


@pytest.mark.parametrize("kind", ["ollama", "vllm", "tgi", "llamacpp", "localai"])
def test_per_backend_conveniences_share_one_implementation(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []

    def fake(nodes: Any = (), **kw: Any) -> list[Any]:
        calls.append({"nodes": nodes, **kw})
        return []

    monkeypatch.setattr(unified, "discover_nodes", fake)
    convenience = getattr(sollol, f"discover_{kind}_nodes")
    assert convenience.__name__ == f"discover_{kind}_nodes"
    assert convenience(["h:1"], scan="10.0.0.0/30") == []
    assert calls == [{"nodes": ["h:1"], "backends": [kind], "scan": "10.0.0.0/30"}]


def test_conveniences_return_nodes_with_their_kind(loopback_servers: LoopbackServers) -> None:
    toy = loopback_servers.start(ToyEmulator(), host="127.0.0.80")
    nodes = unified._kind_discovery("toy")([toy.url], plugins=toy_plugins(), localhost=False, environ={})
    assert nodes == [Node(host="127.0.0.80", port=toy.port, backend="toy")]
