"""Discovery sources, the discovery runner, and a third-party source plugin."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from test_detect import OtherEmulator, ToyEmulator, isolated_plugins, toy_plugins

from sollol import hookimpl
from sollol.detection import NodeState
from sollol.discovery import (
    ConfigFileNodes,
    DiscoveryContext,
    EnvironmentNodes,
    LocalhostNodes,
    SubnetScan,
    discover,
    discover_async,
    load_config,
    prepare_context,
)
from sollol.errors import ConfigError
from sollol.node import Node, NodeSpec, parse_node
from sollol.plugins import Plugins
from sollol.testing.servers import LoopbackServers, free_port

# -- sources (pure) --------------------------------------------------------------------------------


def test_environment_nodes() -> None:
    context = DiscoveryContext(environ={"SOLLOL_NODES": "a:1, b:2  c:3", "OLLAMA_HOST": "0.0.0.0"})
    specs = list(EnvironmentNodes().candidates(context))
    assert specs[:3] == ["a:1", "b:2", "c:3"]
    assert specs[3] == {"url": "http://127.0.0.1:11434", "backend": "ollama"}


@pytest.mark.parametrize(
    ("value", "url"),
    [
        ("10.0.0.5", "http://10.0.0.5:11434"),
        ("https://gpu.lan:443/", "https://gpu.lan:443"),
        ("0.0.0.0:9999", "http://127.0.0.1:9999"),
        ("[::1]:11434", "http://[::1]:11434"),
    ],
)
def test_ollama_host_forms(value: str, url: str) -> None:
    (spec,) = EnvironmentNodes().candidates(DiscoveryContext(environ={"OLLAMA_HOST": value}))
    assert parse_node(spec).url == url


def test_empty_environment_names_nothing() -> None:
    assert list(EnvironmentNodes().candidates(DiscoveryContext(environ={}))) == []


def test_config_file_nodes(tmp_path: Path) -> None:
    path = tmp_path / "sollol.toml"
    path.write_text(
        'nodes = ["http://10.0.0.5:11434", { url = "http://10.0.0.6:8000/v1", backend = "vllm" }]\n'
        "[discovery]\nscan = ['10.0.0.0/30']\nports = [8000]\nlocalhost = true\n"
    )
    context = prepare_context(DiscoveryContext(environ={}, config_file=str(path)), toy_plugins())
    specs = list(ConfigFileNodes().candidates(context))
    assert [parse_node(s).url for s in specs] == ["http://10.0.0.5:11434", "http://10.0.0.6:8000"]
    assert parse_node(specs[1]).backend == "vllm"
    # the [discovery] table is the user asking: its networks and ports are used
    assert [(n.host, n.port) for n in SubnetScan().candidates(context)] == [("10.0.0.1", 8000), ("10.0.0.2", 8000)]
    assert list(LocalhostNodes().candidates(context)) == ["http://127.0.0.1:8000"]


def test_config_from_environment_variable(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('nodes = "h:1"\n')
    context = prepare_context(DiscoveryContext(environ={"SOLLOL_CONFIG": str(path)}), toy_plugins())
    assert list(ConfigFileNodes().candidates(context)) == ["h:1"]


def test_config_errors_are_actionable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("nodes = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="must be a list"):
        list(ConfigFileNodes().candidates(DiscoveryContext(config={"nodes": 5})))


def test_localhost_only_when_asked_on_every_default_port() -> None:
    ports = {"ollama": (11434,), "llamacpp": (8080,), "localai": (8080,), "vllm": (8000,)}
    assert list(LocalhostNodes().candidates(DiscoveryContext(default_ports=ports))) == []
    asked = DiscoveryContext(default_ports=ports, include_localhost=True)
    assert list(LocalhostNodes().candidates(asked)) == [
        "http://127.0.0.1:11434",
        "http://127.0.0.1:8080",
        "http://127.0.0.1:8000",
    ]


def test_default_ports_come_from_the_installed_backends() -> None:
    context = prepare_context(DiscoveryContext(environ={}), toy_plugins())
    assert context.default_ports == {"toy": (18199,)}
    assert context.scan_ports() == (18199,)


def test_nothing_is_scanned_unless_asked() -> None:
    assert list(SubnetScan().candidates(DiscoveryContext(default_ports={"x": (1,)}))) == []


def test_scan_refuses_large_networks_unless_forced() -> None:
    context = DiscoveryContext(scan=("10.0.0.0/8",), ports=(1,))
    with pytest.raises(ConfigError, match="refusing"):
        SubnetScan().candidates(context)
    forced = SubnetScan().candidates(DiscoveryContext(scan=("10.0.0.0/8",), ports=(1,), force_scan=True))
    assert next(iter(forced)) == Node(host="10.0.0.1", port=1)


def test_scan_without_any_port_is_an_error() -> None:
    with pytest.raises(ConfigError, match="no ports"):
        SubnetScan().candidates(DiscoveryContext(scan=("127.0.0.0/30",)))


# -- the runner, on loopback ------------------------------------------------------------------------


def test_discover_reports_listed_nodes_down_or_not(loopback_servers: LoopbackServers) -> None:
    toy = loopback_servers.start(ToyEmulator(version="3"), host="127.0.0.31")
    closed = f"127.0.0.32:{free_port('127.0.0.32')}"
    context = DiscoveryContext(nodes=(toy.url, closed), environ={"SOLLOL_NODES": toy.url + "/v1"})
    found = asyncio.run(discover_async(context, plugins=toy_plugins()))
    assert [(f.url, f.backend, f.state, f.source) for f in found] == [
        (toy.url, "toy", NodeState.UP, "explicit"),
        ("http://" + closed, None, NodeState.DOWN, "explicit"),
    ]


def test_scan_detects_only_what_listens(loopback_servers: LoopbackServers) -> None:
    port = free_port("127.0.0.41")
    toys = [loopback_servers.start(ToyEmulator(), host=f"127.0.0.{x}", port=port) for x in (41, 44, 46)]
    other = loopback_servers.start(OtherEmulator(), host="127.0.0.45", port=port)
    events: list[tuple[str, int, int]] = []
    context = DiscoveryContext(environ={}, scan=("127.0.0.40/29",), ports=(port,))
    found = asyncio.run(
        discover_async(context, plugins=toy_plugins(), progress=lambda *e: events.append(e), connect_timeout=1.0)
    )
    assert [(f.url, f.backend, f.source) for f in found] == [
        (toys[0].url, "toy", "scan"),
        (toys[1].url, "toy", "scan"),
        (other.url, None, "scan"),
        (toys[2].url, "toy", "scan"),
    ]
    assert found[2].state is NodeState.UNKNOWN
    assert ("scan", 6, 6) in events  # .41 - .46
    assert events[-1] == ("detect", 4, 4)


def test_localhost_source_on_named_ports(loopback_servers: LoopbackServers) -> None:
    port = free_port("127.0.0.1")
    toy = loopback_servers.start(ToyEmulator(), host="127.0.0.1", port=port)
    context = DiscoveryContext(environ={}, include_localhost=True, ports=(port,))
    found = asyncio.run(discover_async(context, plugins=toy_plugins()))
    assert [(f.url, f.backend, f.source) for f in found] == [(toy.url, "toy", "localhost")]


def test_listed_node_that_names_its_backend_is_kept_once(loopback_servers: LoopbackServers) -> None:
    toy = loopback_servers.start(ToyEmulator(), host="127.0.0.33")
    context = DiscoveryContext(nodes=(toy.url, {"url": toy.url, "backend": "toy"}), environ={})
    found = asyncio.run(discover_async(context, plugins=toy_plugins()))
    assert len(found) == 1
    assert found[0].node is not None
    assert found[0].node.backend == "toy"


def test_discover_sync_with_only_some_sources(loopback_servers: LoopbackServers) -> None:
    toy = loopback_servers.start(ToyEmulator(), host="127.0.0.34")
    context = DiscoveryContext(nodes=("127.0.0.35:1",), environ={"SOLLOL_NODES": toy.url})
    found = discover(context, plugins=toy_plugins(), sources=["environment"])
    assert [f.url for f in found] == [toy.url]


# -- a third-party source ---------------------------------------------------------------------------


class DeployFileSource:
    """Nodes from a JSON file a deploy tool writes: {"servers": [{"addr": ..., "kind": ...}]}."""

    name = "deploy-file"

    def __init__(self, path: Path) -> None:
        self.path = path

    def candidates(self, context: DiscoveryContext) -> Iterable[NodeSpec]:
        data = json.loads(self.path.read_text())
        return [{"url": f"http://{s['addr']}", "backend": s.get("kind")} for s in data["servers"]]


class DeployFilePlugin:
    """A plugin registering the source above, as a pip-installed plugin module would."""

    __name__ = "deploy_file_plugin"

    def __init__(self, path: Path) -> None:
        self.path = path

    @hookimpl
    def sollol_register_discovery_sources(self, register: Callable[[Any], None]) -> None:
        register(DeployFileSource(self.path))


class BrokenSourcePlugin:
    __name__ = "broken_source_plugin"

    class Broken:
        name = "broken"

        def candidates(self, context: DiscoveryContext) -> Iterable[NodeSpec]:
            raise RuntimeError("cannot reach the kubernetes API")

    @hookimpl
    def sollol_register_discovery_sources(self, register: Callable[[Any], None]) -> None:
        register(self.Broken())


def test_third_party_source_plugin(loopback_servers: LoopbackServers, tmp_path: Path) -> None:
    toy = loopback_servers.start(ToyEmulator(version="9"), host="127.0.0.36")
    deploy = tmp_path / "nodes.json"
    deploy.write_text(json.dumps({"servers": [{"addr": toy.address, "kind": "toy"}]}))
    plugins = Plugins.load(extra=[DeployFilePlugin(deploy)])
    assert "deploy-file" in plugins.sources
    assert "deploy-file" in next(i for i in plugins.infos if i.name == "deploy_file_plugin").sources
    toy_and_deploy = toy_plugins(DeployFilePlugin(deploy))
    found = asyncio.run(discover_async(DiscoveryContext(environ={}), plugins=toy_and_deploy))
    assert [(f.url, f.backend, f.version, f.source) for f in found] == [(toy.url, "toy", "9", "deploy-file")]


def test_a_broken_source_does_not_hide_the_others(loopback_servers: LoopbackServers, caplog: Any) -> None:
    toy = loopback_servers.start(ToyEmulator(), host="127.0.0.37")
    plugins = toy_plugins(BrokenSourcePlugin())
    found = asyncio.run(discover_async(DiscoveryContext(nodes=(toy.url,), environ={}), plugins=plugins))
    assert [f.backend for f in found] == ["toy"]
    assert "broken" in caplog.text
    assert "kubernetes" in caplog.text


def test_builtins_register_every_source() -> None:
    plugins = Plugins.load()
    assert {"explicit", "environment", "config", "localhost", "scan"} <= set(plugins.sources)


def test_isolated_plugins_have_the_same_sources() -> None:
    assert list(isolated_plugins().sources) == ["explicit", "environment", "config", "localhost", "scan"]
