"""The vLLM emulator in-process (httpx.ASGITransport): its wire shapes, and the codec against it."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx
import pytest

from sollol.activity import Activity
from sollol.codec import SseEvents
from sollol.errors import InvalidRequestError, ModelNotFoundError, NotSupportedError, StreamError
from sollol.inference import ChatRequest, EmbedRequest, GenerateRequest
from sollol.node import parse_node
from sollol.testing.contract import read_stream
from sollol.testing.emulator import EmulatedModel, EmulatorConfig, Fault
from sollol.transport import Transport
from sollol_vllm.codec import VLLMBackend
from sollol_vllm.emulator import DEFAULT_MODEL, VLLMEmulator

T = TypeVar("T")
CHAT = "Qwen/Qwen2.5-0.5B-Instruct"
EMBED = "BAAI/bge-m3"
backend = VLLMBackend()
MESSAGES = ({"role": "user", "content": "Say hello please"},)


def run(app: Any, go: Callable[[httpx.AsyncClient], Awaitable[T]]) -> T:
    async def main() -> T:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:8000"
        ) as client:
            return await go(client)

    return asyncio.run(main())


def call(app: Any, method: str, path: str, **kw: Any) -> httpx.Response:
    return run(app, lambda c: c.request(method, path, **kw))


def with_codec(app: Any, go: Callable[[Transport], Awaitable[T]], url: str = "http://127.0.0.1:8000") -> T:
    async def main() -> T:
        transport = Transport(client=httpx.AsyncClient(transport=httpx.ASGITransport(app=app)))
        try:
            return await go(transport)
        finally:
            await transport.aclose()

    return asyncio.run(main())


def node(url: str = "http://127.0.0.1:8000") -> Any:
    return parse_node(url).with_backend("vllm")


def events(body: bytes) -> list[str]:
    decoder = SseEvents()
    return [e.data for e in decoder.feed(body) + decoder.close()]


def emulator(**kw: Any) -> VLLMEmulator:
    models = kw.pop("models", [EmulatedModel(name=CHAT, context_length=32768)])
    return VLLMEmulator(EmulatorConfig(models=models, name="vllm-test", api_key=kw.pop("api_key", None)), **kw)


# -- the framework and plain routes ----------------------------------------------------------------


def test_fastapi_404_and_405_with_uvicorn_header() -> None:
    app = emulator()
    for path in ("/", "/info", "/api/version", "/props", "/readyz"):
        answer = call(app, "GET", path)
        assert answer.status_code == 404, path
        assert answer.json() == {"detail": "Not Found"}
        assert answer.headers["content-type"] == "application/json"
        assert answer.headers["server"] == "uvicorn"
    wrong = call(app, "GET", "/v1/chat/completions")
    assert wrong.status_code == 405
    assert wrong.json() == {"detail": "Method Not Allowed"}


def test_health_ping_version_load() -> None:
    app = emulator(load_tracking=True)
    health = call(app, "GET", "/health")
    assert (health.status_code, health.content, health.headers["server"]) == (200, b"", "uvicorn")
    assert call(app, "POST", "/ping").status_code == 200
    assert call(app, "GET", "/version").json() == {"version": "0.11.0"}
    assert call(app, "GET", "/load").json() == {"server_load": 0}
    app.engine_dead = True
    assert call(app, "GET", "/health").status_code == 503


def test_default_model_is_hf_style() -> None:
    cards = call(VLLMEmulator(), "GET", "/v1/models").json()["data"]
    assert [c["id"] for c in cards] == [DEFAULT_MODEL]


def test_models_cards() -> None:
    data = call(emulator(lora={"sql-lora": CHAT}), "GET", "/v1/models").json()
    assert data["object"] == "list"
    base, lora = data["data"]
    assert (base["id"], base["owned_by"], base["root"], base["parent"], base["max_model_len"]) == (
        CHAT,
        "vllm",
        CHAT,
        None,
        32768,
    )
    assert (lora["id"], lora["parent"], lora["max_model_len"]) == ("sql-lora", CHAT, None)
    assert base["permission"][0]["object"] == "model_permission"


def test_api_key_protects_only_v1() -> None:
    app = emulator(api_key="secret")
    denied = call(app, "GET", "/v1/models")
    assert (denied.status_code, denied.json()) == (401, {"error": "Unauthorized"})
    assert call(app, "POST", "/v1/chat/completions", json={"messages": list(MESSAGES)}).status_code == 401
    for path in ("/health", "/version", "/metrics", "/load"):
        assert call(app, "GET", path).status_code == 200, path
    assert call(app, "GET", "/v1/models", headers={"authorization": "Bearer secret"}).status_code == 200
    assert call(app, "GET", "/v1/models", headers={"authorization": "Bearer wrong"}).status_code == 401


# -- chat and completions on the wire ---------------------------------------------------------------


def test_chat_answer_shape() -> None:
    data = call(emulator(), "POST", "/v1/chat/completions", json={"model": CHAT, "messages": list(MESSAGES)}).json()
    assert data["object"] == "chat.completion"
    assert data["id"].startswith("chatcmpl-")
    choice = data["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"]
    assert choice["message"]["reasoning"] is None
    assert "tool_calls" not in choice["message"]  # dropped when empty
    assert choice["finish_reason"] == "stop"
    assert choice["stop_reason"] is None
    assert set(data["usage"]) == {"prompt_tokens", "total_tokens", "completion_tokens", "prompt_tokens_details"}


def test_chat_stream_per_the_recording() -> None:
    answer = call(
        emulator(), "POST", "/v1/chat/completions", json={"model": CHAT, "messages": list(MESSAGES), "stream": True}
    )
    assert answer.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert b"data: {" in answer.content  # with the space
    datas = events(answer.content)
    assert datas[-1] == "[DONE]"
    chunks = [json.loads(d) for d in datas[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all("usage" not in c for c in chunks)  # no usage chunk unless asked for


def test_chat_stream_usage_chunk_when_asked() -> None:
    body = {"model": CHAT, "messages": list(MESSAGES), "stream": True, "stream_options": {"include_usage": True}}
    chunks = [json.loads(d) for d in events(call(emulator(), "POST", "/v1/chat/completions", json=body).content)[:-1]]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] > 0
    body["stream_options"] = {"include_usage": True, "continuous_usage_stats": True}
    chunks = [json.loads(d) for d in events(call(emulator(), "POST", "/v1/chat/completions", json=body).content)[:-1]]
    assert all("usage" in c for c in chunks)
    forced = [
        json.loads(d)
        for d in events(
            call(
                emulator(force_include_usage=True),
                "POST",
                "/v1/chat/completions",
                json={"messages": list(MESSAGES), "stream": True},
            ).content
        )[:-1]
    ]
    assert forced[-1]["choices"] == []


def test_stream_options_without_stream_is_400() -> None:
    answer = call(
        emulator(),
        "POST",
        "/v1/chat/completions",
        json={"messages": list(MESSAGES), "stream_options": {"include_usage": True}},
    )
    assert answer.status_code == 400
    assert answer.json()["error"]["message"] == "Stream options can only be defined when `stream=True`."
    assert answer.json()["error"]["code"] == 400


def test_completions_stream() -> None:
    answer = call(
        emulator(),
        "POST",
        "/v1/completions",
        json={"model": CHAT, "prompt": "Once upon", "stream": True, "max_tokens": 3},
    )
    datas = events(answer.content)
    assert datas[-1] == "[DONE]"
    chunks = [json.loads(d) for d in datas[:-1]]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert len([c for c in chunks if c["choices"][0]["text"]]) == 3
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_errors_nested_and_flat() -> None:
    nested = call(emulator(), "POST", "/v1/chat/completions", json={"model": "nope", "messages": list(MESSAGES)})
    assert nested.status_code == 404
    assert nested.json() == {
        "error": {"message": "The model `nope` does not exist.", "type": "NotFoundError", "param": "model", "code": 404}
    }
    flat = call(
        emulator(flat_errors=True), "POST", "/v1/chat/completions", json={"model": "nope", "messages": list(MESSAGES)}
    )
    assert flat.json() == {
        "object": "error",
        "message": "The model `nope` does not exist.",
        "type": "NotFoundError",
        "param": "model",
        "code": 404,
    }
    assert call(emulator(flat_errors=True), "GET", "/version").json() == {"version": "0.10.0"}
    bad = call(
        emulator(), "POST", "/v1/chat/completions", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert bad.status_code == 400


def test_context_too_long_is_400() -> None:
    app = emulator(models=[EmulatedModel(name=CHAT, context_length=8)])
    answer = call(
        app,
        "POST",
        "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "one two three four five six seven eight nine"}]},
    )
    assert answer.status_code == 400
    assert "maximum context length is 8 tokens" in answer.json()["error"]["message"]


@pytest.mark.parametrize("flat", [False, True])
def test_stream_error_fault_then_done(flat: bool) -> None:
    app = emulator(flat_errors=flat)
    app.inject(Fault.stream_error(after=2, message="engine died"))
    datas = events(call(app, "POST", "/v1/chat/completions", json={"messages": list(MESSAGES), "stream": True}).content)
    assert datas[-1] == "[DONE]"
    error = json.loads(datas[-2])
    assert (error["message"] if flat else error["error"]["message"]) == "engine died"


def test_truncate_fault_has_no_done() -> None:
    app = emulator()
    app.inject(Fault.truncate(after=1))
    datas = events(call(app, "POST", "/v1/completions", json={"prompt": "Hi", "stream": True}).content)
    assert "[DONE]" not in datas
    assert len(datas) == 1


def test_error_fault_on_generation_routes_only() -> None:
    app = emulator()
    app.inject(
        Fault.error(
            503,
            {"error": {"message": "busy", "type": "ServiceUnavailableError", "param": None, "code": 503}},
            times=None,
        )
    )
    assert call(app, "GET", "/health").status_code == 200
    assert call(app, "POST", "/v1/completions", json={"prompt": "Hi"}).status_code == 503


# -- embeddings ---------------------------------------------------------------------------------------


def test_no_embeddings_route_on_a_generation_server() -> None:
    answer = call(emulator(), "POST", "/v1/embeddings", json={"input": "hi"})
    assert (answer.status_code, answer.json()) == (404, {"detail": "Not Found"})


def test_no_chat_route_on_a_pooling_server() -> None:
    app = emulator(models=[EmulatedModel(name=EMBED, embedding=True)])
    answer = call(app, "POST", "/v1/chat/completions", json={"messages": list(MESSAGES)})
    assert (answer.status_code, answer.json()) == (404, {"detail": "Not Found"})


def test_embeddings_float_and_base64() -> None:
    app = emulator(models=[EmulatedModel(name=EMBED, embedding=True, dimensions=4)])
    floats = call(app, "POST", "/v1/embeddings", json={"model": EMBED, "input": ["a", "b"]}).json()
    assert floats["object"] == "list"
    assert floats["id"].startswith("embd-")
    assert [d["index"] for d in floats["data"]] == [0, 1]
    assert floats["usage"]["completion_tokens"] == 0
    packed = call(
        app, "POST", "/v1/embeddings", json={"model": EMBED, "input": "a", "encoding_format": "base64"}
    ).json()
    vector = struct.unpack("<4f", base64.b64decode(packed["data"][0]["embedding"]))
    assert vector == pytest.approx(floats["data"][0]["embedding"], abs=1e-6)
    assert call(app, "POST", "/v1/embeddings", json={"model": EMBED, "input": "a", "dimensions": 2}).status_code == 400


# -- metrics ------------------------------------------------------------------------------------------


def test_metrics_with_engine_labels_and_old_names() -> None:
    text = call(emulator(engines=2), "GET", "/metrics")
    assert text.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert f'vllm:num_requests_running{{engine="1",model_name="{CHAT}"}} 0.0' in text.text
    assert "vllm:kv_cache_usage_perc{" in text.text
    assert "vllm:prompt_tokens_total{" in text.text
    old = call(emulator(old_metrics=True), "GET", "/metrics").text
    assert f'vllm:gpu_cache_usage_perc{{model_name="{CHAT}"}} 0.0' in old
    assert "kv_cache_usage_perc" not in old
    assert "engine=" not in old


def test_metrics_count_served_tokens() -> None:
    async def go(client: httpx.AsyncClient) -> str:
        await client.post("/v1/completions", json={"prompt": "Hi there", "max_tokens": 3})
        return (await client.get("/metrics")).text

    text = run(emulator(), go)
    assert f'vllm:generation_tokens_total{{engine="0",model_name="{CHAT}"}} 3.0' in text
    assert f'vllm:prompt_tokens_total{{engine="0",model_name="{CHAT}"}} 2.0' in text
    assert 'finished_reason="length"' in text


class GatedVLLM(VLLMEmulator):
    """Generation waits at each token until the test opens the gate."""

    gate: asyncio.Event | None = None

    async def pace(self) -> None:
        if self.gate is None:
            self.gate = asyncio.Event()
        await self.gate.wait()


async def until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached before the deadline"
        await asyncio.sleep(0)


def test_activity_running_waiting_and_kv_through_the_codec() -> None:
    app = GatedVLLM(EmulatorConfig(models=[EmulatedModel(name=CHAT, context_length=100)], parallel=1), engines=2)

    async def go(transport: Transport) -> tuple[Activity, Activity]:
        request = ChatRequest(model=CHAT, messages=MESSAGES)
        first = asyncio.ensure_future(transport.run(node(), backend.chat(request)))
        second = asyncio.ensure_future(transport.run(node(), backend.chat(request)))
        await until(lambda: app.in_flight == 1 and app.waiting == 1)
        busy = await transport.run(node(), backend.activity(), tolerant=True)
        assert app.gate is not None
        app.gate.set()
        await asyncio.gather(first, second)
        idle = await transport.run(node(), backend.activity(), tolerant=True)
        return busy, idle

    busy, idle = with_codec(app, go)
    assert (busy.running, busy.waiting) == (1, 1)  # summed over the two engines
    assert busy.kv_cache_usage is not None
    assert busy.kv_cache_usage > 0
    assert busy.loaded_names == {CHAT}
    assert busy.context_length == 100
    assert busy.raw["engines"] == ["0", "1"]
    assert (idle.running, idle.waiting, idle.kv_cache_usage) == (0, 0, 0.0)
    assert app.max_in_flight == 1


# -- the codec against the emulator ---------------------------------------------------------------------


def test_codec_chat_generate_and_streams() -> None:
    app = emulator()

    async def go(transport: Transport) -> Any:
        chat = await transport.run(node(), backend.chat(ChatRequest(model=CHAT, messages=MESSAGES)))
        gen = await transport.run(
            node(), backend.generate(GenerateRequest(model=CHAT, prompt="Once upon", options={"num_predict": 2}))
        )
        chunks = await read_stream(
            transport, node(), backend, backend.chat_stream(ChatRequest(model=CHAT, messages=MESSAGES))
        )
        return chat, gen, chunks

    chat, gen, chunks = with_codec(app, go)
    assert chat.text.startswith("Hello from vllm-test!")
    assert chat.usage.completion_tokens == len(chat.text.split(" "))
    assert gen.done_reason == "length"
    assert gen.usage.completion_tokens == 2
    assert "".join(c.text for c in chunks) == chat.text
    assert chunks[-1].done
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == chat.usage.completion_tokens  # the usage chunk was asked for


@pytest.mark.parametrize("field", ["reasoning", "reasoning_content"])
def test_codec_reads_reasoning_under_either_name(field: str) -> None:
    app = emulator(reasoning_field=field)

    async def go(transport: Transport) -> Any:
        result = await transport.run(node(), backend.chat(ChatRequest(model=CHAT, messages=MESSAGES)))
        chunks = await read_stream(
            transport, node(), backend, backend.chat_stream(ChatRequest(model=CHAT, messages=MESSAGES))
        )
        return result, chunks

    result, chunks = with_codec(app, go)
    assert result.thinking
    assert "".join(c.thinking or "" for c in chunks).strip() == result.thinking


def test_codec_joins_streamed_tool_call_fragments() -> None:
    tools = [{"type": "function", "function": {"name": "search", "parameters": {"type": "object"}}}]
    request = ChatRequest(model=CHAT, messages=MESSAGES, params={"tools": tools})

    async def go(transport: Transport) -> Any:
        result = await transport.run(node(), backend.chat(request))
        chunks = await read_stream(transport, node(), backend, backend.chat_stream(request))
        return result, chunks

    result, chunks = with_codec(emulator(), go)
    assert [(c.name, dict(c.arguments)) for c in result.tool_calls] == [("search", {"query": "Say hello please"})]
    assert result.done_reason == "stop"
    final = chunks[-1]
    assert [(c.name, dict(c.arguments)) for c in final.tool_calls] == [("search", {"query": "Say hello please"})]


def test_codec_errors_from_the_emulator() -> None:
    async def go(transport: Transport) -> list[BaseException]:
        caught: list[BaseException] = []
        for exchange in (
            backend.chat(ChatRequest(model="nope", messages=MESSAGES)),
            backend.embed(EmbedRequest(model=CHAT, inputs=("a",))),
            backend.generate(GenerateRequest(model=CHAT, prompt="Hi", options={"num_predict": -3})),
        ):
            try:
                await transport.run(node(), exchange)
            except Exception as exc:
                caught.append(exc)
        return caught

    caught = with_codec(emulator(flat_errors=True), go)
    assert [type(e) for e in caught] == [ModelNotFoundError, NotSupportedError, InvalidRequestError]
    assert "does not exist" in str(caught[0])
    assert "pooling" in str(caught[1])


def test_codec_flat_stream_error_from_the_emulator() -> None:
    app = emulator(flat_errors=True)
    app.inject(Fault.stream_error(after=1, message="engine died"))

    async def go(transport: Transport) -> Any:
        return await read_stream(
            transport, node(), backend, backend.generate_stream(GenerateRequest(model=CHAT, prompt="Hi"))
        )

    with pytest.raises(StreamError, match="engine died"):
        with_codec(app, go)


def test_codec_sends_the_key_as_bearer() -> None:
    app = emulator(api_key="secret")

    async def go(transport: Transport) -> Any:
        return await transport.run(node("http://:secret@127.0.0.1:8000"), backend.models())

    assert [m.name for m in with_codec(app, go)] == [CHAT]
