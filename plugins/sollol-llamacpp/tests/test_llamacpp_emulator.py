"""The emulator looks like the real llama-server: compared with the recordings where they exist."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from llamacpp_recordings import recorded

from sollol.codec import SseEvents
from sollol.testing.emulator import EmulatedModel, EmulatorConfig, Fault
from sollol_llamacpp.emulator import LlamaCppEmulator

CHAT = {"model": "whatever", "messages": [{"role": "user", "content": "Name a color."}], "max_tokens": 8}


def call(
    app: LlamaCppEmulator, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> httpx.Response:
    async def go() -> httpx.Response:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:8080"
        ) as client:
            content = body if isinstance(body, bytes) else None if body is None else json.dumps(body).encode()
            return await client.request(method, path, content=content, headers=headers)

    return asyncio.run(go())


def events(response: httpx.Response) -> list[str]:
    parser = SseEvents()
    return [e.data for e in parser.feed(response.content) + parser.close()]


def keys_of(data: Any) -> list[str]:
    return list(data) if isinstance(data, dict) else []


def test_every_answer_carries_the_server_header():
    app = LlamaCppEmulator(metrics=False)
    for method, path in [
        ("GET", "/health"),
        ("GET", "/nope"),
        ("GET", "/metrics"),
        ("POST", "/v1/embeddings"),
        ("GET", "/"),
    ]:
        assert call(app, method, path).headers["server"] == "llama.cpp", path
    app.loading = True
    assert call(app, "GET", "/health").headers["server"] == "llama.cpp"
    keyed = LlamaCppEmulator(api_key="k")
    assert call(keyed, "GET", "/props").headers["server"] == "llama.cpp"


@pytest.mark.parametrize(
    ("name", "method", "path", "body"),
    [
        ("nope", "GET", "/nope", None),
        ("health", "GET", "/health", None),
        ("embeddings_unsupported", "POST", "/v1/embeddings", {"input": "a"}),
        ("missing_messages", "POST", "/v1/chat/completions", {"model": "x"}),
    ],
)
def test_answers_identical_to_the_recordings(name, method, path, body):
    real = recorded(name)
    mine = call(LlamaCppEmulator(), method, path, body)
    assert mine.status_code == real.status
    assert mine.content == real.body
    assert mine.headers["content-type"] == real.header("content-type")


def test_bad_json_is_a_400_in_llamacpps_words():
    answer = call(LlamaCppEmulator(), "POST", "/v1/chat/completions", b'{"model":')
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith("[json.exception.parse_error.101]")
    assert recorded("badjson").json_object()["error"]["message"].startswith("[json.exception.parse_error.101]")


def test_models_list_has_the_recorded_shape():
    real = recorded("v1_models").json_object()
    mine = call(LlamaCppEmulator(), "GET", "/v1/models").json()
    assert keys_of(mine) == keys_of(real)
    assert keys_of(mine["models"][0]) == keys_of(real["models"][0])
    assert keys_of(mine["data"][0]) == keys_of(real["data"][0])
    assert keys_of(mine["data"][0]["meta"]) == keys_of(real["data"][0]["meta"])
    assert mine["data"][0]["owned_by"] == "llamacpp"
    assert mine["models"][0]["size"] == ""  # a string, as on the real server


def test_props_and_slots_have_the_recorded_fields():
    app = LlamaCppEmulator(
        EmulatorConfig(models=[EmulatedModel(name="m", context_length=1024)], parallel=2), metrics=True
    )
    real = recorded("props").json_object()
    props = call(app, "GET", "/props").json()
    assert set(props) <= set(real)
    assert props["default_generation_settings"]["n_ctx"] == 1024
    assert (props["total_slots"], props["model_alias"], props["endpoint_metrics"]) == (2, "m", True)
    slots = call(app, "GET", "/slots").json()
    assert [keys_of(s) for s in slots] == [keys_of(s) for s in json.loads(recorded("slots").body)]


def test_metrics_need_the_flag():
    off = call(LlamaCppEmulator(), "GET", "/metrics")
    assert off.status_code == 501
    assert off.json()["error"]["type"] == "not_supported_error"
    on = call(LlamaCppEmulator(metrics=True), "GET", "/metrics")
    real = recorded("metrics")
    assert on.headers["content-type"] == real.header("content-type")
    assert "process-start-time-unix" in on.headers
    names = {line.split()[0] for line in on.text.splitlines() if line and not line.startswith("#")}
    real_names = {line.split()[0] for line in real.text.splitlines() if line and not line.startswith("#")}
    assert names <= real_names
    assert {"llamacpp:requests_processing", "llamacpp:requests_deferred"} <= names


def test_busy_slots_and_deferred_requests_show_in_slots_and_metrics():
    app = LlamaCppEmulator(EmulatorConfig(models=[EmulatedModel(name="m")], parallel=2), metrics=True)

    async def go() -> tuple[list[Any], str]:
        release = asyncio.Event()
        held = asyncio.Semaphore(0)

        async def hold() -> None:
            async with app.occupy():
                held.release()
                await release.wait()

        tasks = [asyncio.create_task(hold()) for _ in range(3)]
        for _ in range(2):
            await asyncio.wait_for(held.acquire(), 5)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://e") as client:
            slots = (await client.get("/slots")).json()
            metrics = (await client.get("/metrics")).text
        release.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
        return slots, metrics

    slots, metrics = asyncio.run(go())
    assert [s["is_processing"] for s in slots] == [True, True]
    assert "llamacpp:requests_processing 2\n" in metrics
    assert "llamacpp:requests_deferred 1\n" in metrics


def test_chat_has_the_recorded_shape_and_ignores_the_model_name():
    real = recorded("chat").json_object()
    mine = call(LlamaCppEmulator(), "POST", "/v1/chat/completions", CHAT).json()
    assert keys_of(mine) == keys_of(real)
    assert keys_of(mine["choices"][0]) == keys_of(real["choices"][0])
    assert keys_of(mine["usage"]) == keys_of(real["usage"])
    assert keys_of(mine["timings"]) == keys_of(real["timings"])
    assert mine["model"] == "gemma-3-270m"  # the alias, whatever the request named
    assert mine["id"].startswith("chatcmpl-")
    assert len(mine["id"]) == len(real["id"])


def test_chat_stream_has_the_recorded_event_shapes():
    real = [json.loads(e) if e != "[DONE]" else e for e in events_of_recording("chat_stream")]
    answer = call(
        LlamaCppEmulator(),
        "POST",
        "/v1/chat/completions",
        {**CHAT, "stream": True, "stream_options": {"include_usage": True}},
    )
    assert answer.headers["content-type"] == "text/event-stream"
    mine = [json.loads(e) if e != "[DONE]" else e for e in events(answer)]
    assert mine[-1] == "[DONE]"
    assert real[-1] == "[DONE]"
    assert keys_of(mine[0]) == keys_of(real[0])
    assert mine[0]["choices"][0]["delta"] == {
        "role": "assistant",
        "content": None,
    }
    assert keys_of(mine[1]) == keys_of(real[1])
    assert keys_of(mine[-3]) == keys_of(real[-3])
    assert mine[-3]["choices"][0]["delta"] == {}
    assert keys_of(mine[-2]) == keys_of(real[-2])
    assert mine[-2]["choices"] == []


def events_of_recording(name: str) -> list[str]:
    parser = SseEvents()
    return [e.data for e in parser.feed(recorded(name).body) + parser.close()]


def test_native_completion_stream_ends_without_done():
    answer = call(LlamaCppEmulator(), "POST", "/completion", {"prompt": "The sky is", "n_predict": 5, "stream": True})
    mine = [json.loads(e) for e in events(answer)]
    real = [json.loads(e) for e in events_of_recording("completion_stream")]
    assert b"[DONE]" not in answer.content
    assert keys_of(mine[0]) == keys_of(real[0])
    assert mine[-1]["stop"] is True
    assert mine[-1]["stop_type"] == "limit"
    assert set(mine[-1]) <= set(real[-1])
    assert len(mine) == 6


def test_completions_have_the_recorded_shape():
    real = recorded("completions").json_object()
    mine = call(LlamaCppEmulator(), "POST", "/v1/completions", {"prompt": "The sky is", "max_tokens": 5}).json()
    assert keys_of(mine) == keys_of(real)
    assert keys_of(mine["choices"][0]) == keys_of(real["choices"][0])


def test_embeddings_have_the_recorded_shape():
    real = recorded("embeddings").json_object()
    mine = call(LlamaCppEmulator(embeddings=True), "POST", "/v1/embeddings", {"input": ["a", "b"]}).json()
    assert keys_of(mine) == keys_of(real)
    assert [keys_of(d) for d in mine["data"]] == [keys_of(d) for d in real["data"]]
    assert len(mine["data"][0]["embedding"]) == 640
    native = call(LlamaCppEmulator(embeddings=True), "POST", "/embedding", {"content": "a"}).json()
    assert len(native[0]["embedding"]) == 1  # 2-D: one row once pooled
    unpooled = call(LlamaCppEmulator(embeddings=True, pooling="none"), "POST", "/v1/embeddings", {"input": "a"})
    assert unpooled.status_code == 400
    assert "not OAI compatible" in unpooled.json()["error"]["message"]


def test_loading_answers_503_on_every_route():
    app = LlamaCppEmulator(loading=True)
    for method, path in [
        ("GET", "/health"),
        ("GET", "/v1/models"),
        ("GET", "/props"),
        ("POST", "/v1/chat/completions"),
        ("GET", "/nope"),
    ]:
        answer = call(app, method, path, CHAT if method == "POST" else None)
        assert answer.status_code == 503, path
        assert answer.json() == {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}
    assert call(app, "GET", "/").headers["content-type"].startswith("text/html")
    app.loading = False
    assert call(app, "GET", "/health").json() == {"status": "ok"}


def test_2025_builds_list_models_while_loading_and_serve_api_routes():
    app = LlamaCppEmulator(loading=True, api_2025=True)
    listed = call(app, "GET", "/api/tags")
    assert listed.status_code == 200
    assert listed.json()["data"][0]["meta"] is None
    app.loading = False
    chat = call(app, "POST", "/api/chat", CHAT).json()
    assert chat["object"] == "chat.completion"  # OpenAI, not Ollama's NDJSON
    assert "model_info" in call(app, "POST", "/api/show", {"model": "x"}).json()
    assert call(LlamaCppEmulator(), "GET", "/api/tags").status_code == 404


def test_api_key_guards_all_but_the_public_routes():
    app = LlamaCppEmulator(api_key="secret")
    for path in ("/health", "/v1/health", "/v1/models", "/models", "/"):
        assert call(app, "GET", path).status_code == 200, path
    denied = call(app, "GET", "/props")
    assert denied.status_code == 401
    assert denied.json() == {"error": {"code": 401, "message": "Invalid API Key", "type": "authentication_error"}}
    assert call(app, "GET", "/props", headers={"Authorization": "Bearer secret"}).status_code == 200
    assert call(app, "GET", "/props", headers={"X-Api-Key": "secret"}).status_code == 200
    assert call(app, "GET", "/props", headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_an_error_in_the_first_result_is_a_plain_json_error():
    app = LlamaCppEmulator()
    app.inject(Fault.stream_error(after=0, message="boom"))
    answer = call(app, "POST", "/v1/chat/completions", {**CHAT, "stream": True})
    assert answer.status_code == 500
    assert answer.json()["error"] == {"code": 500, "message": "boom", "type": "server_error"}


def test_a_later_error_ends_the_stream_without_done():
    app = LlamaCppEmulator()
    app.inject(Fault.stream_error(after=2, message="boom"))
    answer = call(app, "POST", "/v1/chat/completions", {**CHAT, "stream": True})
    data = events(answer)
    assert answer.status_code == 200
    assert json.loads(data[-1]) == {"error": {"code": 500, "message": "boom", "type": "server_error"}}
    assert "[DONE]" not in data


def test_exceeding_the_context_is_a_400_with_the_sizes():
    app = LlamaCppEmulator(EmulatorConfig(models=[EmulatedModel(name="m", context_length=8)]))
    answer = call(
        app, "POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "one two three four five"}]}
    )
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["type"] == "exceed_context_size_error"
    assert error["n_ctx"] == 8
    assert error["n_prompt_tokens"] > 8


def test_reasoning_content():
    app = LlamaCppEmulator(reasoning="Let me think.")
    message = call(app, "POST", "/v1/chat/completions", CHAT).json()["choices"][0]["message"]
    assert message["reasoning_content"] == "Let me think."
