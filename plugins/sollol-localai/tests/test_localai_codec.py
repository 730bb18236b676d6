"""The LocalAI codec on bytes shaped like LocalAI's (section 7 of the protocol reference); no server."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from sollol.codec import iter_chunks
from sollol.detection import NodeState
from sollol.errors import (
    AuthenticationError,
    BackendServerError,
    ConnectError,
    InvalidRequestError,
    ModelNotFoundError,
    NotSupportedError,
    ProtocolError,
    StreamError,
    UnavailableError,
)
from sollol.http import HttpRequest, HttpResponse, run_offline
from sollol.inference import ChatRequest, EmbedRequest, GenerateRequest
from sollol_localai import LocalAIBackend

JSON_HEADERS = (("content-type", "application/json"),)


def response(status: int, body: Any = b"", headers: tuple[tuple[str, str], ...] = JSON_HEADERS) -> HttpResponse:
    raw = body if isinstance(body, bytes) else json.dumps(body, separators=(",", ":")).encode()
    return HttpResponse(status=status, headers=headers if raw else (), body=raw)


def answers(
    table: Mapping[str, HttpResponse], seen: list[HttpRequest] | None = None
) -> Callable[[HttpRequest], HttpResponse]:
    def answer(request: HttpRequest) -> HttpResponse:
        if seen is not None:
            seen.append(request)
        key = request.path + ("?" + "&".join(f"{k}={v}" for k, v in request.params) if request.params else "")
        return table.get(key) or HttpResponse(status=0, error="connection refused")

    return answer


@pytest.fixture
def backend() -> LocalAIBackend:
    return LocalAIBackend()


def test_identity(backend: LocalAIBackend) -> None:
    assert backend.name == "localai"
    assert backend.default_ports == (8080,)
    assert backend.health() == HttpRequest.get("/readyz")
    assert backend.operations == frozenset({"chat", "generate", "embed"})


# -- health -------------------------------------------------------------------------------------


def test_health_states(backend: LocalAIBackend) -> None:
    assert backend.health_state(response(200)) is NodeState.UP
    assert backend.health_state(HttpResponse(status=200, body=b"OK")) is NodeState.UP  # Fiber < v3.8
    starting = response(503, {"status": "starting", "reason": "startup preload in progress"})
    assert backend.health_state(starting) is NodeState.LOADING
    assert backend.health_state(HttpResponse(status=0, error="refused")) is NodeState.DOWN
    assert backend.health_state(response(500, b"")) is NodeState.DOWN


# -- errors -------------------------------------------------------------------------------------


def test_unknown_model_is_404(backend: LocalAIBackend) -> None:
    body = {
        "error": {
            "code": 404,
            "message": 'model "foo" not found. To see available models, call GET /v1/models',
            "type": "invalid_request_error",
        }
    }
    err = backend.error(response(404, body))
    assert isinstance(err, ModelNotFoundError)
    assert 'model "foo" not found' in err.message
    assert err.error_type == "invalid_request_error"


def test_missing_route_is_not_supported(backend: LocalAIBackend) -> None:
    err = backend.error(response(404, {"error": {"code": 404, "message": "Resource not found", "type": ""}}))
    assert isinstance(err, NotSupportedError)
    assert err.status == 404


def test_string_code_and_empty_type(backend: LocalAIBackend) -> None:
    err = backend.error(
        response(500, {"error": {"code": "server_error", "message": "rpc error: backend crashed", "type": ""}})
    )
    assert isinstance(err, BackendServerError)
    assert err.message == "rpc error: backend crashed"
    assert err.error_type == "server_error"  # the string code stands in for the empty type


def test_int_code_and_empty_type(backend: LocalAIBackend) -> None:
    err = backend.error(response(400, {"error": {"code": 400, "message": "bad input", "type": ""}}))
    assert isinstance(err, InvalidRequestError)
    assert err.error_type is None


def test_model_loading_is_unavailable_with_retry_after(backend: LocalAIBackend) -> None:
    body = {
        "error": {"code": "model_loading", "message": "model qwen is loading on a worker", "type": "model_loading"},
        "loading": {"model": "qwen", "progress": 0.4},
    }
    err = backend.error(response(503, body, (*JSON_HEADERS, ("retry-after", "5"))))
    assert isinstance(err, UnavailableError)
    assert "retry after 5 s" in err.message
    assert err.error_type == "model_loading"


@pytest.mark.parametrize(
    "body",
    [
        {"error": {"code": 401, "message": "An authentication key is required", "type": "invalid_request_error"}},
        {"error": {"code": 401, "message": "Authentication required", "type": "authentication_error"}},
        b"",
    ],
)
def test_401_shapes(backend: LocalAIBackend, body: Any) -> None:
    err = backend.error(response(401, body))
    assert isinstance(err, AuthenticationError)
    assert "api_key" in err.message


@pytest.mark.parametrize(
    ("status", "kind"),
    [(500, BackendServerError), (503, UnavailableError), (404, ModelNotFoundError), (400, InvalidRequestError)],
)
def test_opaque_errors_have_empty_bodies(backend: LocalAIBackend, status: int, kind: type[Exception]) -> None:
    err = backend.error(HttpResponse(status=status, body=b""))
    assert isinstance(err, kind)
    assert "LOCALAI_OPAQUE_ERRORS" in str(err)


def test_unreached_is_connect_error(backend: LocalAIBackend) -> None:
    assert isinstance(backend.error(HttpResponse(status=0, error="refused")), ConnectError)


def test_non_json_error_body(backend: LocalAIBackend) -> None:
    err = backend.error(HttpResponse(status=502, body=b"<html>bad gateway</html>"))
    assert isinstance(err, BackendServerError)
    assert "bad gateway" in err.message


# -- inventory ----------------------------------------------------------------------------------


def test_models_lists_every_configured_model(backend: LocalAIBackend) -> None:
    body = {
        "object": "list",
        "data": [
            {"id": "qwen2.5-7b-instruct", "object": "model"},
            {"id": "whisper-1", "object": "model"},
            {"id": "stablediffusion", "object": "model"},
        ],
    }
    models = run_offline(backend.models(), answers({"/v1/models": response(200, body)}))
    assert [m.name for m in models] == ["qwen2.5-7b-instruct", "whisper-1", "stablediffusion"]
    assert all(m.capabilities is None and "owned_by" not in m.details for m in models)


def test_models_401(backend: LocalAIBackend) -> None:
    body = {"error": {"code": 401, "message": "An authentication key is required", "type": "invalid_request_error"}}
    with pytest.raises(AuthenticationError):
        run_offline(backend.models(), answers({"/v1/models": response(401, body)}))


# -- generation ---------------------------------------------------------------------------------

CHAT_BODY = {
    "created": 1733001000,
    "object": "chat.completion",
    "id": "c1d2e3f4-0000-4000-8000-000000000001",
    "model": "qwen2.5-7b-instruct",
    "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "Hello!"}}],
    "usage": {"prompt_tokens": 21, "completion_tokens": 9, "total_tokens": 30},
}


def test_chat(backend: LocalAIBackend) -> None:
    seen: list[HttpRequest] = []
    request = ChatRequest(
        model="qwen2.5-7b-instruct", messages=[{"role": "user", "content": "hi"}], options={"num_predict": 9}
    )
    result = run_offline(backend.chat(request), answers({"/v1/chat/completions": response(200, CHAT_BODY)}, seen))
    assert result.text == "Hello!"
    assert result.done_reason == "stop"
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (21, 9)
    body = seen[0].json
    assert body["max_tokens"] == 9
    assert body["stream"] is False
    assert "stream_options" not in body


def test_chat_error_in_200_body(backend: LocalAIBackend) -> None:
    body = {"error": {"code": 500, "message": "could not load model", "type": ""}}
    with pytest.raises(Exception, match="could not load model"):
        run_offline(
            backend.chat(ChatRequest(model="m", messages=[])), answers({"/v1/chat/completions": response(200, body)})
        )


def test_generate(backend: LocalAIBackend) -> None:
    body = {
        "created": 1,
        "object": "text_completion",
        "id": "x",
        "model": "m",
        "choices": [{"index": 0, "finish_reason": "length", "text": "once upon"}],
        "usage": {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4},
    }
    result = run_offline(
        backend.generate(GenerateRequest(model="m", prompt="tell")), answers({"/v1/completions": response(200, body)})
    )
    assert result.text == "once upon"
    assert result.done_reason == "length"


def test_embed(backend: LocalAIBackend) -> None:
    body = {
        "created": 1,
        "object": "list",
        "id": "x",
        "model": "e",
        "data": [
            {"embedding": [0.2], "index": 1, "object": "embedding"},
            {"embedding": [0.1], "index": 0, "object": "embedding"},
        ],
        "usage": {"prompt_tokens": 2, "total_tokens": 2},
    }
    result = run_offline(
        backend.embed(EmbedRequest(model="e", inputs=["a", "b"])), answers({"/v1/embeddings": response(200, body)})
    )
    assert [list(v) for v in result.embeddings] == [[0.1], [0.2]]


# -- streams ------------------------------------------------------------------------------------


def sse(*events: Any) -> bytes:
    out = b""
    for event in events:
        payload = event if isinstance(event, str) else json.dumps(event, separators=(",", ":"))
        out += f"data: {payload}\n\n".encode()
    return out


def chunk(delta: Mapping[str, Any] | None, finish: str | None = None, usage: Any = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "created": 1733001000,
        "object": "chat.completion.chunk",
        "id": "c1d2",
        "model": "qwen",
        "choices": [{"index": 0, "finish_reason": finish, "delta": dict(delta or {})}],
    }
    if usage is not None:
        out["usage"] = usage
    return out


USAGE = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}


def test_chat_stream_with_usage(backend: LocalAIBackend) -> None:
    plan = backend.chat_stream(ChatRequest(model="qwen", messages=[{"role": "user", "content": "hi"}]))
    assert plan.request.json["stream_options"] == {"include_usage": True}
    body = sse(
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Hel"}),
        chunk({"content": "lo"}),
        chunk({}, "stop"),
        {
            "id": "c1d2",
            "created": 1733001000,
            "model": "qwen",
            "object": "chat.completion.chunk",
            "choices": [],
            "usage": USAGE,
        },
        "[DONE]",
    )
    chunks = list(iter_chunks(plan.decoder(), body))
    assert "".join(c.text for c in chunks) == "Hello"
    final = chunks[-1]
    assert final.done
    assert final.done_reason == "stop"
    assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (5, 2)


def test_chat_stream_before_4_2_5_usage_on_every_chunk(backend: LocalAIBackend) -> None:
    zero = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    body = sse(chunk({"role": "assistant", "content": "Hi"}, usage=zero), chunk({}, "stop", usage=USAGE), "[DONE]")
    plan = backend.chat_stream(ChatRequest(model="qwen", messages=[]))
    chunks = list(iter_chunks(plan.decoder(), body, piece=5))
    assert [c.text for c in chunks if c.text] == ["Hi"]
    assert chunks[-1].usage.completion_tokens == 2


def test_stream_error_then_done(backend: LocalAIBackend) -> None:
    body = sse(
        chunk({"content": "Hel"}),
        {"error": {"code": "server_error", "message": "backend died", "type": "server_error"}},
        "[DONE]",
    )
    decoder = backend.chat_stream(ChatRequest(model="qwen", messages=[])).decoder()
    with pytest.raises(StreamError, match="backend died") as caught:
        list(iter_chunks(decoder, body))
    assert caught.value.error_type == "server_error"


def test_truncated_stream(backend: LocalAIBackend) -> None:
    body = sse(chunk({"role": "assistant", "content": ""}), chunk({"content": "Hel"}))
    decoder = backend.chat_stream(ChatRequest(model="qwen", messages=[])).decoder()
    with pytest.raises(ProtocolError):
        list(iter_chunks(decoder, body))


def test_completion_stream(backend: LocalAIBackend) -> None:
    def piece(text: str, finish: str | None = None) -> dict[str, Any]:
        return {
            "created": 1,
            "object": "text_completion",
            "id": "x",
            "model": "m",
            "choices": [{"index": 0, "finish_reason": finish, "text": text}],
        }

    plan = backend.generate_stream(GenerateRequest(model="m", prompt="p"))
    assert plan.request.path == "/v1/completions"
    chunks = list(iter_chunks(plan.decoder(), sse(piece("a"), piece("b"), piece("", "stop"), "[DONE]")))
    assert "".join(c.text for c in chunks) == "ab"
    assert chunks[-1].done


# -- activity -----------------------------------------------------------------------------------


def monitor(model: str) -> str:
    return f"/backend/monitor?model={model}"


def test_activity_counts_busy_models(backend: LocalAIBackend) -> None:
    system = {
        "backends": ["llama-cpp"],
        "loaded_models": [{"id": "a", "backend": "llama-cpp"}, {"id": "b", "backend": "llama-cpp"}, {"id": "c"}],
    }
    table = {
        "/system": response(200, system),
        monitor("a"): response(200, {"state": 1, "memory": {"total": 4831838208, "breakdown": {"gpu": 4294967296}}}),
        monitor("b"): response(200, {"state": 2, "memory": {"total": 1000}}),
        monitor("c"): response(200, {}),  # UNINITIALIZED: state 0 is omitted
    }
    activity = run_offline(backend.activity(), answers(table))
    assert activity.loaded_names == frozenset({"a", "b", "c"})
    assert activity.running == 1
    assert activity.waiting is None
    assert activity.capacity is None
    assert activity.kv_cache_usage is None
    assert activity.vram_used == 4294967296
    sizes = {m.name: (m.size, m.size_vram) for m in activity.loaded or ()}
    assert sizes == {"a": (4831838208, 4294967296), "b": (1000, None), "c": (None, None)}


def test_activity_old_system_shape_and_unloaded_race(backend: LocalAIBackend) -> None:
    table = {
        "/system": response(200, {"loaded_models": [{"id": "a"}, {"id": "gone"}]}),
        monitor("a"): response(200, {"state": 2}),
        monitor("gone"): response(
            500, {"error": {"code": 500, "message": "backend gone is not currently loaded", "type": ""}}
        ),
    }
    activity = run_offline(backend.activity(), answers(table))
    assert activity.loaded_names == frozenset({"a"})
    assert activity.running == 0
    assert activity.vram_used is None


def test_activity_unreadable_monitor_leaves_running_unknown(backend: LocalAIBackend) -> None:
    table = {
        "/system": response(200, {"loaded_models": [{"id": "a"}, {"id": "b"}]}),
        monitor("a"): response(200, {"state": 1}),
    }
    activity = run_offline(backend.activity(), answers(table))
    assert activity.loaded_names == frozenset({"a", "b"})
    assert activity.running is None


def test_activity_nothing_loaded(backend: LocalAIBackend) -> None:
    seen: list[HttpRequest] = []
    activity = run_offline(
        backend.activity(), answers({"/system": response(200, {"backends": [], "loaded_models": []})}, seen)
    )
    assert activity.loaded == ()
    assert activity.running == 0
    assert [r.path for r in seen] == ["/system"]


def test_activity_without_system_route(backend: LocalAIBackend) -> None:
    activity = run_offline(
        backend.activity(),
        answers({"/system": response(404, {"error": {"code": 404, "message": "Resource not found", "type": ""}})}),
    )
    assert activity.loaded is None
    assert activity.running is None


def test_activity_needs_key(backend: LocalAIBackend) -> None:
    body = {"error": {"code": 401, "message": "An authentication key is required", "type": "invalid_request_error"}}
    with pytest.raises(AuthenticationError):
        run_offline(backend.activity(), answers({"/system": response(401, body)}))
