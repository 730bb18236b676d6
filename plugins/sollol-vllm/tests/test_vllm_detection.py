"""Detection of vLLM: by its model cards, behind --api-key by its open routes, and never of the others."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

import sollol_vllm
from sollol.detect import DetectedNode, detect_one
from sollol.detection import NodeState, ProbeSet
from sollol.http import HttpResponse
from sollol.testing.canonical import canonical_probes
from sollol.testing.contract import contract_plugins
from sollol.testing.emulator import EmulatedModel, EmulatorConfig
from sollol.transport import Transport
from sollol_vllm.emulator import VLLMEmulator

plugins = contract_plugins(sollol_vllm)


def detect(app: Any, url: str = "http://127.0.0.1:8000") -> DetectedNode:
    async def go() -> DetectedNode:
        transport = Transport(client=httpx.AsyncClient(transport=httpx.ASGITransport(app=app)))
        try:
            return await detect_one(url, plugins=plugins, transport=transport)
        finally:
            await transport.aclose()

    return asyncio.run(go())


def test_detects_the_emulator_with_models_and_version() -> None:
    found = detect(
        VLLMEmulator(
            EmulatorConfig(models=[EmulatedModel(name="Qwen/Qwen2.5-0.5B-Instruct")]),
            lora={"sql": "Qwen/Qwen2.5-0.5B-Instruct"},
        )
    )
    assert found.backend == "vllm"
    assert found.state is NodeState.UP
    assert found.version == "0.11.0"
    assert set(found.models) == {"Qwen/Qwen2.5-0.5B-Instruct", "sql"}


def test_a_pasted_v1_suffix_is_stripped() -> None:
    found = detect(VLLMEmulator(), url="http://127.0.0.1:8000/v1/")
    assert found.backend == "vllm"
    assert found.url == "http://127.0.0.1:8000"


def test_behind_api_key_it_is_vllm_and_needs_the_key() -> None:
    found = detect(VLLMEmulator(api_key="secret"))
    assert found.backend == "vllm"
    assert found.state is NodeState.AUTH_REQUIRED
    assert found.version == "0.11.0"
    assert "api-key" in found.reason


def test_behind_api_key_with_the_key_it_is_up() -> None:
    found = detect(VLLMEmulator(api_key="secret"), url="http://:secret@127.0.0.1:8000")
    assert found.backend == "vllm"
    assert found.state is NodeState.UP
    assert found.models == ("meta-llama/Llama-3.2-1B-Instruct",)


def test_old_version_behind_api_key() -> None:
    found = detect(VLLMEmulator(api_key="k", version="0.6.3.post1", flat_errors=True))
    assert (found.backend, found.state, found.version) == ("vllm", NodeState.AUTH_REQUIRED, "0.6.3.post1")


def test_dead_engine_is_down() -> None:
    app = VLLMEmulator()
    app.engine_dead = True
    found = detect(app)
    assert found.backend == "vllm"
    assert found.state is NodeState.DOWN


def test_dead_engine_behind_api_key_is_down() -> None:
    app = VLLMEmulator(api_key="k")
    app.engine_dead = True
    found = detect(app)
    assert (found.backend, found.state) == ("vllm", NodeState.DOWN)


# -- what must not be claimed ---------------------------------------------------------------------


def resp(status: int, body: Any = b"", headers: tuple[tuple[str, str], ...] = ()) -> HttpResponse:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    content = (("content-type", "application/json"),) if raw else ()
    return HttpResponse(status=status, headers=headers + content, body=raw)


def vllm_behind_key(changes: dict[str, HttpResponse] | None = None) -> ProbeSet:
    answers = {
        "/v1/models": resp(401, {"error": "Unauthorized"}),
        "/version": resp(200, {"version": "0.11.0"}),
        "/health": resp(200),
        "/info": resp(404, {"detail": "Not Found"}),
    }
    answers.update(changes or {})
    return ProbeSet({f"GET {path}": answer for path, answer in answers.items()})


def claims(probes: ProbeSet) -> list[str]:
    return [c.backend for c in plugins.detect(probes)]


def test_the_api_key_recipe_itself_is_claimed() -> None:
    assert claims(vllm_behind_key()) == ["vllm"]


def test_localai_version_with_commit_is_not_vllm() -> None:
    assert claims(vllm_behind_key({"/version": resp(200, {"version": "v4.9.0 (82c191afad)"})})) == []
    assert claims(vllm_behind_key({"/version": resp(200, {"version": "4.9.0 (82c191afad)"})})) == []


def test_llamacpp_header_is_not_vllm() -> None:
    probes = vllm_behind_key({"/health": resp(200, b"", (("server", "llama.cpp"),))})
    assert claims(probes) == []
    cards = {"object": "list", "data": [{"id": "m", "owned_by": "llamacpp", "max_model_len": 4096}]}
    assert claims(ProbeSet({"GET /v1/models": resp(200, cards, (("Server", "llama.cpp"),))})) == []


def test_tgi_info_is_not_vllm() -> None:
    info = {
        "model_id": "bigscience/bloom-560m",
        "max_total_tokens": 2048,
        "router": "text-generation-router",
        "version": "3.3.6",
    }
    assert claims(vllm_behind_key({"/info": resp(200, info)})) == []


def test_a_401_without_the_fastapi_404_or_empty_health_is_not_enough() -> None:
    assert claims(vllm_behind_key({"/info": resp(404)})) == []  # axum's empty 404
    assert claims(vllm_behind_key({"/health": resp(200, {"status": "ok"})})) == []
    assert (
        claims(vllm_behind_key({"/v1/models": resp(401, {"error": {"message": "Invalid API Key", "code": 401}})})) == []
    )


def test_other_openai_cards_are_not_vllm() -> None:
    cards = {
        "object": "list",
        "data": [{"id": "llama3.2:latest", "object": "model", "created": 1, "owned_by": "library"}],
    }
    assert claims(ProbeSet({"GET /v1/models": resp(200, cards)})) == []


def test_sglang_cards_are_not_vllm() -> None:
    # SGLang's cards have max_model_len and root too; their owner says whose they are.
    card = {"id": "qwen", "object": "model", "created": 1, "owned_by": "sglang", "root": "qwen", "max_model_len": 32768}
    assert claims(ProbeSet({"GET /v1/models": resp(200, {"object": "list", "data": [card]})})) == []
    ownerless = {k: v for k, v in card.items() if k != "owned_by"}
    assert claims(ProbeSet({"GET /v1/models": resp(200, {"object": "list", "data": [ownerless]})})) == ["vllm"]


@pytest.mark.parametrize("kind", ["llamacpp", "tgi", "localai", "ollama"])
def test_canned_foreign_servers_are_not_claimed(kind: str) -> None:
    assert claims(canonical_probes(kind, sollol_vllm.PROBES)) == []


def test_canned_vllm_is_claimed() -> None:
    assert claims(canonical_probes("vllm", sollol_vllm.PROBES)) == ["vllm"]


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("sollol_ollama.emulator", "OllamaEmulator"),
        ("sollol_tgi.emulator", "TGIEmulator"),
        ("sollol_llamacpp.emulator", "LlamaCppEmulator"),
        ("sollol_localai.emulator", "LocalAIEmulator"),
        ("sollol_sglang.emulator", "SGLangEmulator"),
    ],
)
def test_other_plugins_emulators_are_not_claimed(module: str, name: str) -> None:
    """Where the other plugins are installed too (the dev venv, the integration run)."""
    emulator = getattr(pytest.importorskip(module), name)
    for settings in ({}, {"api_key": "k"}):
        found = detect(emulator(**settings))
        assert found.backend != "vllm", f"{name}({settings}) claimed as vLLM: {found.reason}"
