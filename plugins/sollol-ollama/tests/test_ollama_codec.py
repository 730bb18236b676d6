"""The Ollama codec on bytes, with no server."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from sollol.codec import iter_chunks
from sollol.errors import (
    InvalidRequestError,
    ModelNotFoundError,
    OverloadedError,
    ProtocolError,
    StreamError,
)
from sollol.http import HttpRequest, HttpResponse, run_offline
from sollol.inference import ChatRequest, EmbedRequest, GenerateRequest
from sollol_ollama.codec import OllamaBackend, OllamaStream

JSON = (("content-type", "application/json; charset=utf-8"),)


def answer(status: int, body: object, headers: tuple[tuple[str, str], ...] = JSON) -> HttpResponse:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return HttpResponse(status=status, headers=headers, body=raw)


def replay(routes: dict[str, HttpResponse], seen: list[HttpRequest]) -> Callable[[HttpRequest], HttpResponse]:
    def respond(request: HttpRequest) -> HttpResponse:
        seen.append(request)
        return routes[f"{request.method} {request.path}"]

    return respond


backend = OllamaBackend()


def test_chat_passes_every_field_through_untouched() -> None:
    request = ChatRequest(
        model="llama3.2",
        messages=[{"role": "user", "content": "hi", "images": ["aGk="]}],
        options={"temperature": 0.1, "num_ctx": 8192},
        params={"format": {"type": "object"}, "tools": [{"type": "function"}], "keep_alive": "1h", "think": "high"},
    )
    seen: list[HttpRequest] = []
    reply = {
        "model": "llama3.2",
        "created_at": "2025-07-07T20:22:19.184789Z",
        "message": {
            "role": "assistant",
            "content": "",
            "thinking": "hmm",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Tokyo"}}}],
        },
        "done": True,
        "done_reason": "stop",
        "eval_count": 3,
        "total_duration": 2_000_000_000,
    }
    result = run_offline(backend.chat(request), replay({"POST /api/chat": answer(200, reply)}, seen))
    body = seen[0].json
    assert body["stream"] is False
    assert body["options"] == {"temperature": 0.1, "num_ctx": 8192}
    assert body["format"] == {"type": "object"} and body["keep_alive"] == "1h" and body["think"] == "high"
    assert body["messages"][0]["images"] == ["aGk="]
    assert result.thinking == "hmm"
    assert result.tool_calls[0].name == "get_weather" and result.tool_calls[0].arguments == {"city": "Tokyo"}
    # Counters Ollama left out are unknown (None), not invented zeros.
    assert result.usage.completion_tokens == 3 and result.usage.prompt_tokens is None
    assert result.usage.total_duration == pytest.approx(2.0)
    assert result.raw == reply


def test_stream_decodes_ndjson_in_small_pieces() -> None:
    lines = [
        {"model": "m", "message": {"role": "assistant", "content": "Hel"}, "done": False},
        {"model": "m", "message": {"role": "assistant", "content": "lo"}, "done": False},
        {
            "model": "m",
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": "stop",
            "eval_count": 2,
        },
    ]
    body = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    chunks = list(iter_chunks(OllamaStream("message"), body, piece=5))
    assert "".join(c.text for c in chunks) == "Hello"
    assert chunks[-1].done and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 2
    assert [c.done for c in chunks].count(True) == 1


def test_error_line_inside_a_200_stream_raises() -> None:
    body = b'{"model":"m","response":"a","done":false}\n{"error":"runner crashed"}\n'
    decoder = OllamaStream("response")
    with pytest.raises(StreamError, match="runner crashed"):
        list(iter_chunks(decoder, body))


def test_stream_without_done_line_is_truncated() -> None:
    body = b'{"model":"m","response":"a","done":false}\n'
    with pytest.raises(ProtocolError, match="before its final"):
        list(iter_chunks(OllamaStream("response"), body))


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (404, {"error": "model 'x' not found"}, ModelNotFoundError),
        (400, {"error": "model is required"}, InvalidRequestError),
        (503, {"error": "server busy, please try again.  maximum pending requests exceeded"}, OverloadedError),
    ],
)
def test_error_mapping(status: int, body: object, error: type[Exception]) -> None:
    request = GenerateRequest(model="x", prompt="p")
    with pytest.raises(error):
        run_offline(backend.generate(request), lambda _: answer(status, body))


def test_malformed_body_is_protocol_error() -> None:
    request = GenerateRequest(model="x", prompt="p")
    with pytest.raises(ProtocolError, match="malformed JSON"):
        run_offline(backend.generate(request), lambda _: answer(200, b"{oops"))


def test_embed_falls_back_to_legacy_route_on_old_servers() -> None:
    seen: list[HttpRequest] = []
    gin404 = HttpResponse(status=404, headers=(("content-type", "text/plain"),), body=b"404 page not found")
    routes = {"POST /api/embed": gin404, "POST /api/embeddings": answer(200, {"embedding": [0.5, 0.25]})}
    result = run_offline(backend.embed(EmbedRequest(model="all-minilm", inputs=["a", "b"])), replay(routes, seen))
    assert [r.path for r in seen] == ["/api/embed", "/api/embeddings", "/api/embeddings"]
    assert [r.json["prompt"] for r in seen[1:]] == ["a", "b"]
    assert result.embeddings == [[0.5, 0.25], [0.5, 0.25]]


def test_embed_model_missing_is_not_mistaken_for_an_old_server() -> None:
    with pytest.raises(ModelNotFoundError):
        run_offline(
            backend.embed(EmbedRequest(model="nope", inputs=["a"])),
            lambda _: answer(404, {"error": "model 'nope' not found"}),
        )


def test_models_read_tags_and_show_capabilities() -> None:
    tags = {"models": [{"name": "llava:latest", "size": 5, "details": {"family": "llama"}}]}
    show = {"capabilities": ["completion", "vision"], "model_info": {"llama.context_length": 8192}}
    routes = {"GET /api/tags": answer(200, tags), "POST /api/show": answer(200, show)}
    (info,) = run_offline(backend.models(), replay(routes, []))
    assert info.name == "llava:latest" and info.capabilities == frozenset({"completion", "vision"})
    assert info.context_length == 8192 and info.family == "llama"


def test_activity_from_ps() -> None:
    ps = {
        "models": [
            {
                "name": "mistral:latest",
                "size": 10,
                "size_vram": 6,
                "expires_at": "2024-06-04T14:38:31Z",
                "context_length": 4096,
            }
        ]
    }
    activity = run_offline(backend.activity(), lambda _: answer(200, ps))
    assert activity.loaded_names == frozenset({"mistral:latest"})
    assert activity.loaded is not None and activity.loaded[0].size_vram == 6
    assert activity.vram_used == 6
    # Ollama does not report queues: unknown, never zero.
    assert activity.running is None and activity.waiting is None and activity.vram_total is None
