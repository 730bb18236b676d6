"""Detection in the core, with a toy backend plugin (no real backend plugin installed)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import pluggy
import pytest

import sollol
from sollol import hookimpl, hookspecs
from sollol.activity import ModelInfo
from sollol.detect import DetectedNode, decide, detect_async, normalise_spec, read_node
from sollol.detection import Detection, NodeState, ProbeSet
from sollol.discovery import ConfigFileNodes, EnvironmentNodes, ExplicitNodes, LocalhostNodes, SubnetScan
from sollol.errors import ConfigError
from sollol.http import Exchange, HttpRequest, HttpResponse, fetch
from sollol.node import Node
from sollol.plugins import Plugins
from sollol.testing.emulator import Emulator, EmuRequest, EmuResponse, json_response, route, text_response
from sollol.testing.servers import LoopbackServers, free_port

# -- a toy backend: "toy" servers answer GET /toy with {"toy": version} --------------------------


class ToyEmulator(Emulator):
    """A server of the toy kind; `locked` answers 401 to /models, `loading` 503 to /toy."""

    def __init__(self, *, version: str = "1.0", locked: bool = False, loading: bool = False, **kw: Any) -> None:
        super().__init__(**kw)
        self.version = version
        self.locked = locked
        self.loading = loading

    @route("GET", "/toy")
    async def toy(self, request: EmuRequest) -> EmuResponse:
        if self.loading:
            return json_response({"loading": True}, 503)
        return json_response({"toy": self.version})

    @route("GET", "/models")
    async def models(self, request: EmuRequest) -> EmuResponse:
        if self.locked:
            return json_response({"error": "locked"}, 401)
        return json_response({"models": [m.name for m in self.config.models]})


class OtherEmulator(Emulator):
    """Something that answers HTTP but is no kind any plugin knows; `openai` adds /v1/models."""

    def __init__(self, *, openai: bool = False, **kw: Any) -> None:
        super().__init__(**kw)
        self.openai = openai

    @route("GET", "/")
    async def root(self, request: EmuRequest) -> EmuResponse:
        return text_response("hello")

    @route("GET", "/v1/models")
    async def v1_models(self, request: EmuRequest) -> EmuResponse:
        if not self.openai:
            return text_response("no", 404)
        return json_response({"object": "list", "data": [{"id": "m1", "object": "model"}]})


class ToyBackend:
    """The toy codec: just what detection and discovery use."""

    name = "toy"
    default_ports = (18199,)
    operations = frozenset({"chat"})

    def health(self) -> HttpRequest:
        return HttpRequest.get("/toy")

    def health_state(self, response: HttpResponse) -> NodeState:
        if not response.reached:
            return NodeState.DOWN
        return NodeState.UP if response.ok else NodeState.LOADING

    def models(self) -> Exchange[Sequence[ModelInfo]]:
        response = yield from fetch(HttpRequest.get("/models"))
        if not response.ok:
            from sollol.codec import http_error

            raise http_error(response)
        return [ModelInfo(name=n) for n in (response.json_object() or {}).get("models", [])]


class ToyPlugin:
    """Registers the toy backend and recognises toy servers."""

    __name__ = "toy_plugin"

    @hookimpl
    def sollol_register_backends(self, register: Callable[[Any], None]) -> None:
        register(ToyBackend())

    @hookimpl
    def sollol_detection_probes(self) -> Sequence[HttpRequest]:
        return (HttpRequest.get("/toy"),)

    @hookimpl
    def sollol_detect(self, probes: ProbeSet) -> Detection | None:
        answer = probes.get("/toy")
        if answer.status == 503 and (answer.json_object() or {}).get("loading"):
            return Detection(backend="toy", confidence=80, state=NodeState.LOADING, reason="toy, loading")
        data = answer.json_object() or {}
        if answer.ok and "toy" in data:
            return Detection(backend="toy", confidence=80, version=str(data["toy"]), reason="/toy answers")
        return None


class BuiltinSources:
    """The discovery sources `sollol.builtins` registers (without its routing policies)."""

    @hookimpl
    def sollol_register_discovery_sources(self, register: Callable[[Any], None]) -> None:
        for source in (ExplicitNodes(), EnvironmentNodes(), ConfigFileNodes(), LocalhostNodes(), SubnetScan()):
            register(source)


def isolated_plugins(*objs: object) -> Plugins:
    """SOLLOL's discovery sources and `objs` only, whatever else is installed."""
    pm = pluggy.PluginManager("sollol")
    pm.add_hookspecs(hookspecs)
    pm.register(BuiltinSources(), name="sources")
    for obj in objs:
        pm.register(obj)
    pm.check_pending()
    return Plugins(pm)


def toy_plugins(*extra: object) -> Plugins:
    """The built-ins plus the toy plugin (and `extra`)."""
    return isolated_plugins(ToyPlugin(), *extra)


@pytest.fixture
def plugins() -> Plugins:
    return toy_plugins()


# -- URL normalisation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "url"),
    [
        ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000"),
        ("http://127.0.0.1:8000/v1/", "http://127.0.0.1:8000"),
        ("127.0.0.1:11434/", "http://127.0.0.1:11434"),
        ("http://127.0.0.1:11434/api/tags", "http://127.0.0.1:11434"),
        ("http://127.0.0.1:8080/v1/models", "http://127.0.0.1:8080"),
        ("http://127.0.0.1:8080/v1/chat/completions", "http://127.0.0.1:8080"),
        ("  http://[::1]:8000/v1 ", "http://[::1]:8000"),
        ("https://example.invalid/v1", "https://example.invalid:443"),
    ],
)
def test_pasted_urls_are_normalised(given: str, url: str) -> None:
    assert read_node(given).url == url


def test_normalise_leaves_other_paths_and_non_strings() -> None:
    assert normalise_spec("http://h:1/x/v1") == "http://h:1/x"
    node = Node(host="h", port=1)
    assert normalise_spec(node) is node
    with pytest.raises(ConfigError):
        read_node("http://h:1/x/v1")


def test_read_node_names_backend_only_when_the_spec_does_not() -> None:
    assert read_node("h:1", backend="VLLM").backend == "vllm"
    assert read_node({"url": "http://h:1", "backend": "tgi"}, backend="vllm").backend == "tgi"


# -- deciding from probe answers (no network) ------------------------------------------------------


def _answers(**paths: HttpResponse) -> ProbeSet:
    return ProbeSet({f"GET {p.replace('_', '/')}": r for p, r in paths.items()})


def test_decide_unreached_is_down_with_the_reason(plugins: Plugins) -> None:
    probes = ProbeSet({"GET /toy": HttpResponse(status=0, error="ConnectError: refused")})
    found = decide(Node(host="127.0.0.1", port=1), probes, plugins)
    assert found.state is NodeState.DOWN
    assert found.backend is None
    assert "refused" in found.reason


def test_decide_unrecognised_and_generic_openai(plugins: Plugins) -> None:
    node = Node(host="127.0.0.1", port=1)
    plain = ProbeSet({"GET /": HttpResponse(status=200, body=b"hi")})
    found = decide(node, plain, plugins)
    assert (found.backend, found.state) == (None, NodeState.UNKNOWN)
    openai = ProbeSet({"GET /v1/models": HttpResponse(status=200, body=b'{"data":[{"id":"m"}]}')})
    assert "generic-openai" in decide(node, openai, plugins).reason


def test_ties_go_to_the_kind_that_cannot_be_impersonated() -> None:
    class Claims:
        __name__ = "claims"

        @hookimpl
        def sollol_detect(self, probes: ProbeSet) -> Detection | None:
            return Detection(backend="ollama", confidence=90, reason="root text")

    class MoreClaims:
        __name__ = "more_claims"

        @hookimpl
        def sollol_detect(self, probes: ProbeSet) -> Detection | None:
            return Detection(backend="localai", confidence=90, reason="well-known")

    plugins = isolated_plugins(Claims(), MoreClaims())
    probes = ProbeSet({"GET /": HttpResponse(status=200)})
    found = decide(Node(host="127.0.0.1", port=1), probes, plugins)
    assert found.backend == "localai"
    assert "ollama" in found.reason


def test_named_backend_trusts_the_user_and_reads_its_health(plugins: Plugins) -> None:
    node = Node(host="127.0.0.1", port=1, backend="toy")
    probes = ProbeSet({"GET /toy": HttpResponse(status=500, body=b"")})
    found = decide(node, probes, plugins)
    assert found.backend == "toy"
    assert found.state is NodeState.LOADING  # the toy codec reads a non-2xx health as loading
    assert "named by the user" in found.reason


# -- on loopback -----------------------------------------------------------------------------------


def test_detect_finds_kind_version_and_models(loopback_servers: LoopbackServers, plugins: Plugins) -> None:
    server = loopback_servers.start(ToyEmulator(version="2.5"), host="127.0.0.2")
    found = asyncio.run(detect_async([server.url + "/v1/"], plugins=plugins))
    (node,) = found
    assert (node.url, node.backend, node.state, node.version) == (server.url, "toy", NodeState.UP, "2.5")
    assert node.models == ("llama3.2:latest",)
    assert node.latency is not None
    assert node.latency >= 0
    data = node.to_json()
    assert {"url", "backend", "state", "version", "models", "latency_ms"} <= set(data)
    assert data["state"] == "up"


def test_detect_never_raises_for_bad_nodes(loopback_servers: LoopbackServers, plugins: Plugins) -> None:
    other = loopback_servers.start(OtherEmulator(openai=True), host="127.0.0.3")
    closed = f"http://127.0.0.4:{free_port('127.0.0.4')}"
    specs: list[Any] = [closed, "no-port-here", "ftp://h:1", other.url, {"url": other.url, "backend": "nosuch"}]
    found = asyncio.run(detect_async(specs, plugins=plugins, timeout=1.0))
    assert [f.state for f in found] == [
        NodeState.DOWN,
        NodeState.UNKNOWN,
        NodeState.UNKNOWN,
        NodeState.UNKNOWN,
        NodeState.UNKNOWN,
    ]
    assert found[1].url == "no-port-here"
    assert "port" in found[1].reason
    assert "generic-openai" in found[3].reason
    assert "nosuch" in found[4].reason


def test_detect_states_loading_and_auth_required(loopback_servers: LoopbackServers, plugins: Plugins) -> None:
    loading = loopback_servers.start(ToyEmulator(loading=True), host="127.0.0.5")
    locked = loopback_servers.start(ToyEmulator(locked=True), host="127.0.0.6")
    found = asyncio.run(detect_async([loading.url, locked.url], plugins=plugins))
    assert [f.state for f in found] == [NodeState.LOADING, NodeState.AUTH_REQUIRED]
    assert found[0].backend == found[1].backend == "toy"


def test_user_names_the_backend(loopback_servers: LoopbackServers, plugins: Plugins) -> None:
    # An unrecognisable server, named as toy by the user: trusted, and its models listed.
    other = loopback_servers.start(OtherEmulator(), host="127.0.0.7")
    found = asyncio.run(detect_async([other.url], plugins=plugins, backend="toy", models=False))
    assert (found[0].backend, found[0].reason) == ("toy", "backend named by the user")


def test_detect_sync_and_export(loopback_servers: LoopbackServers, plugins: Plugins) -> None:
    server = loopback_servers.start(ToyEmulator(), host="127.0.0.8")
    found = sollol.detect(server.url, plugins=plugins)
    assert isinstance(found, DetectedNode)
    assert found.backend == "toy"


def test_detect_sync_works_under_a_running_loop(loopback_servers: LoopbackServers, plugins: Plugins) -> None:
    server = loopback_servers.start(ToyEmulator(), host="127.0.0.9")

    async def inside() -> DetectedNode:
        return sollol.detect(server.url, plugins=plugins)

    assert asyncio.run(inside()).backend == "toy"
