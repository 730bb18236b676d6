"""The TGI codec: chat over TGI's `/v1` routes, completions over its native `/generate`.

Hugging Face Text Generation Inference serves one model. Chat goes to `/v1/chat/completions`
(the shared OpenAI codec, with TGI's quirks); generate goes to the native `/generate` and
`/generate_stream`, whose SSE events are written `data:{...}` without a space, carry no
`[DONE]`, and end on the event whose `generated_text` is not null. TGI does not embed.
See `reference/backend-protocols.md` section 5.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from sollol.activity import Activity, LoadedModel, ModelInfo
from sollol.codec import SseEvents, StreamPlan, http_error, inband_error, int_or_none, sse_json
from sollol.detection import NodeState
from sollol.errors import (
    AuthenticationError,
    BackendError,
    BackendServerError,
    ModelNotFoundError,
    NotSupportedError,
    ProtocolError,
)
from sollol.http import Exchange, HttpRequest, HttpResponse, fetch, fetch_all
from sollol.inference import (
    ChatRequest,
    Chunk,
    EmbedRequest,
    EmbedResult,
    GenerateRequest,
    GenerateResult,
    Usage,
)
from sollol.openai_compat import OpenAICompatibleBackend, done_reason
from sollol.prometheus import metric_sum, parse_metrics

log = logging.getLogger(__name__)

#: The `router` value TGI's `/info` carries from v2.0.3 on (its Cargo package name).
ROUTER_NAME = "text-generation-router"

JSON_HEADERS = (("content-type", "application/json"),)

#: Fields of TGI's `GenerateParameters`; anything else in `params` is not sent to `/generate`.
GENERATE_PARAMETERS = frozenset(
    {
        "adapter_id",
        "best_of",
        "decoder_input_details",
        "details",
        "do_sample",
        "frequency_penalty",
        "grammar",
        "max_new_tokens",
        "repetition_penalty",
        "return_full_text",
        "seed",
        "stop",
        "temperature",
        "top_k",
        "top_n_tokens",
        "top_p",
        "truncate",
        "typical_p",
        "watermark",
    }
)
#: Ollama option names and the `GenerateParameters` field each becomes.
OPTION_PARAMETERS = {
    "num_predict": "max_new_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "repeat_penalty": "repetition_penalty",
    "repetition_penalty": "repetition_penalty",
    "frequency_penalty": "frequency_penalty",
    "typical_p": "typical_p",
    "seed": "seed",
    "stop": "stop",
}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def tgi_grammar(fmt: Any) -> dict[str, Any] | None:
    """Ollama's `format` ("json" or a JSON schema) as TGI's grammar / response_format.

    `{"type": "json", "value": schema}` is the form every TGI with grammar support reads;
    `json_object` without a value is not.
    """
    if fmt == "json":
        return {"type": "json", "value": {"type": "object"}}
    if isinstance(fmt, Mapping):
        return {"type": "json", "value": dict(fmt)}
    return None


def generate_parameters(request: GenerateRequest, *, stream: bool) -> dict[str, Any]:
    """The `parameters` object of a `/generate` body, from Ollama options and params.

    TGI answers 422 to values Ollama clients send as "off": temperature 0 (greedy here:
    `do_sample` false, without the sampling knobs that would turn sampling back on), top_p
    or typical_p of 1, top_k of 0, and a negative num_predict. Those are left out rather
    than sent.
    """
    parameters: dict[str, Any] = {}
    for key, value in request.options.items():
        field = OPTION_PARAMETERS.get(key)
        if field is None:
            log.debug("option %r has no TGI equivalent; not sent", key)
            continue
        parameters[field] = value
    for key, value in request.params.items():
        if key == "truncate" and int_or_none(value) is None:
            continue  # Ollama's `truncate` is a flag; TGI's is a token count
        if key in GENERATE_PARAMETERS:
            parameters[key] = value
    temperature = _number(parameters.get("temperature"))
    if temperature is not None and temperature <= 0:
        # Greedy. TGI samples whenever a sampling knob is set, whatever do_sample says.
        for key in ("temperature", "top_p", "top_k", "typical_p"):
            parameters.pop(key, None)
        parameters["do_sample"] = False
    elif temperature is not None:
        parameters.setdefault("do_sample", True)
    for key in ("top_p", "typical_p"):
        value = _number(parameters.get(key))
        if value is not None and value >= 1.0:
            del parameters[key]
    top_k = _number(parameters.get("top_k"))
    if top_k is not None and top_k <= 0:
        del parameters["top_k"]
    limit = _number(parameters.get("max_new_tokens"))
    if limit is not None and limit < 0:
        del parameters["max_new_tokens"]  # Ollama's -1 (no limit) / -2 (fill the context)
    stop = parameters.get("stop")
    if isinstance(stop, str):
        parameters["stop"] = [stop]
    grammar = tgi_grammar(request.params.get("format"))
    if grammar is not None and "grammar" not in parameters:
        parameters["grammar"] = grammar
    if stream:
        parameters.pop("best_of", None)  # TGI rejects best_of > 1 when streaming
        parameters.pop("decoder_input_details", None)
    parameters["details"] = True  # finish_reason and token counts come only with details
    return parameters


def generate_body(request: GenerateRequest, *, stream: bool) -> dict[str, Any]:
    """The `/generate` (or `/generate_stream`) body; a `system` prompt goes before the prompt."""
    system = request.params.get("system")
    inputs = f"{system}\n\n{request.prompt}" if system else request.prompt
    return {"inputs": inputs, "parameters": generate_parameters(request, stream=stream)}


def usage_of(details: Any, prompt_tokens: int | None = None) -> Usage:
    """Token counts from a `details` object (and the `x-prompt-tokens` header, when given)."""
    details = details if isinstance(details, Mapping) else {}
    prompt = int_or_none(details.get("input_length"))
    if prompt is None:
        prompt = prompt_tokens
    return Usage(prompt_tokens=prompt, completion_tokens=int_or_none(details.get("generated_tokens")))


class GenerateStream:
    """Decodes `/generate_stream`: one token per event, the last one with `generated_text`.

    There is no `[DONE]`; the stream is complete at the event whose `generated_text` is not
    null. Errors arrive as `{"error", "error_type"}` events in the HTTP 200 stream, including
    TGI's own "Incomplete generation stream". A stream that closes before the final event
    is a `ProtocolError`.
    """

    def __init__(self, model: str) -> None:
        self._events = SseEvents()
        self._model = model
        self._done = False

    def _handle(self, payload: Any) -> list[Chunk]:
        if self._done:
            return []
        error = inband_error(payload)
        if error is not None:
            raise error
        if not isinstance(payload, Mapping):
            raise ProtocolError(f"stream event is not an object: {payload!r:.200}")
        token = payload.get("token") or {}
        text = "" if token.get("special") else str(token.get("text") or "")
        chunks = [Chunk(text=text, model=self._model, raw=payload)] if text else []
        if payload.get("generated_text") is not None:
            self._done = True
            details = payload.get("details")
            finish = details.get("finish_reason") if isinstance(details, Mapping) else None
            chunks.append(
                Chunk(
                    done=True,
                    done_reason=done_reason(finish) or "stop",
                    usage=usage_of(details),
                    model=self._model,
                    raw=payload,
                )
            )
        return chunks

    def feed(self, data: bytes) -> list[Chunk]:
        """Chunks completed by `data`."""
        chunks: list[Chunk] = []
        for event in self._events.feed(data):
            chunks += self._handle(sse_json(event))
        return chunks

    def close(self) -> list[Chunk]:
        """The last chunks; a stream without its final event is an error."""
        chunks: list[Chunk] = []
        for event in self._events.close():
            chunks += self._handle(sse_json(event))
        if not self._done:
            raise ProtocolError("the /generate_stream stream ended before its final event (generated_text)")
        return chunks


class TGIBackend(OpenAICompatibleBackend):
    """Codec for Hugging Face Text Generation Inference servers."""

    name = "tgi"
    default_ports: tuple[int, ...] = (3000, 80)
    operations = frozenset({"chat", "generate"})  # TGI does not embed; the pool never routes embed here
    health_path = "/health"

    # -- health and errors -----------------------------------------------------------------------

    def health_state(self, response: HttpResponse) -> NodeState:
        """`/health` is 200 with an empty body; 503 `{"error": "unhealthy"}` means the shards failed.

        TGI does not listen until its model is loaded, so there is no loading answer: a 503
        is a broken server, not a starting one.
        """
        if not response.reached:
            return NodeState.DOWN
        if response.ok:
            return NodeState.UP
        if response.status in (401, 403):
            return NodeState.AUTH_REQUIRED
        return NodeState.DOWN

    def error(self, response: HttpResponse) -> BackendError:
        """TGI's `{"error", "error_type"}` bodies, its empty 401/404 bodies, axum's text bodies."""
        error = http_error(response)
        if response.status == 401 and not response.body.strip():
            return AuthenticationError(
                "TGI refused the request: it was started with --api-key; give this node's api_key",
                status=401,
            )
        if response.status == 404 and not response.body.strip():
            # TGI ignores model names: its empty 404 means a route this version lacks.
            return ModelNotFoundError(
                "TGI has no such route (HTTP 404 with an empty body); TGI before 1.4 has no /v1 routes",
                status=404,
            )
        if response.status == 424:  # a shard failed while generating: another node may succeed
            return BackendServerError(error.message, status=424, error_type=error.error_type, body=error.body)
        return error

    # -- inventory and activity --------------------------------------------------------------------

    def model_from_info(self, info: Mapping[str, Any]) -> ModelInfo:
        """The model `/info` describes: its context length is `max_total_tokens`."""
        prompt_limit = info.get("max_input_tokens", info.get("max_input_length"))
        details = {
            key: info[key]
            for key in ("model_sha", "model_pipeline_tag", "model_dtype", "max_concurrent_requests", "version")
            if info.get(key) is not None
        }
        if prompt_limit is not None:
            details["max_input_tokens"] = prompt_limit
        return ModelInfo(
            name=str(info["model_id"]), context_length=int_or_none(info.get("max_total_tokens")), details=details
        )

    def models(self) -> Exchange[Sequence[ModelInfo]]:
        """`/info` (every version has it); `/v1/models` when `/info` does not answer."""
        response = yield from fetch(HttpRequest.get("/info"))
        info = response.json_object() if response.ok else None
        if info is not None and info.get("model_id"):
            return [self.model_from_info(info)]
        return list((yield from super().models()))

    def activity(self) -> Exchange[Activity]:
        """`/metrics` (queue and batch gauges) and `/info` (limits); what is missing stays None.

        `tgi_queue_size` is the waiting requests, `tgi_batch_current_size` the running ones,
        `/info.max_concurrent_requests` the number TGI admits before answering 429. The KV
        figure is the tokens the current batch reserved over the batch token budget, given
        only when TGI exports both (the v3 backend).
        """
        metrics, info_response = yield from fetch_all(HttpRequest.get("/metrics"), HttpRequest.get("/info"))
        samples = parse_metrics(metrics.text) if metrics.ok else []
        info = (info_response.json_object() if info_response.ok else None) or {}
        running = metric_sum(samples, "tgi_batch_current_size")
        waiting = metric_sum(samples, "tgi_queue_size")
        reserved = metric_sum(samples, "tgi_batch_current_max_tokens")
        budget = metric_sum(samples, "tgi_batch_max_total_tokens")
        kv = min(1.0, reserved / budget) if reserved is not None and budget else None
        context = int_or_none(info.get("max_total_tokens"))
        loaded = (LoadedModel(name=str(info["model_id"]), context_length=context),) if info.get("model_id") else None
        raw: dict[str, Any] = {"info": info} if info else {}
        if samples:
            raw["metrics"] = {
                s.name: s.value
                for s in samples
                if s.name.startswith(("tgi_queue", "tgi_batch_current", "tgi_batch_max"))
            }
        return Activity(
            loaded=loaded,
            running=int(running) if running is not None else None,
            waiting=int(waiting) if waiting is not None else None,
            capacity=int_or_none(info.get("max_concurrent_requests")),
            kv_cache_usage=kv,
            context_length=context,
            raw=raw,
        )

    # -- chat (the OpenAI routes, with TGI's quirks) -------------------------------------------------

    def chat_body(self, request: ChatRequest, stream: bool) -> dict[str, Any]:
        """The shared body, minus what TGI would reject: top_p 1 (422) and `json_object` without a value.

        TGI itself turns temperature 0 into greedy decoding on its `/v1` routes, so it is sent as is.
        """
        body = super().chat_body(request, stream)
        top_p = _number(body.get("top_p"))
        if top_p is not None and top_p >= 1.0:
            del body["top_p"]
        grammar = tgi_grammar(request.params.get("format"))
        if grammar is not None:
            body["response_format"] = grammar
        return body

    # -- generate (native routes) ----------------------------------------------------------------------

    def generate(self, request: GenerateRequest) -> Exchange[GenerateResult]:
        """`POST /generate` with `details: true`."""
        response = yield from fetch(
            HttpRequest.post("/generate", json=generate_body(request, stream=False), headers=JSON_HEADERS)
        )
        if not response.ok:
            raise self.error(response)
        data = response.json()
        if isinstance(data, list) and data:  # the compat route's array form
            data = data[0]
        if not isinstance(data, Mapping):
            raise ProtocolError(f"/generate: expected a JSON object, got {type(data).__name__}")
        error = inband_error(data)
        if error is not None:
            raise error
        details = data.get("details")
        finish = details.get("finish_reason") if isinstance(details, Mapping) else None
        return GenerateResult(
            model=request.model,
            text=str(data.get("generated_text") or ""),
            done_reason=done_reason(finish),
            usage=usage_of(details, _int_header(response, "x-prompt-tokens")),
            raw=data,
        )

    def generate_stream(self, request: GenerateRequest) -> StreamPlan:
        """`POST /generate_stream`: SSE without `[DONE]`, ending on the `generated_text` event."""
        req = HttpRequest.post(
            "/generate_stream", json=generate_body(request, stream=True), headers=JSON_HEADERS, stream=True
        )
        model = request.model
        return StreamPlan(request=req, decoder=lambda: GenerateStream(model))

    # -- embeddings ---------------------------------------------------------------------------------------

    def embed(self, request: EmbedRequest) -> Exchange[EmbedResult]:
        """TGI serves text generation only."""
        raise NotSupportedError(
            f"TGI does not compute embeddings (model {request.model!r}); "
            "serve the embedding model with text-embeddings-inference, Ollama, vLLM, llama.cpp or LocalAI"
        )
        yield  # pragma: no cover - makes this a generator


def _int_header(response: HttpResponse, name: str) -> int | None:
    value = response.header(name)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
