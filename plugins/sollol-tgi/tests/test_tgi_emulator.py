"""The TGI emulator in-process (httpx.ASGITransport): its wire shapes match section 5."""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Callable, Coroutine
from typing import Any

import httpx
import pytest

from sollol.testing.emulator import EmulatedModel, EmulatorConfig, Fault
from sollol_tgi.emulator import DEFAULT_MODEL, TGIEmulator

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """Run an async test on its own event loop."""

    @functools.wraps(test)
    def sync() -> None:
        asyncio.run(test())

    return sync


def make(**knobs: Any) -> TGIEmulator:
    config = knobs.pop("config", None) or EmulatorConfig(
        models=[EmulatedModel(name=MODEL, context_length=8192)],
        name="tgi-test",
        api_key=knobs.pop("api_key", None),
        token_delay=knobs.pop("token_delay", 0.0),
    )
    return TGIEmulator(config, **knobs)


def client(app: TGIEmulator) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:3000")


def events(body: bytes) -> list[Any]:
    """SSE `data:` payloads, as TGI writes them (no space after the colon)."""
    out: list[Any] = []
    for block in body.decode().split("\n\n"):
        if block.startswith("data:"):
            data = block[len("data:") :]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


# -- plain routes -------------------------------------------------------------------------------------


@run
async def test_health_routes_are_empty_200s() -> None:
    async with client(make()) as c:
        for path in ("/", "/health", "/ping"):
            answer = await c.get(path)
            assert answer.status_code == 200
            assert answer.content == b""
            assert "content-type" not in answer.headers


@run
async def test_unhealthy_is_503_with_tgi_error() -> None:
    async with client(make(healthy=False)) as c:
        answer = await c.get("/health")
    assert answer.status_code == 503
    assert answer.json() == {"error": "unhealthy", "error_type": "healthcheck"}


@run
async def test_unknown_route_and_wrong_method_are_empty() -> None:
    async with client(make()) as c:
        missing = await c.get("/api/tags")
        wrong = await c.get("/generate")
    assert (missing.status_code, missing.content) == (404, b"")
    assert (wrong.status_code, wrong.content) == (405, b"")


@pytest.mark.parametrize(
    ("version", "router", "limit_key", "batch_fields"),
    [
        ("3.3.6", True, "max_input_tokens", False),
        ("2.2.0", True, "max_input_tokens", True),
        ("2.0.4", True, "max_input_length", True),
        ("2.0.2", False, "max_input_length", True),
        ("1.4.5", False, "max_input_length", True),
    ],
)
def test_info_shape_follows_the_version(version: str, router: bool, limit_key: str, batch_fields: bool) -> None:
    info = make(tgi_version=version).info()
    assert info["model_id"] == MODEL
    assert info["max_total_tokens"] == 8192
    assert info[limit_key] == 8191
    assert ("max_input_tokens" if limit_key == "max_input_length" else "max_input_length") not in info
    assert ("router" in info) is router
    if router:
        assert info["router"] == "text-generation-router"
    assert ("max_batch_total_tokens" in info) is batch_fields
    assert info["version"] == version


@run
async def test_info_models_and_metrics_routes() -> None:
    app = make()
    async with client(app) as c:
        info = await c.get("/info")
        models = await c.get("/v1/models")
        metrics = await c.get("/metrics")
    assert info.json()["router"] == "text-generation-router"
    assert models.json() == {
        "object": "list",
        "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": MODEL}],
    }
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert "tgi_queue_size 0" in text
    assert "tgi_batch_current_size 0" in text
    assert "tgi_request_count " in text
    assert "tgi_request_count_total" not in text  # counters have no _total suffix


def test_default_model_is_a_hub_id() -> None:
    assert TGIEmulator().info()["model_id"] == DEFAULT_MODEL


# -- request checks -------------------------------------------------------------------------------------


@run
async def test_content_type_and_body_checks() -> None:
    async with client(make()) as c:
        no_type = await c.post("/generate", content=b'{"inputs":"hi"}')
        bad_json = await c.post("/generate", content=b"{oops", headers={"content-type": "application/json"})
        no_inputs = await c.post("/generate", json={"prompt": "hi"})
    assert no_type.status_code == 415
    assert no_type.text == "Expected request with `Content-Type: application/json`"
    assert bad_json.status_code == 400
    assert no_inputs.status_code == 422
    assert "missing field `inputs`" in no_inputs.text
    assert no_inputs.headers["content-type"].startswith("text/plain")


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"temperature": 0}, "`temperature` must be strictly positive"),
        ({"top_p": 1.0}, "`top_p` must be > 0.0 and < 1.0"),
        ({"top_k": 0}, "`top_k` must be strictly positive"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "`stop` supports up to 4 stop sequences. Given: 5"),
        ({"max_new_tokens": 9000}, "`inputs` tokens + `max_new_tokens` must be <= 8192"),
    ],
)
def test_validation_errors_are_422(parameters: dict[str, Any], message: str) -> None:
    async def go() -> httpx.Response:
        async with client(make()) as c:
            return await c.post("/generate", json={"inputs": "hello there", "parameters": parameters})

    answer = asyncio.run(go())
    assert answer.status_code == 422
    assert answer.json()["error_type"] == "validation"
    assert message in answer.json()["error"]


@run
async def test_api_key_protects_only_generation_routes() -> None:
    app = make(api_key="secret")
    async with client(app) as c:
        refused = await c.post("/generate", json={"inputs": "hi"})
        allowed = await c.post("/generate", json={"inputs": "hi"}, headers={"authorization": "Bearer secret"})
        info = await c.get("/info")
        models = await c.get("/v1/models")
        metrics = await c.get("/metrics")
        health = await c.get("/health")
    assert (refused.status_code, refused.content) == (401, b"")
    assert allowed.status_code == 200
    assert [r.status_code for r in (info, models, metrics, health)] == [200, 200, 200, 200]


# -- /generate and /generate_stream -------------------------------------------------------------------------


@run
async def test_generate_details_only_when_asked() -> None:
    async with client(make()) as c:
        plain = await c.post("/generate", json={"inputs": "What is deep learning?"})
        detailed = await c.post("/generate", json={"inputs": "What is deep learning?", "parameters": {"details": True}})
        limited = await c.post("/generate", json={"inputs": "x", "parameters": {"details": True, "max_new_tokens": 2}})
    assert set(plain.json()) == {"generated_text"}
    body = detailed.json()
    assert body["details"]["finish_reason"] == "eos_token"
    assert body["details"]["tokens"][-1]["special"] is True
    assert body["details"]["generated_tokens"] == len(body["details"]["tokens"])
    assert "</s>" not in body["generated_text"]
    assert detailed.headers["x-prompt-tokens"] == "4"
    assert limited.json()["details"]["finish_reason"] == "length"
    assert limited.json()["details"]["generated_tokens"] == 2


@run
async def test_generate_stream_wire_format() -> None:
    async with client(make(keepalive_every=2)) as c:
        answer = await c.post("/generate_stream", json={"inputs": "hello", "parameters": {"details": True}})
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/event-stream")
    assert answer.headers["x-accel-buffering"] == "no"
    raw = answer.content
    assert b"data: " not in raw
    assert raw.startswith(b":\n\n")
    assert raw.count(b":\n\n") > 1
    assert b"[DONE]" not in raw
    payloads = events(raw)
    assert all(p["generated_text"] is None and p["details"] is None for p in payloads[:-1])
    final = payloads[-1]
    assert final["token"]["special"] is True
    assert final["generated_text"] == "".join(p["token"]["text"] for p in payloads[:-1])
    assert final["details"]["finish_reason"] == "eos_token"
    assert final["details"]["input_length"] == 1


@run
async def test_generate_stream_errors_are_in_band_with_200() -> None:
    async with client(make()) as c:
        answer = await c.post("/generate_stream", json={"inputs": "hi", "parameters": {"temperature": 0}})
    assert answer.status_code == 200
    assert events(answer.content) == [{"error": "`temperature` must be strictly positive", "error_type": "validation"}]


@run
async def test_generate_stream_faults() -> None:
    app = make()
    async with client(app) as c:
        app.inject(Fault.stream_error(after=2, message="shard died"))
        broken = events((await c.post("/generate_stream", json={"inputs": "hi"})).content)
        app.inject(Fault.truncate(after=2))
        cut = events((await c.post("/generate_stream", json={"inputs": "hi"})).content)
    assert broken[-1] == {"error": "shard died", "error_type": "generation"}
    assert len(broken) == 3
    assert len(cut) == 2
    assert all(p["generated_text"] is None for p in cut)


@run
async def test_compat_root_route() -> None:
    async with client(make()) as c:
        whole = await c.post("/", json={"inputs": "hi"})
        streamed = await c.post("/", json={"inputs": "hi", "stream": True})
    assert isinstance(whole.json(), list)
    assert whole.json()[0]["generated_text"]
    assert events(streamed.content)[-1]["generated_text"]


# -- the /v1 routes ---------------------------------------------------------------------------------------------


@run
async def test_chat_non_stream_shape() -> None:
    async with client(make()) as c:
        unnamed = await c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
        tgi = await c.post(
            "/v1/chat/completions", json={"model": "tgi", "messages": [{"role": "user", "content": "hi"}]}
        )
        echoed = await c.post(
            "/v1/chat/completions", json={"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}
        )
        greedy = await c.post(
            "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "temperature": 0}
        )
        top_p_one = await c.post(
            "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "top_p": 1.0}
        )
    body = unnamed.json()
    assert next(iter(body)) == "object"
    assert body["object"] == "chat.completion"
    assert body["id"] == ""
    assert body["system_fingerprint"] == "3.3.6-native"
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    assert (unnamed.json()["model"], tgi.json()["model"], echoed.json()["model"]) == (MODEL, MODEL, "gpt-4")
    assert greedy.status_code == 200
    assert top_p_one.status_code == 422


@run
async def test_chat_stream_shape() -> None:
    async with client(make()) as c:
        messages = [{"role": "user", "content": "hello"}]
        plain = events((await c.post("/v1/chat/completions", json={"messages": messages, "stream": True})).content)
        usage = events(
            (
                await c.post(
                    "/v1/chat/completions",
                    json={"messages": messages, "stream": True, "stream_options": {"include_usage": True}},
                )
            ).content
        )
    assert plain[-1] == "[DONE]"
    chunks = plain[:-1]
    assert all(next(iter(c)) == "object" and c["id"] == "" for c in chunks)
    assert all(c["choices"][0]["delta"]["role"] == "assistant" for c in chunks)
    assert all(c["usage"] is None for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"][0]["delta"]["content"] == ""
    assert usage[-2]["choices"] == []
    assert usage[-2]["usage"]["completion_tokens"] > 0


@run
async def test_chat_stream_error_then_done() -> None:
    app = make()
    async with client(app) as c:
        app.inject(Fault.stream_error(after=1, message="boom"))
        body = events((await c.post("/v1/chat/completions", json={"messages": [], "stream": True})).content)
        invalid = events(
            (await c.post("/v1/chat/completions", json={"messages": [], "stream": True, "top_p": 1.5})).content
        )
    assert body[-2] == {"error": {"message": "boom", "http_status_code": 424}}
    assert body[-1] == "[DONE]"
    assert invalid[0]["error"]["http_status_code"] == 422
    assert invalid[-1] == "[DONE]"


@run
async def test_completions_route() -> None:
    async with client(make()) as c:
        whole = await c.post("/v1/completions", json={"prompt": "Once upon", "max_tokens": 3})
        suffix = await c.post("/v1/completions", json={"prompt": "x", "suffix": "y"})
        streamed = events((await c.post("/v1/completions", json={"prompt": ["Once"], "stream": True})).content)
    assert whole.json()["choices"][0]["finish_reason"] == "length"
    assert whole.json()["usage"]["completion_tokens"] == 3
    assert suffix.status_code == 422
    assert suffix.json()["error_type"] == "suffix not supported"
    assert streamed[-1] == "[DONE]"
    assert all("text" in c["choices"][0] for c in streamed[:-1])


@run
async def test_chat_tool_call() -> None:
    tools = [{"type": "function", "function": {"name": "search", "parameters": {"type": "object"}}}]
    async with client(make()) as c:
        answer = await c.post(
            "/v1/chat/completions", json={"messages": [{"role": "user", "content": "q"}], "tools": tools}
        )
    call = answer.json()["choices"][0]["message"]["tool_calls"][0]
    assert call["function"]["name"] == "search"
    assert json.loads(call["function"]["arguments"]) == {"query": "q"}


# -- capacity -------------------------------------------------------------------------------------------------


@run
async def test_overloaded_beyond_max_concurrent_requests() -> None:
    app = make(max_concurrent_requests=1)
    app.inject(Fault.hang(seconds=30, paths=("/generate",)))
    async with client(app) as c:
        held = asyncio.create_task(c.post("/generate", json={"inputs": "first"}))
        deadline = time.monotonic() + 2
        while app.admitted < 1:
            assert time.monotonic() < deadline, "the first request never arrived"
            await asyncio.sleep(0.001)
        second = await c.post("/generate", json={"inputs": "second"})
        streamed = await c.post("/generate_stream", json={"inputs": "third"})
        held.cancel()
    assert second.status_code == 429
    assert second.json() == {"error": "Model is overloaded", "error_type": "overloaded"}
    assert streamed.status_code == 200
    assert events(streamed.content) == [{"error": "Model is overloaded", "error_type": "overloaded"}]
