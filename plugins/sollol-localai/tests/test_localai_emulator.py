"""The LocalAI emulator in-process (httpx.ASGITransport): its wire shapes match section 7."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable, Coroutine
from typing import Any

import httpx
import pytest

from sollol.testing.emulator import EmulatedModel, EmulatorConfig, Fault
from sollol_localai.emulator import LocalAIEmulator


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """Run an async test on its own event loop (no pytest-asyncio needed)."""

    @functools.wraps(test)
    def sync() -> None:
        asyncio.run(test())

    return sync


MODELS = [EmulatedModel(name="qwen2.5-7b-instruct"), EmulatedModel(name="embedder", embedding=True, dimensions=4)]


def make(**knobs: Any) -> LocalAIEmulator:
    config = knobs.pop("config", None) or EmulatorConfig(
        models=[EmulatedModel(name=m.name, embedding=m.embedding, dimensions=m.dimensions) for m in MODELS],
        name="localai-test",
    )
    return LocalAIEmulator(config, **knobs)


def client(app: LocalAIEmulator) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:8080", headers={"accept": "application/json"}
    )


def events(body: bytes) -> list[Any]:
    out = []
    for block in body.decode().split("\n\n"):
        if block.startswith("data: "):
            data = block[len("data: ") :]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


@run
async def test_health_routes_echo_and_fiber() -> None:
    async with client(make()) as c:
        for path in ("/healthz", "/readyz"):
            answer = await c.get(path)
            assert (answer.status_code, answer.content, answer.headers.get("content-type")) == (200, b"", None)
    async with client(make(config=EmulatorConfig(version="v2.20.1 (abc)"))) as c:
        answer = await c.get("/readyz")
        assert (answer.status_code, answer.text) == (200, "OK")
        assert (await c.get("/.well-known/localai.json")).status_code == 404
        assert (await c.get("/api/version")).status_code == 404


@run
async def test_readyz_while_starting() -> None:
    async with client(make(starting=True)) as c:
        answer = await c.get("/readyz")
        assert answer.status_code == 503
        assert answer.json() == {"status": "starting", "reason": "startup preload in progress"}
        assert (await c.get("/healthz")).status_code == 200


@run
async def test_version_system_models_and_404() -> None:
    async with client(make(config=EmulatorConfig(version="v4.9.0 (82c191a)", models=list(MODELS)))) as c:
        assert (await c.get("/version")).json() == {"version": "v4.9.0 (82c191a)"}
        system = (await c.get("/system")).json()
        assert system["loaded_models"][0] == {"id": "qwen2.5-7b-instruct", "backend": "llama-cpp"}
        models = (await c.get("/v1/models")).json()
        assert models == {
            "object": "list",
            "data": [{"id": "qwen2.5-7b-instruct", "object": "model"}, {"id": "embedder", "object": "model"}],
        }
        missing = await c.get("/info")
        assert missing.status_code == 404
        assert missing.json() == {"error": {"code": 404, "message": "Resource not found", "type": ""}}
        discovery = (await c.get("/.well-known/localai.json")).json()
        assert "endpoints" in discovery
        assert "endpoint_groups" in discovery
    async with client(make(system_backend=False)) as c:
        assert (await c.get("/system")).json()["loaded_models"][0] == {"id": "qwen2.5-7b-instruct"}


@run
async def test_backend_monitor_states() -> None:
    app = make(config=EmulatorConfig(models=[EmulatedModel(name="qwen"), EmulatedModel(name="cold", loaded=False)]))
    async with client(app) as c:
        ready = await c.get("/backend/monitor", params={"model": "qwen"})
        assert ready.json()["state"] == 2
        assert ready.json()["memory"]["total"] > 0
        cold = await c.get("/backend/monitor", params={"model": "cold"})
        assert cold.status_code == 500
        assert cold.json()["error"]["message"] == "backend cold is not currently loaded"
        assert (await c.get("/backend/monitor")).status_code == 400


@run
async def test_api_key() -> None:
    async with client(make(config=EmulatorConfig(api_key="sekret", models=list(MODELS)))) as c:
        for path in ("/system", "/v1/models", "/version", "/metrics"):
            answer = await c.get(path)
            assert answer.status_code == 401, path
            assert answer.json() == {
                "error": {"code": 401, "message": "An authentication key is required", "type": "invalid_request_error"}
            }
        for path in ("/healthz", "/readyz", "/.well-known/localai.json"):
            assert (await c.get(path)).status_code == 200, path
        assert (await c.get("/v1/models", headers={"authorization": "Bearer sekret"})).status_code == 200
        assert (await c.get("/v1/models", headers={"x-api-key": "sekret"})).status_code == 200


@run
async def test_chat_non_stream() -> None:
    async with client(make()) as c:
        answer = await c.post(
            "/v1/chat/completions",
            json={"model": "qwen2.5-7b-instruct", "messages": [{"role": "user", "content": "hi there"}]},
        )
        data = answer.json()
        assert data["object"] == "chat.completion"
        assert "system_fingerprint" not in data
        assert data["model"] == "qwen2.5-7b-instruct"
        assert data["choices"][0]["message"]["role"] == "assistant"
        assert data["usage"]["total_tokens"] == data["usage"]["prompt_tokens"] + data["usage"]["completion_tokens"]


@run
async def test_chat_stream_shape() -> None:
    async with client(make()) as c:
        body = {
            "model": "qwen2.5-7b-instruct",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
            "max_tokens": 3,
        }
        plain = events((await c.post("/v1/chat/completions", json=body)).content)
        assert plain[0]["choices"][0]["delta"]["role"] == "assistant"
        assert plain[-2]["choices"][0]["finish_reason"] == "length"
        assert plain[-2]["choices"][0]["delta"] == {}
        assert plain[-1] == "[DONE]"
        assert all("usage" not in e for e in plain[:-1])
        with_usage = events(
            (await c.post("/v1/chat/completions", json={**body, "stream_options": {"include_usage": True}})).content
        )
        assert with_usage[-2]["choices"] == []
        assert with_usage[-2]["usage"]["completion_tokens"] == 3
        assert len(with_usage) == len(plain) + 1


@run
async def test_old_versions_put_usage_on_every_chunk() -> None:
    async with client(make(config=EmulatorConfig(version="v4.2.4 (abc)", models=list(MODELS)))) as c:
        body = {"model": "qwen2.5-7b-instruct", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        found = events((await c.post("/v1/chat/completions", json=body)).content)
        assert all("usage" in e for e in found[:-1])
        assert found[-2]["usage"]["completion_tokens"] > 0
        assert found[0]["usage"]["completion_tokens"] == 0


@run
async def test_completions_and_embeddings() -> None:
    async with client(make()) as c:
        done = (await c.post("/v1/completions", json={"model": "qwen2.5-7b-instruct", "prompt": "once"})).json()
        assert done["object"] == "text_completion"
        assert done["choices"][0]["text"]
        streamed = events(
            (
                await c.post("/completions", json={"model": "qwen2.5-7b-instruct", "prompt": "once", "stream": True})
            ).content
        )
        assert streamed[-1] == "[DONE]"
        assert streamed[-2]["choices"][0]["finish_reason"] == "stop"
        vectors = (await c.post("/v1/embeddings", json={"model": "embedder", "input": ["a", "b"]})).json()
        assert [d["index"] for d in vectors["data"]] == [0, 1]
        assert len(vectors["data"][0]["embedding"]) == 4


@run
async def test_generation_errors() -> None:
    async with client(make()) as c:
        unknown = await c.post("/v1/chat/completions", json={"model": "foo", "messages": []})
        assert unknown.status_code == 404
        assert unknown.json()["error"] == {
            "code": 404,
            "message": 'model "foo" not found. To see available models, call GET /v1/models',
            "type": "invalid_request_error",
        }
        malformed = await c.post("/v1/chat/completions", content=b"{nope")
        assert malformed.status_code == 400
        wrong_kind = await c.post("/v1/embeddings", json={"model": "qwen2.5-7b-instruct", "input": "a"})
        assert wrong_kind.status_code == 500


@run
async def test_opaque_errors() -> None:
    async with client(make(opaque_errors=True)) as c:
        answer = await c.post("/v1/chat/completions", json={"model": "foo", "messages": []})
        assert (answer.status_code, answer.content) == (404, b"")


@run
async def test_faults() -> None:
    app = make()
    body = {"model": "qwen2.5-7b-instruct", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    async with client(app) as c:
        app.inject(Fault.stream_error(after=1, message="backend died"))
        broken = events((await c.post("/v1/chat/completions", json=body)).content)
        assert broken[-2] == {"error": {"code": "server_error", "message": "backend died", "type": "server_error"}}
        assert broken[-1] == "[DONE]"
        app.inject(Fault.truncate(after=1))
        cut = events((await c.post("/v1/chat/completions", json=body)).content)
        assert "[DONE]" not in cut
        assert all(e["choices"][0]["finish_reason"] is None for e in cut)
        app.inject(Fault.error(429, {"error": {"code": 429, "message": "busy", "type": ""}}))
        assert (await c.post("/v1/chat/completions", json=body)).status_code == 429
        app.inject(Fault.drop())
        with pytest.raises(Exception):
            await c.post("/v1/chat/completions", json=body)
        app.inject(Fault.hang(seconds=60))
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(c.post("/v1/chat/completions", json=body), 0.2)
        assert (await c.post("/v1/chat/completions", json={**body, "stream": False})).status_code == 200


@run
async def test_metrics_has_api_call_histogram_only() -> None:
    async with client(make()) as c:
        await c.post("/v1/chat/completions", json={"model": "qwen2.5-7b-instruct", "messages": []})
        text = (await c.get("/metrics")).text
        assert 'api_call_count{method="POST",path="/v1/chat/completions"' in text
        assert "api_call_bucket" in text
        assert "api_call_sum" in text
        assert "running" not in text
        assert "queue" not in text
        assert "waiting" not in text


@run
async def test_ollama_compat_routes() -> None:
    async with client(make(ollama_root=True)) as c:
        assert (await c.get("/")).text == "Ollama is running"
        assert (await c.get("/api/version")).json() == {"version": "0.9.0"}
        tags = (await c.get("/api/tags")).json()["models"]
        assert tags[0]["name"] == "qwen2.5-7b-instruct:latest"
        assert tags[0]["size"] == 0
        assert tags[0]["digest"].startswith("sha256:")
        ps = (await c.get("/api/ps")).json()["models"]
        assert ps[0]["size_vram"] == 0
        answer = await c.post(
            "/api/chat", json={"model": "qwen2.5-7b-instruct", "messages": [{"role": "user", "content": "hi"}]}
        )
        assert answer.headers["content-type"] == "application/x-ndjson"
        lines = [json.loads(line) for line in answer.text.splitlines()]
        assert lines[-1]["done"] is True
        assert lines[-1]["done_reason"] == "stop"
        assert all(line["done"] is False for line in lines[:-1])
        generated = (
            await c.post("/api/generate", json={"model": "qwen2.5-7b-instruct", "prompt": "x", "stream": False})
        ).json()
        assert generated["done"] is True
        assert generated["response"]
        embedded = (await c.post("/api/embed", json={"model": "embedder", "input": ["a"]})).json()
        assert len(embedded["embeddings"]) == 1
        missing = await c.post("/api/chat", json={"model": "nope", "messages": []})
        assert missing.status_code == 404
        assert missing.json() == {"error": "model 'nope' not found"}


@run
async def test_ollama_compat_failure_and_empty_lists() -> None:
    app = make(config=EmulatorConfig(models=[]))
    async with client(app) as c:
        assert (await c.get("/api/tags")).json() == {"models": None}
        assert (await c.get("/api/ps")).json() == {"models": None}
        assert (await c.get("/")).headers["content-type"].startswith("text/html")  # the web UI, not Ollama's text
    app = make()
    app.inject(Fault.stream_error(after=1))
    async with client(app) as c:
        answer = await c.post(
            "/api/chat", json={"model": "qwen2.5-7b-instruct", "messages": [{"role": "user", "content": "hi"}]}
        )
        last = json.loads(answer.text.splitlines()[-1])
        assert last["done"] is True
        assert last["done_reason"] == "error"


@run
async def test_token_speed_and_parallel() -> None:
    app = make(config=EmulatorConfig(models=list(MODELS), parallel=1, token_delay=0.001, max_tokens=3))

    async def one(c: httpx.AsyncClient) -> int:
        return (await c.post("/v1/chat/completions", json={"model": "qwen2.5-7b-instruct", "messages": []})).status_code

    async with client(app) as c:
        assert await asyncio.gather(*(one(c) for _ in range(4))) == [200] * 4
    assert app.max_in_flight == 1
    assert app.served == 4
