"""Detection of LocalAI across versions and settings, and that its Ollama imitation fools nobody."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

import sollol_localai
from sollol.detect import DetectedNode, detect_async
from sollol.detection import NodeState, ProbeSet, probe_key
from sollol.http import HttpRequest
from sollol.plugins import Plugins
from sollol.testing.emulator import EmulatedModel, Emulator, EmulatorConfig
from sollol.transport import Transport
from sollol_localai.emulator import LocalAIEmulator

URL = "http://127.0.0.1:8080"


def detect_app(app: Emulator, plugins: Plugins | None = None) -> DetectedNode:
    """Detect an in-process app with the installed plugins (or `plugins`)."""

    async def go() -> DetectedNode:
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app))
        transport = Transport(client=client)
        try:
            (found,) = await detect_async([URL], plugins=plugins or Plugins.load(), transport=transport)
        finally:
            await transport.aclose()
        return found

    return asyncio.run(go())


def localai(version: str = "v4.9.0 (82c191a)", **knobs: Any) -> LocalAIEmulator:
    config = EmulatorConfig(
        models=[EmulatedModel(name="qwen2.5-7b-instruct")], version=version, api_key=knobs.pop("api_key", None)
    )
    return LocalAIEmulator(config, **knobs)


@pytest.mark.parametrize(
    ("app", "confidence"),
    [
        pytest.param(localai(), 95, id="echo-4.9-well-known"),
        pytest.param(localai("v4.0.1 (abc)"), 90, id="echo-4.0-no-well-known"),
        pytest.param(localai("v3.8.0 (abc)"), 90, id="echo-3.8-first-echo"),
        pytest.param(localai("v3.7.0 (abc)"), 90, id="fiber-3.7-OK-bodies"),
        pytest.param(localai("v2.20.1 (abc)", system_backend=False), 90, id="fiber-2.20-old-system"),
        pytest.param(localai("v4.9.0 ()", framework="fiber", well_known=False), 90, id="source-build-fiber-knob"),
        pytest.param(localai(ollama_root=True), 95, id="ollama-api-and-root"),
        pytest.param(localai("v4.2.0 (abc)", ollama_root=True, well_known=False), 90, id="ollama-api-no-well-known"),
    ],
)
def test_detects_localai(app: LocalAIEmulator, confidence: int) -> None:
    found = detect_app(app)
    assert found.backend == "localai", found.reason
    assert found.state is NodeState.UP
    assert found.version == app.config.version
    assert found.models == ("qwen2.5-7b-instruct",)
    claim = sollol_localai.detect_localai(probes_of(app))
    assert claim is not None
    assert claim.confidence == confidence


def test_starting_is_loading() -> None:
    found = detect_app(localai(starting=True))
    assert (found.backend, found.state) == ("localai", NodeState.LOADING)


@pytest.mark.parametrize("version", ["v4.9.0 (82c191a)", "v4.0.1 (abc)", "v3.5.0 (abc)"])
def test_auth_required(version: str) -> None:
    found = detect_app(localai(version, api_key="sekret", ollama_root=True))
    assert found.backend == "localai", found.reason
    assert found.state is NodeState.AUTH_REQUIRED
    assert found.version is None  # /version needs the key


def test_with_key_given_it_is_up() -> None:
    app = localai("v4.0.1 (abc)", api_key="sekret")
    (found,) = asyncio.run(_detect_with_key(app, "sekret"))
    assert (found.backend, found.state, found.version) == ("localai", NodeState.UP, "v4.0.1 (abc)")


async def _detect_with_key(app: Emulator, key: str) -> list[DetectedNode]:
    transport = Transport(client=httpx.AsyncClient(transport=httpx.ASGITransport(app=app)))
    try:
        return await detect_async([f"http://user:{key}@127.0.0.1:8080"], plugins=Plugins.load(), transport=transport)
    finally:
        await transport.aclose()


def test_localai_with_ollama_api_beats_the_ollama_plugin() -> None:
    """With sollol-ollama installed too, LocalAI serving the Ollama API is still LocalAI."""
    sollol_ollama = pytest.importorskip("sollol_ollama")
    plugins = Plugins.load()
    assert {"ollama", "localai"} <= set(plugins.backends)
    app = localai(ollama_root=True)
    found = detect_app(app, plugins)
    assert found.backend == "localai", found.reason
    probes = probes_of(app, plugins)
    ollama_claim = sollol_ollama.sollol_detect(probes)
    ours = sollol_localai.detect_localai(probes)
    assert ours is not None
    assert ollama_claim is None or ollama_claim.confidence < ours.confidence


def test_real_ollama_is_not_localai() -> None:
    sollol_ollama_emulator = pytest.importorskip("sollol_ollama.emulator")
    app = sollol_ollama_emulator.OllamaEmulator()
    assert sollol_localai.detect_localai(probes_of(app)) is None
    assert detect_app(app).backend == "ollama"


@pytest.mark.parametrize("kind", ["llamacpp", "tgi", "vllm", "ollama"])
def test_rejects_the_other_canonical_servers(kind: str) -> None:
    canonical = pytest.importorskip("sollol.testing.canonical")
    probes = canonical.canonical_probes(kind, sollol_localai.PROBES)
    assert sollol_localai.detect_localai(probes) is None


def test_claims_the_canonical_localai() -> None:
    canonical = pytest.importorskip("sollol.testing.canonical")
    claim = sollol_localai.detect_localai(canonical.canonical_probes("localai", sollol_localai.PROBES))
    assert claim is not None
    assert claim.backend == "localai"
    assert claim.confidence >= 90


def test_generic_health_routes_alone_are_a_weak_claim() -> None:
    """/readyz and /healthz with empty 200s, nothing else LocalAI-like: a low-confidence claim."""

    class Kube(Emulator):
        async def not_found(self, request: Any) -> Any:
            from sollol.testing.emulator import text_response

            if request.path in ("/readyz", "/healthz"):
                return text_response("", 200, None)
            return text_response("not found", 404)

    claim = sollol_localai.detect_localai(probes_of(Kube()))
    assert claim is not None
    assert claim.confidence < 50


def test_llamacpp_header_is_never_localai() -> None:
    app = localai()
    app.default_headers = (("Server", "llama.cpp"),)
    assert sollol_localai.detect_localai(probes_of(app)) is None


def probes_of(app: Emulator, plugins: Plugins | None = None) -> ProbeSet:
    """The answers `app` gives to every installed plugin's probes (and the core's)."""
    from sollol.detect import CORE_PROBES

    plugins = plugins or Plugins.load()
    requests: dict[str, HttpRequest] = {
        probe_key(p): p for p in (*plugins.detection_probes(), *CORE_PROBES, *sollol_localai.PROBES)
    }

    async def go() -> ProbeSet:
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app))
        transport = Transport(client=client)
        try:
            from sollol.node import parse_node

            node = parse_node(URL)
            answers = await asyncio.gather(*(transport.probe(node, r) for r in requests.values()))
        finally:
            await transport.aclose()
        return ProbeSet(dict(zip(requests, answers)))

    return asyncio.run(go())
