"""The TGI codec on bytes shaped like TGI's (section 5 of the protocol reference); no server."""

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
    InvalidRequestError,
    ModelNotFoundError,
    NotSupportedError,
    OverloadedError,
    ProtocolError,
    StreamError,
    UnavailableError,
)
from sollol.http import HttpRequest, HttpResponse, run_offline
from sollol.inference import ChatRequest, EmbedRequest, GenerateRequest
from sollol_tgi.codec import TGIBackend, generate_parameters

JSON = (("content-type", "application/json"),)
MODEL = "meta-llama/Llama-3.1-8B-Instruct"

INFO_3 = {
    "model_id": MODEL,
    "model_sha": "0e9e39f249a16976918f6564b8830bc894c89659",
    "model_pipeline_tag": "text-generation",
    "max_concurrent_requests": 128,
    "max_best_of": 2,
    "max_stop_sequences": 4,
    "max_input_tokens": 8191,
    "max_total_tokens": 8192,
    "validation_workers": 2,
    "max_client_batch_size": 4,
    "router": "text-generation-router",
    "version": "3.3.6",
    "sha": "a1b2c3d",
    "docker_label": "sha-a1b2c3d",
}
INFO_1 = {
    "model_id": "bigscience/bloom-560m",
    "model_sha": "4f42c91d806a19ae1a46af6c3fb5f4990d884cd6",
    "model_dtype": "torch.float16",
    "model_device_type": "cuda",
    "model_pipeline_tag": "text-generation",
    "max_concurrent_requests": 128,
    "max_best_of": 2,
    "max_stop_sequences": 4,
    "max_input_length": 1024,
    "max_total_tokens": 2048,
    "waiting_served_ratio": 1.2,
    "max_batch_total_tokens": 16000,
    "max_waiting_tokens": 20,
    "validation_workers": 2,
    "version": "1.4.5",
    "sha": None,
    "docker_label": None,
}

# /generate_stream as TGI writes it: `data:` without a space, `:` keep-alive comments, no [DONE].
GENERATE_STREAM = (
    b":\n\n"
    b'data:{"index":1,"token":{"id":17566,"text":" Deep","logprob":-0.21,"special":false},'
    b'"generated_text":null,"details":null}\n\n'
    b":\n\n"
    b'data:{"index":2,"token":{"id":6975,"text":" learning","logprob":-0.02,"special":false},'
    b'"generated_text":null,"details":null}\n\n'
    b'data:{"index":3,"token":{"id":13,"text":".","logprob":-0.6,"special":false},'
    b'"generated_text":" Deep learning.","details":{"finish_reason":"length","generated_tokens":3,"seed":null,'
    b'"input_length":6}}\n\n'
)
EOS_STREAM = (
    b'data:{"index":1,"token":{"id":5,"text":"Hi","logprob":-0.1,"special":false},"generated_text":null,"details":null}\n\n'
    b'data:{"index":2,"token":{"id":2,"text":"</s>","logprob":-0.1,"special":true},"generated_text":"Hi",'
    b'"details":{"finish_reason":"eos_token","generated_tokens":2,"seed":7,"input_length":3}}\n\n'
)
CHAT_STREAM = (
    b'data:{"object":"chat.completion.chunk","id":"","created":1733001000,"model":"' + MODEL.encode() + b'",'
    b'"system_fingerprint":"3.3.6-native","choices":[{"index":0,"delta":{"role":"assistant","content":"Deep"},'
    b'"logprobs":null,"finish_reason":null}],"usage":null}\n\n'
    b'data:{"object":"chat.completion.chunk","id":"","created":1733001000,"model":"' + MODEL.encode() + b'",'
    b'"system_fingerprint":"3.3.6-native","choices":[{"index":0,"delta":{"role":"assistant","content":" end"},'
    b'"logprobs":null,"finish_reason":"stop_sequence"}],"usage":null}\n\n'
    b'data:{"object":"chat.completion.chunk","id":"","created":1733001000,"model":"' + MODEL.encode() + b'",'
    b'"system_fingerprint":"3.3.6-native","choices":[],"usage":{"prompt_tokens":20,"completion_tokens":2,'
    b'"total_tokens":22}}\n\n'
    b"data:[DONE]\n\n"
)
METRICS = """# TYPE tgi_request_count counter
tgi_request_count 12
# TYPE tgi_queue_size gauge
tgi_queue_size 3
# TYPE tgi_batch_current_size gauge
tgi_batch_current_size 5
# TYPE tgi_batch_current_max_tokens gauge
tgi_batch_current_max_tokens 2048
# TYPE tgi_batch_max_total_tokens gauge
tgi_batch_max_total_tokens 8192
tgi_request_duration{quantile="0.5"} 0.25
"""


def response(status: int, body: Any = b"", headers: tuple[tuple[str, str], ...] = JSON) -> HttpResponse:
    raw = body if isinstance(body, bytes) else json.dumps(body, separators=(",", ":")).encode()
    return HttpResponse(status=status, headers=headers if raw else (), body=raw)


def answers(
    table: Mapping[str, HttpResponse], seen: list[HttpRequest] | None = None
) -> Callable[[HttpRequest], HttpResponse]:
    def answer(request: HttpRequest) -> HttpResponse:
        if seen is not None:
            seen.append(request)
        return table.get(request.path) or HttpResponse(status=404)

    return answer


backend = TGIBackend()


# -- /generate_stream ---------------------------------------------------------------------------------


@pytest.mark.parametrize("piece", [1, 7, 4096])
def test_generate_stream_without_space_or_done(piece: int) -> None:
    chunks = list(iter_chunks(backend.generate_stream(GenerateRequest(model=MODEL)).decoder(), GENERATE_STREAM, piece))
    assert "".join(c.text for c in chunks) == " Deep learning."
    assert [c.done for c in chunks] == [False, False, False, True]
    final = chunks[-1]
    assert final.done_reason == "length"
    assert final.usage is not None
    assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (6, 3)


def test_generate_stream_skips_the_special_eos_token() -> None:
    chunks = list(iter_chunks(backend.generate_stream(GenerateRequest(model=MODEL)).decoder(), EOS_STREAM))
    assert "".join(c.text for c in chunks) == "Hi"
    assert chunks[-1].done
    assert chunks[-1].done_reason == "stop"


def test_generate_stream_ignores_events_after_the_final_one() -> None:
    extra = EOS_STREAM + b'data:{"index":3,"token":{"id":9,"text":"x","special":false},"generated_text":null}\n\n'
    chunks = list(iter_chunks(backend.generate_stream(GenerateRequest(model=MODEL)).decoder(), extra))
    assert "".join(c.text for c in chunks) == "Hi"


@pytest.mark.parametrize(
    ("event", "kind"),
    [
        (
            {"error": "Input validation error: `temperature` must be strictly positive", "error_type": "validation"},
            "validation",
        ),
        ({"error": "Incomplete generation stream", "error_type": "incomplete_generation_stream"}, None),
        ({"error": "Model is overloaded", "error_type": "overloaded"}, "overloaded"),
    ],
)
def test_generate_stream_inband_errors(event: dict[str, Any], kind: str | None) -> None:
    body = GENERATE_STREAM.split(b"\n\n", 2)[0] + b"\n\n" + b"data:" + json.dumps(event).encode() + b"\n\n"
    with pytest.raises(StreamError) as caught:
        list(iter_chunks(backend.generate_stream(GenerateRequest(model=MODEL)).decoder(), body))
    assert event["error"] in str(caught.value)
    assert caught.value.error_type == event["error_type"]


def test_generate_stream_cut_off_is_a_protocol_error() -> None:
    cut = GENERATE_STREAM.rsplit(b"data:", 1)[0]
    with pytest.raises(ProtocolError, match="final event"):
        list(iter_chunks(backend.generate_stream(GenerateRequest(model=MODEL)).decoder(), cut))


def test_generate_stream_malformed_event() -> None:
    with pytest.raises(ProtocolError):
        list(iter_chunks(backend.generate_stream(GenerateRequest(model=MODEL)).decoder(), b"data:{oops\n\n"))


def test_generate_stream_request() -> None:
    plan = backend.generate_stream(GenerateRequest(model=MODEL, prompt="hi", options={"num_predict": 5}))
    request = plan.request
    assert (request.method, request.path, request.stream) == ("POST", "/generate_stream", True)
    assert ("content-type", "application/json") in request.headers
    assert request.json == {"inputs": "hi", "parameters": {"max_new_tokens": 5, "details": True}}


# -- /generate ------------------------------------------------------------------------------------------


def test_generate_reads_details_and_prompt_tokens_header() -> None:
    seen: list[HttpRequest] = []
    body = {
        "generated_text": " Deep learning is",
        "details": {"finish_reason": "stop_sequence", "generated_tokens": 4, "seed": None, "prefill": [], "tokens": []},
    }
    answer = HttpResponse(status=200, headers=(*JSON, ("x-prompt-tokens", "6")), body=json.dumps(body).encode())
    result = run_offline(
        backend.generate(GenerateRequest(model=MODEL, prompt="What is", params={"system": "Be brief."})),
        answers({"/generate": answer}, seen),
    )
    assert result.text == " Deep learning is"
    assert result.done_reason == "stop"
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (6, 4)
    assert result.model == MODEL
    (request,) = seen
    assert request.path == "/generate"
    assert request.json == {"inputs": "Be brief.\n\nWhat is", "parameters": {"details": True}}
    assert ("content-type", "application/json") in request.headers


def test_generate_accepts_the_compat_array_form() -> None:
    result = run_offline(
        backend.generate(GenerateRequest(model=MODEL, prompt="x")),
        answers({"/generate": response(200, [{"generated_text": "y"}])}),
    )
    assert result.text == "y"
    assert result.done_reason is None


def test_options_become_tgi_parameters() -> None:
    request = GenerateRequest(
        model=MODEL,
        options={
            "num_predict": 64,
            "temperature": 0.7,
            "top_p": 0.9,
            "top_k": 40,
            "repeat_penalty": 1.1,
            "seed": 42,
            "stop": "\n\n",
            "num_ctx": 8192,
            "mirostat": 1,
        },
        params={"format": "json", "watermark": True, "keep_alive": "5m"},
    )
    assert generate_parameters(request, stream=False) == {
        "max_new_tokens": 64,
        "temperature": 0.7,
        "do_sample": True,
        "top_p": 0.9,
        "top_k": 40,
        "repetition_penalty": 1.1,
        "seed": 42,
        "stop": ["\n\n"],
        "watermark": True,
        "grammar": {"type": "json", "value": {"type": "object"}},
        "details": True,
    }


def test_values_tgi_rejects_are_translated_not_sent() -> None:
    request = GenerateRequest(
        model=MODEL,
        options={"temperature": 0, "top_p": 1.0, "typical_p": 1.0, "top_k": 0, "num_predict": -1},
        params={"best_of": 2, "truncate": True},
    )
    assert generate_parameters(request, stream=True) == {"do_sample": False, "details": True}
    assert generate_parameters(request, stream=False) == {"do_sample": False, "best_of": 2, "details": True}


def test_greedy_drops_the_sampling_knobs() -> None:
    request = GenerateRequest(model=MODEL, options={"temperature": 0.0, "top_p": 0.9, "top_k": 40, "seed": 1})
    assert generate_parameters(request, stream=False) == {"do_sample": False, "seed": 1, "details": True}


def test_format_schema_becomes_a_grammar() -> None:
    schema = {"type": "object", "properties": {"x": {"type": "string"}}}
    parameters = generate_parameters(GenerateRequest(model=MODEL, params={"format": schema}), stream=False)
    assert parameters["grammar"] == {"type": "json", "value": schema}


# -- chat -------------------------------------------------------------------------------------------------


def test_chat_stream_tgi_style() -> None:
    chunks = list(iter_chunks(backend.chat_stream(ChatRequest(model="tgi", messages=[])).decoder(), CHAT_STREAM, 5))
    assert "".join(c.text for c in chunks) == "Deep end"
    final = chunks[-1]
    assert final.done
    assert final.done_reason == "stop"
    assert final.usage is not None
    assert final.usage.completion_tokens == 2
    assert final.model == MODEL


def test_chat_stream_error_then_done() -> None:
    body = (
        CHAT_STREAM.split(b"\n\n")[0] + b"\n\n"
        b'data:{"error":{"message":"Input validation error: `top_p` must be > 0.0 and < 1.0",'
        b'"http_status_code":422}}\n\ndata:[DONE]\n\n'
    )
    with pytest.raises(StreamError) as caught:
        list(iter_chunks(backend.chat_stream(ChatRequest(model="tgi", messages=[])).decoder(), body))
    assert caught.value.status == 422
    assert "top_p" in caught.value.message


def test_chat_stream_without_done_or_finish_is_cut_off() -> None:
    with pytest.raises(ProtocolError):
        list(iter_chunks(backend.chat_stream(ChatRequest(model="tgi", messages=[])).decoder(), CHAT_STREAM[:300]))


def test_chat_body_drops_top_p_one_and_uses_tgi_grammar() -> None:
    request = ChatRequest(
        model=MODEL,
        messages=[{"role": "user", "content": "hi"}],
        options={"temperature": 0, "top_p": 1.0, "num_predict": 8},
        params={"format": "json"},
    )
    body = backend.chat_body(request, stream=False)
    assert "top_p" not in body
    assert body["temperature"] == 0  # TGI's /v1 routes turn 0 into greedy themselves
    assert body["max_tokens"] == 8
    assert body["response_format"] == {"type": "json", "value": {"type": "object"}}
    assert body["stream"] is False
    assert "stream_options" not in body


def test_chat_non_stream_stop_sequence_and_object_first() -> None:
    data = {
        "object": "chat.completion",
        "id": "",
        "created": 1733001000,
        "model": MODEL,
        "system_fingerprint": "3.3.6-sha-a1b2c3d",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hi."},
                "logprobs": None,
                "finish_reason": "eos_token",
            }
        ],
        "usage": {"prompt_tokens": 20, "completion_tokens": 3, "total_tokens": 23},
    }
    result = run_offline(
        backend.chat(ChatRequest(model="tgi", messages=[{"role": "user", "content": "hi"}])),
        answers({"/v1/chat/completions": response(200, data)}),
    )
    assert (result.text, result.done_reason, result.model) == ("Hi.", "stop", MODEL)
    assert result.usage.total_tokens == 23


# -- errors and health ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "kind", "text"),
    [
        (
            response(422, {"error": "Input validation error: `inputs` cannot be empty", "error_type": "validation"}),
            InvalidRequestError,
            "cannot be empty",
        ),
        (response(429, {"error": "Model is overloaded", "error_type": "overloaded"}), OverloadedError, "overloaded"),
        (
            response(424, {"error": "Request failed during generation", "error_type": "generation"}),
            BackendServerError,
            "generation",
        ),
        (
            response(500, {"error": "Incomplete generation", "error_type": "incomplete_generation"}),
            BackendServerError,
            "Incomplete",
        ),
        (response(401), AuthenticationError, "api_key"),
        (response(404), ModelNotFoundError, "no such route"),
        (
            response(
                415,
                b"Expected request with `Content-Type: application/json`",
                (("content-type", "text/plain; charset=utf-8"),),
            ),
            InvalidRequestError,
            "Content-Type",
        ),
        (
            response(
                422,
                b"Failed to deserialize the JSON body into the target type: missing field `inputs` at line 1 column 2",
                (("content-type", "text/plain; charset=utf-8"),),
            ),
            InvalidRequestError,
            "missing field",
        ),
        (response(503, {"error": "unhealthy", "error_type": "healthcheck"}), UnavailableError, "unhealthy"),
    ],
)
def test_error_mapping(answer: HttpResponse, kind: type[Exception], text: str) -> None:
    error = backend.error(answer)
    assert isinstance(error, kind), type(error)
    assert text in str(error)
    assert error.status == answer.status


def test_errors_raise_from_generate() -> None:
    with pytest.raises(InvalidRequestError, match="top_p"):
        run_offline(
            backend.generate(GenerateRequest(model=MODEL, prompt="x")),
            answers(
                {"/generate": response(422, {"error": "`top_p` must be > 0.0 and < 1.0", "error_type": "validation"})}
            ),
        )


def test_health_states() -> None:
    assert backend.health() == HttpRequest.get("/health")
    assert backend.health_state(HttpResponse(status=200)) is NodeState.UP
    assert backend.health_state(response(503, {"error": "unhealthy", "error_type": "healthcheck"})) is NodeState.DOWN
    assert backend.health_state(HttpResponse(status=0, error="refused")) is NodeState.DOWN


# -- inventory and activity -------------------------------------------------------------------------------------


def test_models_from_info_new_and_old() -> None:
    (new,) = run_offline(backend.models(), answers({"/info": response(200, INFO_3)}))
    assert (new.name, new.context_length, new.details["max_input_tokens"]) == (MODEL, 8192, 8191)
    (old,) = run_offline(backend.models(), answers({"/info": response(200, INFO_1)}))
    assert (old.name, old.context_length, old.details["max_input_tokens"]) == ("bigscience/bloom-560m", 2048, 1024)


def test_models_fall_back_to_v1_models() -> None:
    listing = {"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": MODEL}]}
    (model,) = run_offline(backend.models(), answers({"/v1/models": response(200, listing)}))
    assert (model.name, model.context_length) == (MODEL, None)


def test_activity_from_metrics_and_info() -> None:
    table = {
        "/metrics": response(200, METRICS.encode(), (("content-type", "text/plain; charset=utf-8"),)),
        "/info": response(200, INFO_3),
    }
    activity = run_offline(backend.activity(), answers(table))
    assert (activity.running, activity.waiting, activity.capacity, activity.context_length) == (5, 3, 128, 8192)
    assert activity.kv_cache_usage == pytest.approx(0.25)
    assert activity.loaded_names == frozenset({MODEL})
    assert (activity.vram_used, activity.vram_total) == (None, None)


def test_activity_without_metrics_is_unknown_not_zero() -> None:
    old_metrics = "tgi_queue_size 0\ntgi_batch_current_size 0\n"
    table = {"/metrics": response(200, old_metrics.encode(), ()), "/info": response(200, INFO_1)}
    activity = run_offline(backend.activity(), answers(table))
    assert (activity.running, activity.waiting, activity.kv_cache_usage) == (0, 0, None)
    nothing = run_offline(backend.activity(), answers({}))
    assert (nothing.running, nothing.waiting, nothing.capacity, nothing.loaded) == (None, None, None, None)


# -- embeddings --------------------------------------------------------------------------------------------------


def test_no_embeddings() -> None:
    assert "embed" not in backend.operations
    assert backend.operations == {"chat", "generate"}
    with pytest.raises(NotSupportedError, match="embeddings"):
        run_offline(backend.embed(EmbedRequest(model=MODEL, inputs=["x"])), answers({}))
