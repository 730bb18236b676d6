"""The vLLM codec on recorded-style bytes: no server, no sockets."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sollol.codec import iter_chunks
from sollol.detection import NodeState
from sollol.errors import (
    AuthenticationError,
    BackendError,
    InvalidRequestError,
    ModelNotFoundError,
    NotSupportedError,
    ProtocolError,
    StreamError,
)
from sollol.http import HttpRequest, HttpResponse, run_offline
from sollol.inference import ChatRequest, EmbedRequest, GenerateRequest
from sollol_vllm.codec import VLLMBackend

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
backend = VLLMBackend()


def answer(status: int, body: Any = b"", content_type: str | None = "application/json") -> HttpResponse:
    raw = body if isinstance(body, bytes) else json.dumps(body, separators=(",", ":")).encode()
    headers = [("server", "uvicorn")]
    if content_type:
        headers.append(("content-type", content_type))
    return HttpResponse(status=status, headers=tuple(headers), body=raw)


def sse(*events: Any) -> bytes:
    return b"".join(f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n".encode() for e in events)


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    if finish:
        choice["stop_reason"] = None
    return {
        "id": "chatcmpl-8b2b",
        "object": "chat.completion.chunk",
        "created": 1772423572,
        "model": "qwen3_8b",
        "choices": [choice],
    }


USAGE = {
    "id": "chatcmpl-8b2b",
    "object": "chat.completion.chunk",
    "created": 1772423572,
    "model": "qwen3_8b",
    "choices": [],
    "usage": {"prompt_tokens": 20, "total_tokens": 30, "completion_tokens": 10},
}
CHAT_STREAM = sse(
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": " Hello"}),
    chunk({"content": " there"}),
    chunk({"content": ""}, "stop"),
    USAGE,
    "[DONE]",
)


def chat_request(**params: Any) -> ChatRequest:
    return ChatRequest(model=MODEL, messages=({"role": "user", "content": "Hi"},), params=params)


def decode(body: bytes, kind: str = "chat") -> list[Any]:
    plan = (
        backend.chat_stream(chat_request())
        if kind == "chat"
        else backend.generate_stream(GenerateRequest(model=MODEL, prompt="Hi"))
    )
    return list(iter_chunks(plan.decoder(), body, piece=7))


# -- streams -----------------------------------------------------------------------------------


def test_chat_stream_with_role_chunk_usage_chunk_and_done() -> None:
    chunks = decode(CHAT_STREAM)
    assert "".join(c.text for c in chunks) == " Hello there"
    assert [c.done for c in chunks] == [False, False, True]
    final = chunks[-1]
    assert final.done_reason == "stop"
    assert final.usage is not None
    assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (20, 10)
    assert final.model == "qwen3_8b"


def test_chat_stream_without_usage_chunk_has_unknown_usage() -> None:
    body = sse(
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Hi"}),
        chunk({"content": ""}, "length"),
        "[DONE]",
    )
    chunks = decode(body)
    assert chunks[-1].done_reason == "length"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens is None


@pytest.mark.parametrize("field", ["reasoning", "reasoning_content"])
def test_stream_reasoning_under_either_name(field: str) -> None:
    body = sse(
        chunk({"role": "assistant", "content": ""}),
        chunk({field: "Let me think."}),
        chunk({"content": "Hi"}),
        chunk({"content": ""}, "stop"),
        "[DONE]",
    )
    chunks = decode(body)
    assert "".join(c.thinking or "" for c in chunks) == "Let me think."
    assert "".join(c.text for c in chunks) == "Hi"


def test_nested_error_inside_stream() -> None:
    error = {"error": {"message": "Engine loop has died", "type": "BadRequestError", "param": None, "code": 400}}
    body = sse(chunk({"role": "assistant", "content": ""}), chunk({"content": "Hi"}), error, "[DONE]")
    with pytest.raises(StreamError) as caught:
        decode(body)
    assert caught.value.status == 400
    assert "Engine loop has died" in str(caught.value)


def test_flat_error_inside_stream_of_old_versions() -> None:
    error = {
        "object": "error",
        "message": "Engine loop has died",
        "type": "BadRequestError",
        "param": None,
        "code": 400,
    }
    body = sse(chunk({"role": "assistant", "content": ""}), chunk({"content": "Hi"}), error, "[DONE]")
    with pytest.raises(StreamError) as caught:
        decode(body)
    assert caught.value.status == 400
    assert caught.value.error_type == "BadRequestError"
    assert "Engine loop has died" in str(caught.value)


def test_content_mentioning_error_is_not_an_error() -> None:
    body = sse(chunk({"content": 'the "error" key'}), chunk({"content": ""}, "stop"), "[DONE]")
    assert "".join(c.text for c in decode(body)) == 'the "error" key'


def test_stream_cut_off_is_a_protocol_error() -> None:
    body = sse(chunk({"role": "assistant", "content": ""}), chunk({"content": "Hi"}))
    with pytest.raises(ProtocolError):
        decode(body)


def test_completion_stream() -> None:
    def piece(text: str, finish: str | None = None) -> dict[str, Any]:
        return {
            "id": "cmpl-1",
            "object": "text_completion",
            "created": 1,
            "model": MODEL,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish, "stop_reason": None}],
        }

    usage = {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 1,
        "model": MODEL,
        "choices": [],
        "usage": {"prompt_tokens": 3, "total_tokens": 5, "completion_tokens": 2},
    }
    chunks = decode(sse(piece(" there"), piece(" was"), piece("", "length"), usage, "[DONE]"), kind="completion")
    assert "".join(c.text for c in chunks) == " there was"
    assert chunks[-1].done_reason == "length"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 2


# -- request bodies -------------------------------------------------------------------------------


def test_stream_options_only_when_streaming() -> None:
    streamed = backend.chat_stream(chat_request()).request.json
    assert streamed["stream"] is True
    assert streamed["stream_options"] == {"include_usage": True}
    exchange = backend.chat(chat_request(stream_options={"include_usage": True}))
    (sent,) = next(exchange)
    assert sent.json["stream"] is False
    assert "stream_options" not in sent.json
    completion = backend.generate_stream(GenerateRequest(model=MODEL, prompt="Hi")).request.json
    assert completion["stream_options"] == {"include_usage": True}


def test_vllm_extras_pass_through_and_think_becomes_template_kwarg() -> None:
    request = ChatRequest(
        model=MODEL,
        messages=({"role": "user", "content": "Hi"},),
        options={"top_k": 20, "num_predict": 5},
        params={"think": False, "min_p": 0.1},
    )
    (sent,) = next(backend.chat(request))
    body = sent.json
    assert body["top_k"] == 20
    assert body["max_tokens"] == 5
    assert body["min_p"] == 0.1
    assert body["chat_template_kwargs"] == {"enable_thinking": False}
    assert "think" not in body


# -- answers ------------------------------------------------------------------------------------------

CHAT_ANSWER = {
    "id": "chatcmpl-9f2c",
    "object": "chat.completion",
    "created": 1733001000,
    "model": MODEL,
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Hello! How can I help?",
                "refusal": None,
                "annotations": None,
                "audio": None,
                "function_call": None,
                "reasoning": None,
            },
            "logprobs": None,
            "finish_reason": "stop",
            "stop_reason": None,
        }
    ],
    "service_tier": None,
    "system_fingerprint": None,
    "usage": {"prompt_tokens": 12, "total_tokens": 21, "completion_tokens": 9, "prompt_tokens_details": None},
    "prompt_logprobs": None,
    "prompt_token_ids": None,
    "kv_transfer_params": None,
}


def test_chat_answer() -> None:
    result = run_offline(backend.chat(chat_request()), lambda _r: answer(200, CHAT_ANSWER))
    assert result.text == "Hello! How can I help?"
    assert result.thinking is None
    assert result.done_reason == "stop"
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (12, 9)


def test_chat_answer_with_old_reasoning_content() -> None:
    data = json.loads(json.dumps(CHAT_ANSWER))
    message = data["choices"][0]["message"]
    del message["reasoning"]
    message["reasoning_content"] = "Greeting."
    result = run_offline(backend.chat(chat_request()), lambda _r: answer(200, data))
    assert result.thinking == "Greeting."


def test_embed_answer_in_input_order() -> None:
    data = {
        "id": "embd-1",
        "object": "list",
        "created": 1,
        "model": "BAAI/bge-m3",
        "data": [
            {"index": 1, "object": "embedding", "embedding": [0.5, 0.5]},
            {"index": 0, "object": "embedding", "embedding": [0.1, -0.2]},
        ],
        "usage": {"prompt_tokens": 4, "total_tokens": 4, "completion_tokens": 0, "prompt_tokens_details": None},
    }
    result = run_offline(
        backend.embed(EmbedRequest(model="BAAI/bge-m3", inputs=("a", "b"))), lambda _r: answer(200, data)
    )
    assert [list(v) for v in result.embeddings] == [[0.1, -0.2], [0.5, 0.5]]


def test_embeddings_on_a_generation_server_are_not_supported() -> None:
    with pytest.raises(NotSupportedError) as caught:
        run_offline(
            backend.embed(EmbedRequest(model=MODEL, inputs=("a",))), lambda _r: answer(404, {"detail": "Not Found"})
        )
    message = str(caught.value)
    assert "embeddings" in message
    assert "pooling" in message


def test_embeddings_of_an_unknown_model_are_model_not_found() -> None:
    body = {
        "error": {"message": "The model `x` does not exist.", "type": "NotFoundError", "param": "model", "code": 404}
    }
    with pytest.raises(ModelNotFoundError):
        run_offline(backend.embed(EmbedRequest(model="x", inputs=("a",))), lambda _r: answer(404, body))


# -- errors -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {
            "error": {
                "message": "The model `foo` does not exist.",
                "type": "NotFoundError",
                "param": "model",
                "code": 404,
            }
        },
        {
            "object": "error",
            "message": "The model `foo` does not exist.",
            "type": "NotFoundError",
            "param": None,
            "code": 404,
        },
    ],
    ids=["nested", "flat"],
)
def test_unknown_model_in_both_error_shapes(body: Any) -> None:
    error = backend.error(answer(404, body))
    assert isinstance(error, ModelNotFoundError)
    assert error.message == "The model `foo` does not exist."
    assert error.error_type == "NotFoundError"


def test_validation_error_is_400_invalid_request() -> None:
    body = {
        "error": {
            "message": "Stream options can only be defined when `stream=True`.",
            "type": "Bad Request",
            "param": None,
            "code": 400,
        }
    }
    error = backend.error(answer(400, body))
    assert isinstance(error, InvalidRequestError)
    assert "stream=True" in str(error)


def test_unauthorized_says_to_give_the_key() -> None:
    error = backend.error(answer(401, {"error": "Unauthorized"}))
    assert isinstance(error, AuthenticationError)
    assert error.status == 401
    assert "--api-key" in str(error)
    assert "api_key" in str(error)


def test_missing_route_is_not_supported() -> None:
    error = backend.error(answer(404, {"detail": "Not Found"}))
    assert isinstance(error, NotSupportedError)
    assert "route" in str(error)


def test_wrong_method_is_an_error_with_fastapi_detail() -> None:
    error = backend.error(answer(405, {"detail": "Method Not Allowed"}))
    assert isinstance(error, BackendError)
    assert "Method Not Allowed" in str(error)


# -- health, models, activity -----------------------------------------------------------------------


def test_health() -> None:
    assert backend.health() == HttpRequest.get("/health")
    assert backend.health_state(answer(200, b"", None)) is NodeState.UP
    assert backend.health_state(answer(503, b"", None)) is NodeState.DOWN  # a dead engine, not loading
    assert backend.health_state(HttpResponse(status=0, error="connection refused")) is NodeState.DOWN
    assert backend.default_ports == (8000,)


def card(name: str, parent: str | None = None, max_len: int | None = 131072) -> dict[str, Any]:
    return {
        "id": name,
        "object": "model",
        "created": 1733001000,
        "owned_by": "vllm",
        "root": name,
        "parent": parent,
        "max_model_len": max_len,
        "permission": [],
    }


MODELS = {"object": "list", "data": [card(MODEL), card("sql-lora", parent=MODEL, max_len=None)]}


def test_models_with_lora_cards() -> None:
    models = run_offline(backend.models(), lambda _r: answer(200, MODELS))
    by_name = {m.name: m for m in models}
    assert by_name[MODEL].context_length == 131072
    assert by_name[MODEL].details["owned_by"] == "vllm"
    assert by_name["sql-lora"].details["parent"] == MODEL
    assert by_name["sql-lora"].details["lora"] is True
    assert by_name["sql-lora"].context_length == 131072  # the base model's


METRICS_NEW = f"""# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{engine="0",model_name="{MODEL}"}} 2.0
vllm:num_requests_running{{engine="1",model_name="{MODEL}"}} 1.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{{engine="0",model_name="{MODEL}"}} 0.0
vllm:num_requests_waiting{{engine="1",model_name="{MODEL}"}} 4.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{{engine="0",model_name="{MODEL}"}} 0.2
vllm:kv_cache_usage_perc{{engine="1",model_name="{MODEL}"}} 0.4
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{{engine="0",model_name="{MODEL}"}} 1234.0
"""

METRICS_OLD = f"""# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{model_name="{MODEL}"}} 1.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{{model_name="{MODEL}"}} 2.0
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{{model_name="{MODEL}"}} 0.0734
"""


def activity(metrics: HttpResponse, models: HttpResponse) -> Any:
    def reply(request: HttpRequest) -> HttpResponse:
        return metrics if request.path == "/metrics" else models

    return run_offline(backend.activity(), reply)


def test_activity_sums_engines() -> None:
    found = activity(answer(200, METRICS_NEW.encode(), "text/plain; version=0.0.4; charset=utf-8"), answer(200, MODELS))
    assert found.running == 3
    assert found.waiting == 4
    assert found.kv_cache_usage == pytest.approx(0.3)  # a fraction: the mean over the engines
    assert found.loaded_names == {MODEL, "sql-lora"}
    assert found.context_length == 131072
    assert found.raw["engines"] == ["0", "1"]
    assert found.vram_used is None
    assert found.capacity is None


def test_activity_old_metric_names() -> None:
    found = activity(answer(200, METRICS_OLD.encode(), "text/plain"), answer(200, MODELS))
    assert (found.running, found.waiting) == (1, 2)
    assert found.kv_cache_usage == pytest.approx(0.0734)
    assert found.raw["kv_metric"] == "vllm:gpu_cache_usage_perc"


def test_activity_prefers_the_current_kv_name_when_both_are_shown() -> None:
    both = (
        METRICS_OLD.replace(f'{{model_name="{MODEL}"}} 0.0734', f'{{model_name="{MODEL}"}} 0.9')
        + f'vllm:kv_cache_usage_perc{{model_name="{MODEL}"}} 0.1\n'
    )
    found = activity(answer(200, both.encode(), "text/plain"), answer(200, MODELS))
    assert found.kv_cache_usage == pytest.approx(0.1)


def test_activity_without_metrics_or_key_is_unknown_not_zero() -> None:
    found = activity(answer(404, {"detail": "Not Found"}), answer(401, {"error": "Unauthorized"}))
    assert found.running is None
    assert found.waiting is None
    assert found.kv_cache_usage is None
    assert found.loaded is None
    assert found.context_length is None
    partial = activity(answer(200, b"# nothing of vLLM here\n", "text/plain"), answer(200, MODELS))
    assert partial.running is None
    assert partial.loaded_names == {MODEL, "sql-lora"}
