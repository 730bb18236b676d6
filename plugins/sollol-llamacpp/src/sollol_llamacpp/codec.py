"""The llama.cpp `llama-server` codec: the shared OpenAI codec plus what llama.cpp does its own way.

What differs from a plain OpenAI server (see `reference/backend-protocols.md` section 6):

- `/health` answers `{"status":"ok"}`, or 503 `unavailable_error` "Loading model" while the model
  loads (very old builds: 503 `{"status":"loading model"}`).
- Errors are `{"error":{"code","message","type"}}`; `not_supported_error` (501) means a feature the
  server was not started with (`--embeddings`, `--metrics`); `exceed_context_size_error` (400)
  means the prompt does not fit *this* node's context, which another node may have larger.
- A stream whose first result fails answers a plain JSON error; a later failure is an in-band
  `data: {"error":...}` and the stream ends without `[DONE]` (the shared stream decoder handles both).
- The request's `model` is ignored in single-model mode: the pool routes by the alias the server
  lists in `/v1/models` (its `--alias`), and the answer names that alias.
- Sampler options keep llama.cpp's own names (`repeat_penalty`, not `repetition_penalty`).
- `timings` (milliseconds) ride on the last response; they become `Usage.total_duration`.
- Inventory from `/v1/models` (its `data`, or the Ollama-style `models` list) and the runtime context
  from `/props`; activity from `/slots`, `/props` and `/metrics` (when started with `--metrics`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from sollol.activity import Activity, LoadedModel, ModelInfo
from sollol.codec import SseEvent, SseEvents, StreamPlan, http_error, inband_error, int_or_none, sse_json
from sollol.detection import NodeState
from sollol.errors import (
    BackendError,
    InvalidRequestError,
    NotSupportedError,
    OverloadedError,
    ProtocolError,
)
from sollol.http import Exchange, HttpRequest, HttpResponse, fetch_all
from sollol.inference import (
    ChatRequest,
    ChatResult,
    Chunk,
    GenerateRequest,
    GenerateResult,
    Usage,
)
from sollol.openai_compat import OpenAICompatibleBackend, OpenAIStream, done_reason
from sollol.prometheus import metric_sum, parse_metrics

SERVER_HEADER = "llama.cpp"

#: OpenAI spellings the shared codec produces that llama.cpp reads under its own name.
NATIVE_NAMES = {"repetition_penalty": "repeat_penalty"}


class ContextLengthError(InvalidRequestError):
    """The prompt does not fit this node's context (`exceed_context_size_error`).

    Retryable: another node may have been started with a larger `-c`.
    """

    retryable = True


def duration_of(timings: Any) -> float | None:
    """Seconds of prompt plus generation work from llama.cpp's `timings` (milliseconds)."""
    if not isinstance(timings, Mapping):
        return None
    parts = [timings.get("prompt_ms"), timings.get("predicted_ms")]
    values = [float(p) for p in parts if isinstance(p, (int, float)) and not isinstance(p, bool)]
    return sum(values) / 1000.0 if values else None


def with_timings(usage: Usage, timings: Any) -> Usage:
    """`usage` with its duration filled from `timings`, when the server sent them."""
    seconds = duration_of(timings)
    return usage if seconds is None else attrs.evolve(usage, total_duration=seconds)


class LlamaCppStream(OpenAIStream):
    """The shared SSE decoder, keeping the `timings` that come on a stream's last events."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self._timings: Any = None

    def _handle(self, data: str) -> list[Chunk]:
        if '"timings"' in data:
            payload = _json_or_none(data)
            if isinstance(payload, Mapping) and payload.get("timings") is not None:
                self._timings = payload["timings"]
        chunks = super()._handle(data)
        if self._timings is None:
            return chunks
        return [attrs.evolve(c, usage=with_timings(c.usage or Usage(), self._timings)) if c.done else c for c in chunks]


def _json_or_none(data: str) -> Any:
    """The JSON of an event, or None when it is not JSON (the shared decoder reports that)."""
    try:
        return json.loads(data)
    except ValueError:
        return None


class NativeCompletionStream:
    """Decodes llama.cpp's native `/completion` stream: `data:` events, no `[DONE]`.

    The stream ends on the event with `"stop": true`, which carries `stop_type`, the token
    counts and `timings`; an `{"error": ...}` event is an in-band error.
    """

    def __init__(self) -> None:
        self._events = SseEvents()
        self._done = False

    def _handle(self, data: str) -> list[Chunk]:
        if self._done or data.strip() == "[DONE]":
            return []
        payload = sse_json(SseEvent(data=data))
        error = inband_error(payload)
        if error is not None:
            raise error
        if not isinstance(payload, Mapping):
            raise ProtocolError(f"stream event is not an object: {data[:200]!r}")
        chunks = []
        text = payload.get("content") or ""
        if text:
            chunks.append(Chunk(text=str(text), model=payload.get("model"), raw=payload))
        if payload.get("stop") is True:
            self._done = True
            usage = Usage(
                prompt_tokens=int_or_none(payload.get("tokens_evaluated")),
                completion_tokens=int_or_none(payload.get("tokens_predicted")),
            )
            chunks.append(
                Chunk(
                    done=True,
                    done_reason=done_reason(payload.get("stop_type")) or "stop",
                    usage=with_timings(usage, payload.get("timings")),
                    model=payload.get("model"),
                    raw=payload,
                )
            )
        return chunks

    def feed(self, data: bytes) -> list[Chunk]:
        """Chunks completed by `data`."""
        chunks: list[Chunk] = []
        for event in self._events.feed(data):
            chunks += self._handle(event.data)
        return chunks

    def close(self) -> list[Chunk]:
        """What is left; a stream without its `stop: true` event is cut off."""
        chunks: list[Chunk] = []
        for event in self._events.close():
            chunks += self._handle(event.data)
        if not self._done:
            raise ProtocolError("the /completion stream ended before its final (stop: true) event")
        return chunks


class LlamaCppBackend(OpenAICompatibleBackend):
    """llama.cpp's `llama-server` (single-model mode, and router mode's shared routes)."""

    name = "llamacpp"
    default_ports: tuple[int, ...] = (8080,)
    health_path = "/health"

    # -- health and errors ------------------------------------------------------------------

    def health_state(self, response: HttpResponse) -> NodeState:
        """`{"status":"ok"}` is up; 503 while loading (current and pre-2024 shapes); 401 needs a key."""
        if not response.reached:
            return NodeState.DOWN
        body = response.json_object() or {}
        if response.status == 503:
            status = body.get("status")
            if status == "no slot available":  # old builds: alive, every slot busy
                return NodeState.UP
            return NodeState.LOADING
        if response.status in (401, 403):
            return NodeState.AUTH_REQUIRED
        if response.ok:
            status = body.get("status")
            if status in ("loading model", "loading"):
                return NodeState.LOADING
            if status == "error":
                return NodeState.DOWN
            return NodeState.UP
        return NodeState.DOWN

    def error(self, response: HttpResponse) -> BackendError:
        """llama.cpp's error envelope, with its types read where the status alone is too coarse."""
        base = http_error(response)
        body = response.json_object() or {}
        err = body.get("error") if isinstance(body.get("error"), Mapping) else {}
        assert isinstance(err, Mapping)
        kind = err.get("type")
        message = str(err.get("message") or base.message)
        if kind == "exceed_context_size_error":
            n_prompt, n_ctx = err.get("n_prompt_tokens"), err.get("n_ctx")
            if n_prompt is not None and n_ctx is not None:
                message = f"{message} (the prompt has {n_prompt} tokens; this node's context is {n_ctx})"
            return ContextLengthError(message, status=response.status, error_type=kind, body=body)
        if response.status == 401:
            return _with_message(
                base, f"{message}: this llama-server was started with --api-key; give the node its key"
            )
        if response.status == 503 and "no slot available" in message.lower():
            return OverloadedError(message, status=503, error_type=kind, body=body)
        if "error" not in body and isinstance(body.get("status"), str):  # pre-2024 `{"status": "..."}` answers
            return _with_message(base, str(body["status"]))
        if response.status == 404 and message == "File Not Found":
            return NotSupportedError(
                f"this llama-server build has no such route ({message}); it may be older or newer than expected",
                status=404,
                error_type=kind,
                body=body,
            )
        return base

    # -- inventory and activity -------------------------------------------------------------

    def model_info(self, entry: Mapping[str, Any], n_ctx: int | None = None) -> ModelInfo:
        """One `/v1/models` entry; `n_ctx` is the runtime context per slot from `/props`."""
        meta = entry.get("meta") if isinstance(entry.get("meta"), Mapping) else {}
        assert isinstance(meta, Mapping)
        train = int_or_none(meta.get("n_ctx_train"))
        context = n_ctx or int_or_none(meta.get("n_ctx")) or train
        details: dict[str, Any] = {k: entry[k] for k in ("owned_by", "aliases", "status") if k in entry}
        for key in ("n_ctx_train", "n_params", "n_embd", "n_vocab", "ftype"):
            if meta.get(key) is not None:
                details[key] = meta[key]
        return ModelInfo(
            name=str(entry["id"]), size=int_or_none(meta.get("size")), context_length=context, details=details
        )

    def models(self) -> Exchange[Sequence[ModelInfo]]:
        """`/v1/models` (OpenAI `data`, else the Ollama-style `models`) with `/props`'s context."""
        listed, props = yield from fetch_all(HttpRequest.get(f"{self.prefix}/models"), HttpRequest.get("/props"))
        data = self.check(listed)
        n_ctx = _props_n_ctx(props.json_object() if props.ok else None)
        entries = [m for m in data.get("data") or () if isinstance(m, Mapping) and m.get("id")]
        if entries:
            return [self.model_info(m, n_ctx) for m in entries]
        names = [m.get("model") or m.get("name") for m in data.get("models") or () if isinstance(m, Mapping)]
        return [ModelInfo(name=str(n), context_length=n_ctx) for n in names if n]

    def activity(self) -> Exchange[Activity]:
        """Slots in use from `/slots`, context and slot count from `/props`, the queue from `/metrics`.

        `/metrics` answers 501 unless the server runs with `--metrics`, and `/slots` 501 with
        `--no-slots`; what no route tells stays None.
        """
        slots_r, props_r, metrics_r = yield from fetch_all(
            HttpRequest.get("/slots"), HttpRequest.get("/props"), HttpRequest.get("/metrics")
        )
        running: int | None = None
        capacity: int | None = None
        waiting: int | None = None
        kv: float | None = None
        raw: dict[str, Any] = {}
        slots = slots_r.json_or_none() if slots_r.ok else None
        if isinstance(slots, list):
            running = sum(1 for s in slots if isinstance(s, Mapping) and s.get("is_processing"))
            capacity = len(slots)
            raw["slots"] = slots
        props = props_r.json_object() if props_r.ok else None
        n_ctx = _props_n_ctx(props)
        loaded: tuple[LoadedModel, ...] | None = None
        if props is not None:
            raw["props"] = {k: props.get(k) for k in ("total_slots", "model_alias", "build_info", "role") if k in props}
            if capacity is None:
                capacity = int_or_none(props.get("total_slots"))
            alias = props.get("model_alias")
            if props.get("role") != "router" and isinstance(alias, str) and alias:
                loaded = (LoadedModel(name=alias, context_length=n_ctx),)
        if metrics_r.ok:
            samples = parse_metrics(metrics_r.text)
            processing = metric_sum(samples, "llamacpp:requests_processing")
            deferred = metric_sum(samples, "llamacpp:requests_deferred")
            ratio = metric_sum(samples, "llamacpp:kv_cache_usage_ratio")  # gone since May 2025 builds
            if running is None and processing is not None:
                running = int(processing)
            waiting = None if deferred is None else int(deferred)
            kv = ratio
            raw["metrics"] = {"requests_processing": processing, "requests_deferred": deferred}
        if not any(r.ok for r in (slots_r, props_r, metrics_r)):
            failed = next((r for r in (slots_r, props_r) if r.reached and r.status in (401, 403, 503)), None)
            if failed is not None:
                raise self.error(failed)
        return Activity(
            loaded=loaded,
            running=running,
            waiting=waiting,
            capacity=capacity,
            kv_cache_usage=kv,
            context_length=n_ctx,
            raw=raw,
        )

    # -- requests -----------------------------------------------------------------------------

    def chat_body(self, request: ChatRequest, stream: bool) -> dict[str, Any]:
        """The shared body, with llama.cpp's sampler names."""
        return _native_names(super().chat_body(request, stream))

    def completion_body(self, request: GenerateRequest, stream: bool) -> dict[str, Any]:
        """The shared body, with llama.cpp's sampler names."""
        return _native_names(super().completion_body(request, stream))

    def chat(self, request: ChatRequest) -> Exchange[ChatResult]:
        """`POST /v1/chat/completions`, with `timings` read into the usage."""
        result = yield from super().chat(request)
        return attrs.evolve(result, usage=with_timings(result.usage, _timings(result.raw)))

    def generate(self, request: GenerateRequest) -> Exchange[GenerateResult]:
        """`POST /v1/completions`, with `timings` read into the usage."""
        result = yield from super().generate(request)
        return attrs.evolve(result, usage=with_timings(result.usage, _timings(result.raw)))

    def chat_stream(self, request: ChatRequest) -> StreamPlan:
        """`POST /v1/chat/completions` as server-sent events."""
        plan = super().chat_stream(request)
        return attrs.evolve(plan, decoder=lambda: LlamaCppStream("chat"))

    def generate_stream(self, request: GenerateRequest) -> StreamPlan:
        """`POST /v1/completions` as server-sent events."""
        plan = super().generate_stream(request)
        return attrs.evolve(plan, decoder=lambda: LlamaCppStream("completion"))

    def native_completion_stream(self, request: GenerateRequest) -> StreamPlan:
        """`POST /completion` streamed: llama.cpp's own route, for prompts sent exactly as given."""
        body: dict[str, Any] = {"prompt": request.prompt, "stream": True}
        for key, value in self.completion_body(request, False).items():
            if key not in ("model", "prompt", "stream", "max_tokens"):
                body[key] = value
        limit = request.options.get("num_predict")
        if isinstance(limit, int):
            body["n_predict"] = limit
        return StreamPlan(
            request=HttpRequest.post("/completion", json=body, stream=True), decoder=NativeCompletionStream
        )


def _with_message(error: BackendError, message: str) -> BackendError:
    """The same error, with a message that says more."""
    error.message = message
    error.args = (message,)
    return error


def _native_names(body: dict[str, Any]) -> dict[str, Any]:
    for theirs, ours in NATIVE_NAMES.items():
        if theirs in body and ours not in body:
            body[ours] = body.pop(theirs)
    return body


def _timings(raw: Any) -> Any:
    return raw.get("timings") if isinstance(raw, Mapping) else None


def _props_n_ctx(props: Mapping[str, Any] | None) -> int | None:
    """The per-slot context from `/props` (0 in router mode means unknown)."""
    if not props:
        return None
    settings = props.get("default_generation_settings")
    if not isinstance(settings, Mapping):
        return None
    return int_or_none(settings.get("n_ctx")) or None
