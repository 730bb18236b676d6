"""Detection across the five real plugins, on their emulators, for every hard case of issue 4.

Each case is an emulator configured as `reference/backend-protocols.md` section 2 describes a
server that fools naive probes, served on its own 127.0.0.x address. A case whose plugin is
not installed is skipped with the reason.
"""

from __future__ import annotations

import asyncio
from typing import Any

import attrs
import pytest

from sollol.detect import DetectedNode, detect_async
from sollol.detection import NodeState
from sollol.node import Node
from sollol.plugins import Plugins
from sollol.testing.servers import LoopbackServers


@attrs.frozen(kw_only=True)
class Case:
    """An emulator configuration and what detection must say about it."""

    id: str
    module: str  # the plugin's import package
    emulator: str  # class name in `<module>.emulator`
    settings: dict[str, Any] = attrs.field(factory=dict)
    backend: str
    state: NodeState = NodeState.UP
    version: str | None = None  # checked as a prefix when given
    has_models: bool = True


CASES = [
    Case(id="ollama", module="sollol_ollama", emulator="OllamaEmulator", backend="ollama", version="0.12.6"),
    # LocalAI >= 4.2 answers /api/version (0.9.0), /api/tags, /api/ps, and with
    # LOCALAI_OLLAMA_API_ROOT_ENDPOINT=true even "Ollama is running" at /.
    Case(
        id="localai-serving-ollama-api-and-root-text",
        module="sollol_localai",
        emulator="LocalAIEmulator",
        settings={"version": "4.9.0", "ollama_api": True, "ollama_root": True},
        backend="localai",
        version="4.9.0",
    ),
    Case(
        id="localai-ollama-api-without-well-known",
        module="sollol_localai",
        emulator="LocalAIEmulator",
        settings={"version": "4.9.0", "ollama_api": True, "ollama_root": True, "well_known": False},
        backend="localai",
        version="4.9.0",
    ),
    # llama.cpp builds of May 2025 - Apr 2026 serve /api/tags, /api/show, /api/chat.
    Case(
        id="llamacpp-2025-build-serving-api",
        module="sollol_llamacpp",
        emulator="LlamaCppEmulator",
        settings={"api_2025": True},
        backend="llamacpp",
    ),
    Case(id="llamacpp", module="sollol_llamacpp", emulator="LlamaCppEmulator", backend="llamacpp"),
    # A llama.cpp server still loading its model answers 503 on every route, with its header.
    Case(
        id="llamacpp-still-loading",
        module="sollol_llamacpp",
        emulator="LlamaCppEmulator",
        settings={"loading": True},
        backend="llamacpp",
        state=NodeState.LOADING,
        has_models=False,
    ),
    Case(id="vllm", module="sollol_vllm", emulator="VLLMEmulator", backend="vllm", version="0.11.0"),
    # vLLM --api-key: /v1/* answers 401 {"error":"Unauthorized"}; /version and /health stay open.
    Case(
        id="vllm-behind-api-key",
        module="sollol_vllm",
        emulator="VLLMEmulator",
        settings={"api_key": "s3cret"},
        backend="vllm",
        state=NodeState.AUTH_REQUIRED,
        version="0.11.0",
        has_models=False,
    ),
    Case(
        id="vllm-0.10-flat-errors",
        module="sollol_vllm",
        emulator="VLLMEmulator",
        settings={"flat_errors": True},
        backend="vllm",
        version="0.10.0",
    ),
    # TGI before 2.0.3 has no `router` in /info; before 2.1.0 `max_input_length`.
    Case(
        id="tgi-2.0.2-no-router",
        module="sollol_tgi",
        emulator="TGIEmulator",
        settings={"tgi_version": "2.0.2"},
        backend="tgi",
        version="2.0.2",
    ),
    Case(
        id="tgi-2.0.3-router",
        module="sollol_tgi",
        emulator="TGIEmulator",
        settings={"tgi_version": "2.0.3"},
        backend="tgi",
        version="2.0.3",
    ),
    Case(id="tgi-3", module="sollol_tgi", emulator="TGIEmulator", backend="tgi"),
    # LocalAI before v3.8 ran on Fiber: /readyz and /healthz answer the body "OK", and there is
    # no /.well-known/localai.json (before v4.1.1). From v3.8 Echo answers them empty.
    Case(
        id="localai-3.7-fiber",
        module="sollol_localai",
        emulator="LocalAIEmulator",
        settings={"version": "3.7.0"},
        backend="localai",
        version="3.7.0",
    ),
    Case(
        id="localai-3.8-echo",
        module="sollol_localai",
        emulator="LocalAIEmulator",
        settings={"version": "3.8.0"},
        backend="localai",
        version="3.8.0",
    ),
    Case(id="localai-4.9", module="sollol_localai", emulator="LocalAIEmulator", backend="localai"),
    Case(
        id="localai-starting",
        module="sollol_localai",
        emulator="LocalAIEmulator",
        settings={"starting": True},
        backend="localai",
        state=NodeState.LOADING,
        has_models=False,
    ),
]


def make_emulator(case: Case) -> Any:
    """The case's emulator; skips the test when its plugin is not installed."""
    emulators = pytest.importorskip(
        f"{case.module}.emulator", reason=f"plugin {case.module} is not installed (needed for {case.id})"
    )
    return getattr(emulators, case.emulator)(**case.settings)


@pytest.fixture(scope="module")
def plugins() -> Plugins:
    return Plugins.load()


@pytest.fixture
def servers(loopback_servers: LoopbackServers) -> LoopbackServers:
    return loopback_servers


def _detect(plugins: Plugins, spec: Any, **kw: Any) -> DetectedNode:
    return asyncio.run(detect_async([spec], plugins=plugins, **kw))[0]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hard_case(case: Case, plugins: Plugins, servers: LoopbackServers) -> None:
    emulator = make_emulator(case)
    index = CASES.index(case)
    server = servers.start(emulator, host=f"127.0.0.{100 + index}")
    found = _detect(plugins, server.url + "/v1/")
    assert (found.backend, found.state) == (case.backend, case.state), found.reason
    assert found.url == server.url
    if case.version is not None:
        assert found.version is not None, found
        assert found.version.startswith(case.version), found
    if case.has_models:
        assert found.models, f"no models reported: {found}"


def test_vllm_with_the_key_is_up_and_lists_models(plugins: Plugins, servers: LoopbackServers) -> None:
    emulator = make_emulator(
        Case(
            id="vllm-key", module="sollol_vllm", emulator="VLLMEmulator", settings={"api_key": "s3cret"}, backend="vllm"
        )
    )
    server = servers.start(emulator, host="127.0.0.140")
    found = _detect(plugins, Node(host=server.host, port=server.port, api_key="s3cret"))
    assert (found.backend, found.state) == ("vllm", NodeState.UP), found.reason
    assert found.models


def test_loading_llamacpp_becomes_up(plugins: Plugins, servers: LoopbackServers) -> None:
    emulator = make_emulator(
        Case(
            id="llamacpp-load",
            module="sollol_llamacpp",
            emulator="LlamaCppEmulator",
            settings={"loading": True},
            backend="llamacpp",
        )
    )
    server = servers.start(emulator, host="127.0.0.141")
    assert _detect(plugins, server.url).state is NodeState.LOADING
    emulator.loading = False
    found = _detect(plugins, server.url)
    assert (found.backend, found.state) == ("llamacpp", NodeState.UP)
    assert found.models


@pytest.mark.parametrize("named", ["ollama", "localai"])
def test_the_user_can_name_the_backend(named: str, plugins: Plugins, servers: LoopbackServers) -> None:
    # A LocalAI that serves the Ollama API can be used as either kind when the user says so.
    emulator = make_emulator(
        Case(
            id="named",
            module="sollol_localai",
            emulator="LocalAIEmulator",
            settings={"version": "4.9.0", "ollama_api": True, "ollama_root": True},
            backend="localai",
        )
    )
    pytest.importorskip("sollol_ollama", reason="plugin sollol_ollama is not installed")
    host = "127.0.0.142" if named == "ollama" else "127.0.0.143"
    server = servers.start(emulator, host=host)
    found = _detect(plugins, server.url, backend=named)
    assert (found.backend, found.state) == (named, NodeState.UP), found.reason
    assert found.models


def test_detection_is_parallel_and_in_order(plugins: Plugins, servers: LoopbackServers) -> None:
    emulators = [make_emulator(c) for c in CASES[:3]]
    urls = [servers.start(e, host=f"127.0.0.{150 + i}").url for i, e in enumerate(emulators)]
    found = asyncio.run(detect_async(urls, plugins=plugins))
    assert [f.url for f in found] == urls
    assert [f.backend for f in found] == [c.backend for c in CASES[:3]]
