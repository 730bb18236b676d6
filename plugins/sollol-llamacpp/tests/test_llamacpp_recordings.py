"""The codec and the detector against the byte-exact answers of a real llama-server."""

from __future__ import annotations

import pytest
from llamacpp_recordings import names, recorded

from sollol.codec import iter_chunks
from sollol.detection import NodeState, ProbeSet
from sollol.errors import InvalidRequestError, NotSupportedError
from sollol.http import HttpRequest, HttpResponse, run_offline
from sollol.inference import ChatRequest, EmbedRequest, GenerateRequest
from sollol_llamacpp import sollol_detect
from sollol_llamacpp.codec import LlamaCppBackend, NativeCompletionStream

BACKEND = LlamaCppBackend()
CHAT = ChatRequest(
    model="gemma-3-270m", messages=[{"role": "user", "content": "Name a color."}], options={"num_predict": 8}
)


def answer_with(routes: dict[str, str]):
    def answer(request: HttpRequest) -> HttpResponse:
        name = routes.get(request.path)
        assert name is not None, f"unexpected request {request.method} {request.path}"
        return recorded(name)

    return answer


@pytest.mark.parametrize("name", names() or ["absent"])
def test_every_recording_carries_the_server_header_and_is_detected(name):
    response = recorded(name)
    assert response.header("server") == "llama.cpp"
    claim = sollol_detect(probes=ProbeSet({"GET /anything": response}))
    assert claim is not None
    assert claim.backend == "llamacpp"
    assert claim.confidence == 100


@pytest.mark.parametrize("name", names() or ["absent"])
def test_every_error_recording_maps_to_an_error_with_the_servers_message(name):
    response = recorded(name)
    if response.ok:
        pytest.skip("not an error answer")
    error = BACKEND.error(response)
    assert error.status == response.status
    assert (response.json_object() or {})["error"]["message"] in error.message


def test_health_is_up():
    assert BACKEND.health_state(recorded("health")) is NodeState.UP


def test_detection_from_the_real_probe_answers():
    probes = ProbeSet(
        {"GET /health": recorded("health"), "GET /props": recorded("props"), "GET /v1/models": recorded("v1_models")}
    )
    claim = sollol_detect(probes=probes)
    assert claim is not None
    assert (claim.backend, claim.state, claim.version, claim.models) == (
        "llamacpp",
        NodeState.UP,
        "b0-unknown",
        ("gemma-3-270m",),
    )
    assert "Server: llama.cpp" in claim.reason
    assert "default_generation_settings" in claim.reason


def test_models_read_data_with_the_runtime_context_from_props():
    models = run_offline(BACKEND.models(), answer_with({"/v1/models": "v1_models", "/props": "props"}))
    assert [m.name for m in models] == ["gemma-3-270m"]
    (model,) = models
    assert model.context_length == 1024  # per slot, from /props (-c 2048 -np 2)
    assert model.size == 246587904
    assert model.details["n_ctx_train"] == 32768
    assert model.details["owned_by"] == "llamacpp"


def test_activity_from_slots_props_and_metrics():
    activity = run_offline(
        BACKEND.activity(), answer_with({"/slots": "slots", "/props": "props", "/metrics": "metrics"})
    )
    assert (activity.running, activity.capacity, activity.waiting, activity.context_length) == (0, 2, 0, 1024)
    assert activity.loaded_names == frozenset({"gemma-3-270m"})
    assert activity.kv_cache_usage is None  # the metric was removed in 2025; never invented


def test_activity_without_metrics_leaves_the_queue_unknown():
    def answer(request: HttpRequest) -> HttpResponse:
        if request.path == "/metrics":
            body = (
                b'{"error":{"code":501,"message":"This server does not support metrics endpoint. '
                b'Start it with `--metrics`","type":"not_supported_error"}}'
            )
            return HttpResponse(status=501, headers=(("Server", "llama.cpp"),), body=body)
        return recorded({"/slots": "slots", "/props": "props"}[request.path])

    activity = run_offline(BACKEND.activity(), answer)
    assert (activity.running, activity.capacity, activity.waiting) == (0, 2, None)


def test_chat():
    result = run_offline(BACKEND.chat(CHAT), answer_with({"/v1/chat/completions": "chat"}))
    assert result.text == "Name a color.<|im_end"
    assert result.model == "gemma-3-270m"
    assert result.done_reason == "length"
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (27, 8)
    assert result.usage.total_duration == pytest.approx((60.482 + 96.266) / 1000)


def test_chat_stream_in_small_pieces():
    body = recorded("chat_stream").body
    chunks = list(iter_chunks(BACKEND.chat_stream(CHAT).decoder(), body, piece=5))
    assert "".join(c.text for c in chunks) == "Name a color.<|im"
    final = chunks[-1]
    assert final.done
    assert final.done_reason == "length"
    assert final.usage is not None
    assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (27, 6)
    assert final.usage.total_duration == pytest.approx((22.991 + 64.205) / 1000)
    assert sum(c.done for c in chunks) == 1


def test_chat_stream_cut_before_its_end_is_an_error():
    from sollol.errors import ProtocolError

    body = recorded("chat_stream").body
    cut = body[: body.index(b'"finish_reason":"length"')]
    cut = cut[: cut.rindex(b"\n\n") + 2]
    with pytest.raises(ProtocolError):
        list(iter_chunks(BACKEND.chat_stream(CHAT).decoder(), cut))


def test_completions():
    result = run_offline(
        BACKEND.generate(GenerateRequest(model="gemma-3-270m", prompt="The sky is")),
        answer_with({"/v1/completions": "completions"}),
    )
    assert result.text == " the limit for the "
    assert result.done_reason == "length"
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (4, 5)


def test_native_completion_stream_ends_without_done():
    chunks = list(iter_chunks(NativeCompletionStream(), recorded("completion_stream").body, piece=11))
    assert "".join(c.text for c in chunks) == " the limit for the "
    final = chunks[-1]
    assert final.done
    assert final.done_reason == "length"
    assert final.model == "gemma-3-270m"
    assert final.usage is not None
    assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (4, 5)


def test_native_completion_stream_cut_off_is_an_error():
    from sollol.errors import ProtocolError

    body = recorded("completion_stream").body
    cut = body[: body.index(b'"stop":true') - 60]
    cut = cut[: cut.rindex(b"\n\n") + 2]
    with pytest.raises(ProtocolError):
        list(iter_chunks(NativeCompletionStream(), cut))


def test_embeddings_in_input_order():
    request = EmbedRequest(model="gemma-3-270m-embed", inputs=["a", "b"])
    result = run_offline(BACKEND.embed(request), answer_with({"/v1/embeddings": "embeddings"}))
    assert result.model == "gemma-3-270m-embed"
    assert len(result.embeddings) == 2
    assert result.embeddings[0][0] == pytest.approx(-0.016145015135407448)
    assert result.embeddings[1][0] == pytest.approx(0.01363804005086422)
    assert result.usage.prompt_tokens == 4


def test_embeddings_on_a_server_without_embeddings_is_not_supported():
    request = EmbedRequest(model="gemma-3-270m", inputs=["a"])
    with pytest.raises(NotSupportedError, match="--embeddings") as caught:
        run_offline(BACKEND.embed(request), answer_with({"/v1/embeddings": "embeddings_unsupported"}))
    assert caught.value.retryable  # another node may have --embeddings


@pytest.mark.parametrize("name", ["badjson", "missing_messages"])
def test_bad_requests_are_not_retried(name):
    error = BACKEND.error(recorded(name))
    assert isinstance(error, InvalidRequestError)
    assert not error.retryable
    assert error.error_type == "invalid_request_error"


def test_an_unknown_route_is_not_supported_by_this_build():
    error = BACKEND.error(recorded("nope"))
    assert isinstance(error, NotSupportedError)
    assert error.status == 404
