"""The llama.cpp codec on answers the recordings do not cover: old builds, errors, quirks."""

from __future__ import annotations

import json

import pytest

from sollol.codec import iter_chunks
from sollol.detection import NodeState
from sollol.errors import (
    AuthenticationError,
    OverloadedError,
    StreamError,
    UnavailableError,
)
from sollol.http import HttpRequest, HttpResponse, run_offline
from sollol.inference import ChatRequest, GenerateRequest
from sollol_llamacpp.codec import ContextLengthError, LlamaCppBackend, NativeCompletionStream

BACKEND = LlamaCppBackend()
HEADER = (("Server", "llama.cpp"), ("Content-Type", "application/json; charset=utf-8"))
CHAT = ChatRequest(
    model="anything", messages=[{"role": "user", "content": "hi"}], options={"num_predict": 8, "repeat_penalty": 1.1}
)


def answer(status: int, body: object) -> HttpResponse:
    return HttpResponse(status=status, headers=HEADER, body=json.dumps(body).encode())


def sse(*events: object) -> bytes:
    return b"".join(b"data: " + (e if isinstance(e, bytes) else json.dumps(e).encode()) + b"\n\n" for e in events)


@pytest.mark.parametrize(
    ("status", "body", "state"),
    [
        (200, {"status": "ok"}, NodeState.UP),
        (503, {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}, NodeState.LOADING),
        (503, {"status": "loading model"}, NodeState.LOADING),  # builds before mid-2024
        (503, {"status": "no slot available", "slots_idle": 0, "slots_processing": 4}, NodeState.UP),
        (500, {"status": "error"}, NodeState.DOWN),
        (
            401,
            {"error": {"code": 401, "message": "Invalid API Key", "type": "authentication_error"}},
            NodeState.AUTH_REQUIRED,
        ),
    ],
)
def test_health_states(status, body, state):
    assert BACKEND.health_state(answer(status, body)) is state


def test_health_of_no_answer_is_down():
    assert BACKEND.health_state(HttpResponse(status=0, error="refused")) is NodeState.DOWN


def test_exceeding_the_context_is_retryable_elsewhere_and_says_the_sizes():
    body = {
        "error": {
            "code": 400,
            "message": "the request exceeds the available context size, try increasing it",
            "type": "exceed_context_size_error",
            "n_prompt_tokens": 5000,
            "n_ctx": 4096,
        }
    }
    error = BACKEND.error(answer(400, body))
    assert isinstance(error, ContextLengthError)
    assert error.retryable
    assert "5000 tokens" in error.message
    assert "4096" in error.message


def test_a_wrong_key_says_what_to_do():
    error = BACKEND.error(
        answer(401, {"error": {"code": 401, "message": "Invalid API Key", "type": "authentication_error"}})
    )
    assert isinstance(error, AuthenticationError)
    assert "Invalid API Key" in str(error)
    assert "--api-key" in str(error)


def test_loading_and_busy_answers():
    loading = BACKEND.error(
        answer(503, {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}})
    )
    assert isinstance(loading, UnavailableError)
    busy = BACKEND.error(
        answer(503, {"error": {"code": 503, "message": "no slot available", "type": "unavailable_error"}})
    )
    assert isinstance(busy, OverloadedError)
    old = BACKEND.error(answer(503, {"status": "loading model"}))
    assert isinstance(old, UnavailableError)
    assert old.message == "loading model"


def test_requests_keep_llamacpps_sampler_names_and_the_model_name():
    body = BACKEND.chat_body(CHAT, stream=False)
    assert body["repeat_penalty"] == 1.1
    assert "repetition_penalty" not in body
    assert body["max_tokens"] == 8
    assert body["model"] == "anything"  # sent; ignored by a single-model server
    streamed = BACKEND.chat_stream(CHAT).request.json
    assert streamed["stream"] is True
    assert streamed["stream_options"] == {"include_usage": True}


def test_the_answer_names_the_servers_alias_not_the_requested_name():
    reply = {
        "choices": [{"finish_reason": "stop", "index": 0, "message": {"role": "assistant", "content": "Hi"}}],
        "model": "gemma-3-270m",
        "object": "chat.completion",
    }
    result = run_offline(BACKEND.chat(CHAT), lambda _r: answer(200, reply))
    assert result.model == "gemma-3-270m"
    assert result.usage.total_duration is None  # no timings, no invented duration


def test_reasoning_content_becomes_thinking():
    reply = {
        "choices": [
            {
                "finish_reason": "stop",
                "index": 0,
                "message": {"role": "assistant", "content": "4", "reasoning_content": "2+2"},
            }
        ],
        "model": "m",
    }
    assert run_offline(BACKEND.chat(CHAT), lambda _r: answer(200, reply)).thinking == "2+2"
    body = sse(
        {"choices": [{"finish_reason": None, "index": 0, "delta": {"reasoning_content": "2+2"}}], "model": "m"},
        {"choices": [{"finish_reason": None, "index": 0, "delta": {"content": "4"}}], "model": "m"},
        {"choices": [{"finish_reason": "stop", "index": 0, "delta": {}}], "model": "m"},
        b"[DONE]",
    )
    chunks = list(iter_chunks(BACKEND.chat_stream(CHAT).decoder(), body))
    assert [c.thinking for c in chunks if c.thinking] == ["2+2"]
    assert chunks[-1].done


def test_a_later_error_in_a_stream_raises_with_the_servers_message():
    body = sse(
        {"choices": [{"finish_reason": None, "index": 0, "delta": {"content": "Hel"}}], "model": "m"},
        {"error": {"code": 500, "message": "slot crashed", "type": "server_error"}},
    )
    decoder = BACKEND.chat_stream(CHAT).decoder()
    with pytest.raises(StreamError, match="slot crashed") as caught:
        list(iter_chunks(decoder, body))
    assert caught.value.status == 500


def test_native_completion_stream_errors_in_band():
    body = sse(
        {"index": 0, "content": " a", "stop": False},
        {"error": {"code": 500, "message": "boom", "type": "server_error"}},
    )
    with pytest.raises(StreamError, match="boom"):
        list(iter_chunks(NativeCompletionStream(), body))


def test_native_completion_request():
    plan = BACKEND.native_completion_stream(
        GenerateRequest(model="m", prompt="The sky is", options={"num_predict": 5, "temperature": 0})
    )
    assert (plan.request.method, plan.request.path) == ("POST", "/completion")
    assert plan.request.json == {"prompt": "The sky is", "stream": True, "temperature": 0, "n_predict": 5}


def test_models_fall_back_to_the_ollama_style_list():
    def serve(request: HttpRequest) -> HttpResponse:
        if request.path == "/props":
            return answer(404, {"error": {"code": 404, "message": "File Not Found", "type": "not_found_error"}})
        return answer(200, {"object": "list", "models": [{"name": "m", "model": "m"}]})

    models = run_offline(BACKEND.models(), serve)
    assert [m.name for m in models] == ["m"]
    assert models[0].context_length is None


def test_models_while_a_2025_build_is_loading_have_no_meta():
    def serve(request: HttpRequest) -> HttpResponse:
        if request.path == "/props":
            return answer(503, {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}})
        return answer(
            200, {"object": "list", "data": [{"id": "m", "object": "model", "owned_by": "llamacpp", "meta": None}]}
        )

    (model,) = run_offline(BACKEND.models(), serve)
    assert (model.name, model.context_length, model.size) == ("m", None, None)


def test_activity_in_router_mode_does_not_invent_a_loaded_model():
    props = {
        "role": "router",
        "max_instances": 4,
        "model_alias": "llama-server",
        "model_path": "none",
        "default_generation_settings": {"params": {}, "n_ctx": 0},
    }

    def serve(request: HttpRequest) -> HttpResponse:
        if request.path == "/props":
            return answer(200, props)
        return answer(501, {"error": {"code": 501, "message": "not supported", "type": "not_supported_error"}})

    activity = run_offline(BACKEND.activity(), serve)
    assert (activity.loaded, activity.context_length, activity.running, activity.capacity) == (None, None, None, None)


def test_activity_behind_a_key_raises_the_auth_error():
    denied = answer(401, {"error": {"code": 401, "message": "Invalid API Key", "type": "authentication_error"}})
    with pytest.raises(AuthenticationError):
        run_offline(BACKEND.activity(), lambda _r: denied)
