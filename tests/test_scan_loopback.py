"""A scan of 127.0.0.0/24 with emulators of all five kinds bound across many 127.0.0.x addresses.

Every kind gets a port of its own, picked free, the way each server has its default port;
llama.cpp and LocalAI share one, as they share 8080. The scan must find exactly the emulated
nodes, each as its own kind: no node missed, nothing else reported.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from typing import Any

import attrs
import pytest

from sollol import cli
from sollol.detection import NodeState
from sollol.discovery import DiscoveryContext, discover_async
from sollol.plugins import Plugins
from sollol.testing.servers import LoopbackServers
from sollol.unified import UnifiedPool


@attrs.frozen(kw_only=True)
class Planned:
    """An emulator to run at 127.0.0.<host> on its kind's port."""

    host: int
    module: str
    emulator: str
    backend: str
    settings: dict[str, Any] = attrs.field(factory=dict)
    state: NodeState = NodeState.UP


PLAN = [
    Planned(host=11, module="sollol_ollama", emulator="OllamaEmulator", backend="ollama"),
    Planned(host=12, module="sollol_ollama", emulator="OllamaEmulator", backend="ollama"),
    Planned(host=21, module="sollol_vllm", emulator="VLLMEmulator", backend="vllm"),
    Planned(
        host=22,
        module="sollol_vllm",
        emulator="VLLMEmulator",
        backend="vllm",
        settings={"api_key": "k"},
        state=NodeState.AUTH_REQUIRED,
    ),
    Planned(host=31, module="sollol_tgi", emulator="TGIEmulator", backend="tgi", settings={"tgi_version": "2.0.2"}),
    Planned(host=32, module="sollol_tgi", emulator="TGIEmulator", backend="tgi"),
    Planned(host=41, module="sollol_llamacpp", emulator="LlamaCppEmulator", backend="llamacpp"),
    Planned(
        host=42, module="sollol_llamacpp", emulator="LlamaCppEmulator", backend="llamacpp", settings={"api_2025": True}
    ),
    Planned(
        host=51,
        module="sollol_localai",
        emulator="LocalAIEmulator",
        backend="localai",
        settings={"ollama_api": True, "ollama_root": True},
    ),
    Planned(
        host=52, module="sollol_localai", emulator="LocalAIEmulator", backend="localai", settings={"version": "3.7.0"}
    ),
    Planned(host=200, module="sollol_localai", emulator="LocalAIEmulator", backend="localai"),
]
#: The port group of each kind (llama.cpp and LocalAI share one, as they share 8080).
PORT_GROUP = {"ollama": 0, "vllm": 1, "tgi": 2, "llamacpp": 3, "localai": 3}


def _free_everywhere(count: int) -> list[int]:
    """Ports free on every 127.0.0.x the plan uses and on 127.0.0.1."""
    ports: list[int] = []
    hosts = ["127.0.0.1", *(f"127.0.0.{p.host}" for p in PLAN)]
    while len(ports) < count:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port in ports:
            continue
        try:
            for host in hosts:
                with socket.socket() as sock:
                    sock.bind((host, port))
        except OSError:
            continue
        ports.append(port)
    return ports


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[dict[str, tuple[str, NodeState]], tuple[int, ...]]]:
    """The planned emulators, running; yields {url: (backend, state)} and the ports to scan."""
    for planned in PLAN:
        pytest.importorskip(f"{planned.module}.emulator", reason=f"plugin {planned.module} is not installed")
    ports = _free_everywhere(4)
    expected: dict[str, tuple[str, NodeState]] = {}
    with LoopbackServers() as servers:
        for planned in PLAN:
            module = __import__(f"{planned.module}.emulator", fromlist=[planned.emulator])
            app = getattr(module, planned.emulator)(**planned.settings)
            running = servers.start(app, host=f"127.0.0.{planned.host}", port=ports[PORT_GROUP[planned.backend]])
            expected[running.url] = (planned.backend, planned.state)
        yield expected, tuple(ports)


def test_scan_of_the_slash_24_finds_exactly_the_emulators(
    cluster: tuple[dict[str, tuple[str, NodeState]], tuple[int, ...]],
) -> None:
    expected, ports = cluster
    context = DiscoveryContext(environ={}, scan=("127.0.0.0/24",), ports=ports)
    found = asyncio.run(discover_async(context, plugins=Plugins.load()))
    assert {f.url: (f.backend, f.state) for f in found} == expected
    assert all(f.source == "scan" for f in found)
    up = [f for f in found if f.state is NodeState.UP]
    assert all(f.models for f in up), [f for f in up if not f.models]
    assert all(f.version for f in found), [f for f in found if not f.version]


def test_discover_command_scans_with_json(
    cluster: tuple[dict[str, tuple[str, NodeState]], tuple[int, ...]],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    expected, ports = cluster
    monkeypatch.delenv("SOLLOL_NODES", raising=False)
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    monkeypatch.delenv("SOLLOL_CONFIG", raising=False)
    argv = ["discover", "--scan", "127.0.0.0/24", "--ports", ",".join(map(str, ports)), "--no-localhost", "--json"]
    assert cli.main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert {d["url"]: (d["backend"], d["state"]) for d in data} == {u: (b, s.value) for u, (b, s) in expected.items()}


def test_unified_pool_spans_every_kind(cluster: tuple[dict[str, tuple[str, NodeState]], tuple[int, ...]]) -> None:
    expected, ports = cluster
    pool = UnifiedPool.auto_discover(scan="127.0.0.0/24", ports=ports, localhost=False, environ={}, refresh_interval=0)
    try:
        usable = {u: b for u, (b, s) in expected.items() if s is NodeState.UP}
        assert {n["url"]: n["backend"] for n in pool.nodes()} == usable
        assert {b for b in usable.values()} == {"ollama", "vllm", "tgi", "llamacpp", "localai"}
        pool.start()
        assert pool.models()
    finally:
        pool.close()
