"""The gateway's Ollama and OpenAI APIs over a stand-in pool: routes, fields, streams, errors."""

from __future__ import annotations

import base64
import json
import logging
import struct
from typing import Any

import pytest
from test_gateway_support import FakePool, chat_result, embed_result, generate_result, request, text_chunks

from sollol.errors import (
    AllNodesFailedError,
    BackendServerError,
    BusyError,
    ConnectError,
    InvalidRequestError,
    NoNodeForModelError,
    StreamError,
)
from sollol.gateway import Gateway
from sollol.inference import Chunk, ToolCall

OLLAMA_CHAT = {
    "model": "llama3.2:latest",
    "created_at": "2025-07-07T20:22:19.19314Z",
    "message": {"role": "assistant", "content": "Hi"},
    "done_reason": "stop",
    "done": True,
    "total_duration": 4883583458,
    "eval_count": 2,
}


@pytest.fixture
def pool() -> FakePool:
    return FakePool()


@pytest.fixture
def app(pool: FakePool) -> Gateway:
    return Gateway(pool)  # type: ignore[arg-type]


def ndjson(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line]


def sse(text: str) -> list[Any]:
    events = [line[len("data: ") :] for line in text.split("\n\n") if line.startswith("data: ")]
    return [e if e == "[DONE]" else json.loads(e) for e in events]


# -- plain routes ---------------------------------------------------------------------------------------


def test_root_version_and_unknown_routes(app: Gateway) -> None:
    root = request(app, "GET", "/")
    assert (root.status_code, root.text) == (200, "Ollama is running")
    assert request(app, "HEAD", "/").status_code == 200
    assert request(app, "GET", "/api/version").json()["version"]
    missing = request(app, "GET", "/api/nothing")
    assert (missing.status_code, missing.text) == (404, "404 page not found")
    wrong = request(app, "GET", "/api/chat")
    assert (wrong.status_code, wrong.text) == (405, "405 method not allowed")


def test_tags_are_the_union_of_the_nodes_models(app: Gateway) -> None:
    models = request(app, "GET", "/api/tags").json()["models"]
    assert [m["name"] for m in models] == ["bge-m3", "llama3.2:latest"]
    llama = models[1]
    assert llama["model"] == "llama3.2:latest"
    assert llama["size"] == 42
    assert llama["details"]["family"] == "llama"
    assert llama["details"]["parameter_size"] == "3B"
    assert models[0]["capabilities"] == ["embedding"]


def test_ps_says_what_is_loaded_where(app: Gateway) -> None:
    loaded = request(app, "GET", "/api/ps").json()["models"]
    where = {(m["name"], m["node"]) for m in loaded}
    assert ("llama3.2:latest", "ollama-1") in where
    assert ("bge-m3", "vllm-1") in where  # single-model servers hold what they serve
    assert all("expires_at" in m and "size_vram" in m for m in loaded)


def test_show_is_synthesised_for_non_ollama_models(app: Gateway) -> None:
    shown = request(app, "POST", "/api/show", json={"model": "bge-m3"}).json()
    assert shown["capabilities"] == ["embedding"]
    assert "model_info" in shown
    assert "details" in shown
    missing = request(app, "POST", "/api/show", json={"model": "nope"})
    assert missing.status_code == 404
    assert "not found" in missing.json()["error"]


def test_v1_models(app: Gateway) -> None:
    data = request(app, "GET", "/v1/models").json()
    assert data["object"] == "list"
    assert [m["id"] for m in data["data"]] == ["bge-m3", "llama3.2:latest"]
    assert request(app, "GET", "/v1/models/bge-m3").json()["id"] == "bge-m3"
    missing = request(app, "GET", "/v1/models/nope")
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "not_found_error"


# -- Ollama generation -------------------------------------------------------------------------------------


def test_every_ollama_field_reaches_the_pool(app: Gateway, pool: FakePool) -> None:
    pool.result = chat_result(raw=OLLAMA_CHAT)
    body = {
        "model": "llama3.2",
        "messages": [{"role": "user", "content": "hi", "images": ["aGk="]}],
        "stream": False,
        "options": {"temperature": 0.1, "num_ctx": 8192, "num_predict": 5},
        "format": {"type": "object"},
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
        "keep_alive": "10m",
        "think": "high",
        "truncate": False,
        "logprobs": True,
        "brand_new_field": [1, 2],
        "protocol": "a client's own field",  # not the gateway's label of the request
    }
    response = request(app, "POST", "/api/chat", json=body)
    assert response.status_code == 200
    assert response.json() == OLLAMA_CHAT  # an Ollama node's own payload goes out untouched
    kind, call = pool.calls[0]
    assert kind == "chat"
    assert call["model"] == "llama3.2"
    assert call["stream"] is False
    assert call["messages"] == body["messages"]
    assert call["options"] == body["options"]
    assert call["params"] == {
        k: body[k]
        for k in ("format", "tools", "keep_alive", "think", "truncate", "logprobs", "brand_new_field", "protocol")
    }
    assert pool.protocols == ["ollama"]  # the request is labelled with the client's protocol


def test_requests_are_labelled_with_the_client_protocol(app: Gateway, pool: FakePool) -> None:
    pool.result = chat_result()
    hi = [{"role": "user", "content": "hi"}]
    assert request(app, "POST", "/v1/chat/completions", json={"model": "llama3.2", "messages": hi}).status_code == 200
    pool.result = embed_result([[0.1, 0.2]])
    assert request(app, "POST", "/api/embed", json={"model": "llama3.2", "input": "x"}).status_code == 200
    assert request(app, "POST", "/v1/embeddings", json={"model": "llama3.2", "input": "x"}).status_code == 200
    assert pool.protocols == ["openai", "ollama", "openai"]


def test_generate_passes_system_template_raw_and_images(app: Gateway, pool: FakePool) -> None:
    pool.result = generate_result()
    body = {
        "model": "m",
        "prompt": "p",
        "stream": False,
        "system": "s",
        "template": "{{ .Prompt }}",
        "raw": True,
        "images": ["x"],
        "suffix": "z",
    }
    out = request(app, "POST", "/api/generate", json=body).json()
    call = pool.calls[0][1]
    assert call["prompt"] == "p"
    assert call["params"] == {"system": "s", "template": "{{ .Prompt }}", "raw": True, "images": ["x"], "suffix": "z"}
    # A non-Ollama node's answer is translated into Ollama's shape.
    assert out["response"] == "blue"
    assert out["done"] is True
    assert out["done_reason"] == "length"
    assert out["prompt_eval_count"] == 3
    assert out["eval_count"] == 1
    assert "load_duration" not in out  # absent, as Ollama leaves zero counters out


def test_ollama_chat_translates_an_openai_node_answer(app: Gateway, pool: FakePool) -> None:
    pool.result = chat_result(
        raw={"object": "chat.completion"}, tool_calls=(ToolCall(name="get", arguments={"city": "Oslo"}),)
    )
    out = request(
        app, "POST", "/api/chat", json={"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": False}
    ).json()
    assert out["message"]["content"] == "Hi there"
    assert out["message"]["tool_calls"] == [{"function": {"name": "get", "arguments": {"city": "Oslo"}}}]
    assert out["total_duration"] == 500_000_000
    assert out["prompt_eval_count"] == 5


def test_ollama_streams_by_default_as_ndjson(app: Gateway, pool: FakePool) -> None:
    pool.chunks = text_chunks("Hel", "lo", calls=[ToolCall(name="f", arguments={"a": 1})])
    response = request(app, "POST", "/api/chat", json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-ndjson"
    lines = ndjson(response.text)
    assert [line["message"]["content"] for line in lines] == ["Hel", "lo", "", ""]
    assert lines[2]["message"]["tool_calls"] == [{"function": {"name": "f", "arguments": {"a": 1}}}]
    assert [line["done"] for line in lines] == [False, False, False, True]
    assert lines[-1]["done_reason"] == "stop"
    assert lines[-1]["eval_count"] == 2
    assert pool.calls[0][1]["stream"] is True


def test_ollama_stream_passes_ollama_lines_through(app: Gateway, pool: FakePool) -> None:
    raw = [
        {"model": "m", "created_at": "t", "response": "x", "done": False},
        {"model": "m", "created_at": "t", "response": "", "done": True, "context": [1, 2]},
    ]
    pool.chunks = [Chunk(text="x", raw=raw[0]), Chunk(done=True, raw=raw[1])]
    response = request(app, "POST", "/api/generate", json={"model": "m", "prompt": "p", "stream": True})
    assert ndjson(response.text) == raw


def test_a_stream_that_breaks_ends_with_an_error_line(app: Gateway, pool: FakePool) -> None:
    pool.chunks = text_chunks("a", "b", "c")
    pool.error = StreamError("node exploded", status=500)
    pool.error_after = 1
    response = request(app, "POST", "/api/generate", json={"model": "m", "prompt": "p"})
    lines = ndjson(response.text)
    assert lines[0]["response"] == "a"
    assert "node exploded" in lines[-1]["error"]
    assert not any(line.get("done") for line in lines)


def test_empty_chat_loads_the_model(app: Gateway, pool: FakePool) -> None:
    out = request(app, "POST", "/api/chat", json={"model": "llama3.2", "messages": []}).json()
    assert out["done"] is True
    assert out["done_reason"] == "load"
    assert request(app, "POST", "/api/chat", json={"model": "nope", "messages": []}).status_code == 404
    assert pool.calls == []


def test_embed_and_legacy_embeddings(app: Gateway, pool: FakePool) -> None:
    pool.result = embed_result([[0.5, 1.0], [2.0, 3.0]])
    out = request(
        app, "POST", "/api/embed", json={"model": "bge-m3", "input": ["a", "b"], "dimensions": 2, "truncate": True}
    ).json()
    assert out["embeddings"] == [[0.5, 1.0], [2.0, 3.0]]
    assert out["prompt_eval_count"] == 4
    assert pool.calls[0][1]["params"] == {"dimensions": 2, "truncate": True}
    pool.result = embed_result([[0.25]])
    legacy = request(app, "POST", "/api/embeddings", json={"model": "bge-m3", "prompt": "a"}).json()
    assert legacy == {"embedding": [0.25]}
    assert pool.calls[1][1]["input"] == ["a"]


# -- OpenAI ------------------------------------------------------------------------------------------------


def test_openai_fields_are_translated_and_the_rest_passed_on(app: Gateway, pool: FakePool) -> None:
    pool.result = chat_result()
    body = {
        "model": "m",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "look"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,QUJD"}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "42"},
        ],
        "max_tokens": 7,
        "temperature": 0.2,
        "top_p": 0.9,
        "seed": 1,
        "stop": "END",
        "frequency_penalty": 0.5,
        "presence_penalty": 0.25,
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "tool_choice": "auto",
        "reasoning_effort": "low",
        "user": "u1",
        "stream_options": {"include_usage": True},
    }
    out = request(app, "POST", "/v1/chat/completions", json=body).json()
    call = pool.calls[0][1]
    assert call["options"] == {
        "num_predict": 7,
        "temperature": 0.2,
        "top_p": 0.9,
        "seed": 1,
        "stop": ["END"],
        "frequency_penalty": 0.5,
        "presence_penalty": 0.25,
    }
    assert call["params"] == {
        "format": {"type": "object"},
        "tools": body["tools"],
        "tool_choice": "auto",
        "think": "low",
        "user": "u1",
    }
    user, assistant, tool = call["messages"]
    assert user == {"role": "user", "content": "look", "images": ["QUJD"]}
    assert assistant["content"] == ""
    assert assistant["tool_calls"][0]["function"] == {"name": "f", "arguments": {"x": 1}}
    assert tool == body["messages"][2]
    assert out["object"] == "chat.completion"
    assert out["choices"][0]["message"]["content"] == "Hi there"
    assert out["choices"][0]["finish_reason"] == "stop"
    assert out["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}


def test_openai_node_answers_go_out_as_they_came(app: Gateway, pool: FakePool) -> None:
    raw = {
        "id": "chatcmpl-x",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "yo"},
                "logprobs": {"content": []},
                "finish_reason": "stop",
            }
        ],
    }
    pool.result = chat_result(raw=raw)
    assert (
        request(
            app, "POST", "/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "q"}]}
        ).json()
        == raw
    )


def test_openai_tool_calls_from_an_ollama_node(app: Gateway, pool: FakePool) -> None:
    pool.result = chat_result(raw=OLLAMA_CHAT, tool_calls=(ToolCall(name="get", arguments={"city": "Oslo"}),))
    out = request(
        app, "POST", "/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "q"}]}
    ).json()
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    call = choice["message"]["tool_calls"][0]
    assert call["type"] == "function"
    assert call["function"]["name"] == "get"
    assert json.loads(call["function"]["arguments"]) == {"city": "Oslo"}


def test_openai_stream_with_usage(app: Gateway, pool: FakePool) -> None:
    pool.chunks = text_chunks("Hel", "lo", reason="length")
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "q"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    response = request(app, "POST", "/v1/chat/completions", json=body)
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse(response.text)
    assert events[-1] == "[DONE]"
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": "Hel"}
    assert events[1]["choices"][0]["delta"] == {"content": "lo"}
    assert events[2]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "length"}
    assert events[3]["choices"] == []
    assert events[3]["usage"] == {
        "prompt_tokens": 7,
        "completion_tokens": 2,
        "total_tokens": 9,
    }
    assert len({e["id"] for e in events[:-1]}) == 1
    assert all(e["object"] == "chat.completion.chunk" for e in events[:-1])


def test_openai_stream_without_usage_and_with_tool_calls(app: Gateway, pool: FakePool) -> None:
    pool.chunks = text_chunks(calls=[ToolCall(name="f", arguments={"a": 1}, id="call_9")])
    body = {"model": "m", "messages": [{"role": "user", "content": "q"}], "stream": True}
    events = sse(request(app, "POST", "/v1/chat/completions", json=body).text)
    assert events[-1] == "[DONE]"
    assert not any("usage" in e for e in events[:-1])
    calls = events[0]["choices"][0]["delta"]["tool_calls"]
    assert calls == [
        {"id": "call_9", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}, "index": 0}
    ]
    assert events[-2]["choices"][0]["finish_reason"] == "tool_calls"


def test_openai_completions_stream(app: Gateway, pool: FakePool) -> None:
    pool.chunks = text_chunks("a", "b")
    body = {"model": "m", "prompt": "p", "stream": True, "max_tokens": 3, "suffix": "s"}
    events = sse(request(app, "POST", "/v1/completions", json=body).text)
    assert [e["choices"][0]["text"] for e in events[:-1]] == ["a", "b", ""]
    assert events[-2]["choices"][0]["finish_reason"] == "stop"
    call = pool.calls[0][1]
    assert call["prompt"] == "p"
    assert call["options"] == {"num_predict": 3}
    assert call["params"] == {"suffix": "s"}


def test_a_broken_openai_stream_ends_with_an_error_event(app: Gateway, pool: FakePool) -> None:
    pool.chunks = text_chunks("a", "b")
    pool.error = StreamError("gone", status=500)
    pool.error_after = 1
    events = sse(
        request(
            app,
            "POST",
            "/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "q"}], "stream": True},
        ).text
    )
    assert "[DONE]" not in events
    assert "gone" in events[-1]["error"]["message"]
    assert events[-1]["error"]["type"]


def test_openai_embeddings_float_and_base64(app: Gateway, pool: FakePool) -> None:
    pool.result = embed_result([[0.5, -1.0]])
    out = request(
        app,
        "POST",
        "/v1/embeddings",
        json={"model": "bge-m3", "input": "hi", "encoding_format": "float", "dimensions": 2},
    ).json()
    assert out["data"] == [{"object": "embedding", "embedding": [0.5, -1.0], "index": 0}]
    assert out["usage"] == {"prompt_tokens": 4, "total_tokens": 4}
    assert pool.calls[0][1]["params"] == {"dimensions": 2}
    encoded = request(
        app, "POST", "/v1/embeddings", json={"model": "bge-m3", "input": ["hi"], "encoding_format": "base64"}
    ).json()
    assert struct.unpack("<2f", base64.b64decode(encoded["data"][0]["embedding"])) == (0.5, -1.0)


# -- errors ------------------------------------------------------------------------------------------------

CHAT = {"model": "m", "messages": [{"role": "user", "content": "q"}], "stream": False}


@pytest.mark.parametrize(
    ("error", "ollama_status", "openai_status"),
    [
        (NoNodeForModelError("m", ["a"]), 404, 404),
        (BusyError("m", 3.0), 503, 429),
        (AllNodesFailedError("m", [("n1", ConnectError("refused"))]), 503, 503),
        (AllNodesFailedError("m", [("n1", BackendServerError("boom", status=500))]), 502, 502),
        (InvalidRequestError('"m" does not support chat', status=400), 400, 400),
    ],
)
def test_pool_errors_map_to_statuses(
    app: Gateway, pool: FakePool, error: Exception, ollama_status: int, openai_status: int
) -> None:
    pool.error = error
    ollama = request(app, "POST", "/api/chat", json=CHAT)
    assert ollama.status_code == ollama_status
    assert isinstance(ollama.json()["error"], str)
    assert ollama.json()["error"]
    openai = request(app, "POST", "/v1/chat/completions", json=CHAT)
    assert openai.status_code == openai_status
    assert set(openai.json()["error"]) == {"message", "type", "param", "code"}


def test_errors_before_the_first_chunk_get_a_real_status(app: Gateway, pool: FakePool) -> None:
    pool.error = NoNodeForModelError("m", [])
    streamed = request(app, "POST", "/api/chat", json={**CHAT, "stream": True})
    assert streamed.status_code == 404
    assert streamed.headers["content-type"].startswith("application/json")
    sse_error = request(app, "POST", "/v1/chat/completions", json={**CHAT, "stream": True})
    assert sse_error.status_code == 404
    assert sse_error.json()["error"]["code"] == "model_not_found"


def test_bad_requests_in_each_protocol(app: Gateway) -> None:
    bad = request(app, "POST", "/api/chat", content=b"{not json")
    assert bad.status_code == 400
    assert "invalid JSON" in bad.json()["error"]
    assert request(app, "POST", "/api/chat", content=b"").json() == {"error": "missing request body"}
    assert request(app, "POST", "/api/generate", json={"prompt": "x"}).json() == {"error": "model is required"}
    assert request(app, "POST", "/api/chat", json=[1]).status_code == 400
    openai = request(app, "POST", "/v1/chat/completions", content=b"[")
    assert openai.status_code == 400
    assert openai.json()["error"]["type"] == "invalid_request_error"
    no_messages = request(app, "POST", "/v1/chat/completions", json={"model": "m", "messages": []})
    assert no_messages.status_code == 400
    assert no_messages.json()["error"]["param"] == "messages"


def test_body_size_limit(pool: FakePool) -> None:
    app = Gateway(pool, max_body=2048)  # type: ignore[arg-type]
    big = {"model": "m", "prompt": "x" * 4096}
    ollama = request(app, "POST", "/api/generate", json=big)
    assert ollama.status_code == 413
    assert "limit" in ollama.json()["error"]
    openai = request(app, "POST", "/v1/completions", json=big)
    assert openai.status_code == 413
    assert "limit" in openai.json()["error"]["message"]
    assert pool.calls == []


def test_api_keys(pool: FakePool, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    app = Gateway(pool, api_keys=["s3cret-key"])  # type: ignore[arg-type]
    pool.result = chat_result()
    assert request(app, "GET", "/").status_code == 200  # liveness stays open
    missing = request(app, "GET", "/api/tags")
    assert missing.status_code == 401
    assert "API key" in missing.json()["error"]
    wrong = request(app, "POST", "/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert wrong.json()["error"]["type"] == "authentication_error"
    assert "nope" not in wrong.text
    assert request(app, "GET", "/api/tags", headers={"Authorization": "Bearer s3cret-key"}).status_code == 200
    assert request(app, "GET", "/v1/models", headers={"X-Api-Key": "s3cret-key"}).status_code == 200
    assert (
        request(app, "POST", "/api/chat", json=CHAT, headers={"authorization": "bearer s3cret-key"}).status_code == 200
    )
    assert "s3cret-key" not in caplog.text
    assert "nope" not in caplog.text


def test_lifespan_closes_the_pool(pool: FakePool) -> None:
    import asyncio

    app = Gateway(pool)  # type: ignore[arg-type]
    messages = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: Any) -> None:
        sent.append(message)

    asyncio.run(app({"type": "lifespan"}, receive, send))  # type: ignore[arg-type]
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert pool.closed
