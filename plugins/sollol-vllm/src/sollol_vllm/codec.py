"""The vLLM codec: vLLM's OpenAI-compatible server (`vllm serve`) and its quirks.

Built on `sollol.openai_compat.OpenAICompatibleBackend`; what differs from a plain OpenAI
server is handled here (see `reference/backend-protocols.md` sections 4 and 8):

- `/health` is 200 with an empty body; 503 means the engine died (the node is down, not
  loading); while the model loads the port refuses connections, which also reads as down.
- Errors come nested (`{"error": {...}}`, >= 0.10.1) or flat (`{"object": "error", ...}`,
  <= 0.10.0), also inside a 200 stream; `--api-key` failures are `{"error": "Unauthorized"}`.
- A route the model's task does not support is not registered: 404 `{"detail": "Not Found"}`.
  So embeddings on a generation server (and chat on a pooling server) are "not supported".
- `/v1/models` cards carry `max_model_len`; LoRA adapters are extra cards with `parent`.
- Activity comes from `/metrics` (running, waiting, KV-cache use; old and new metric names,
  summed over data-parallel engines) and the served models from `/v1/models`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from sollol.activity import Activity, LoadedModel, ModelInfo
from sollol.codec import StreamPlan, http_error, int_or_none
from sollol.detection import NodeState
from sollol.errors import AuthenticationError, BackendError, NotSupportedError, StreamError
from sollol.http import Exchange, HttpRequest, HttpResponse, fetch, fetch_all
from sollol.inference import ChatRequest, Chunk, EmbedRequest, EmbedResult, GenerateRequest
from sollol.openai_compat import OpenAICompatibleBackend, OpenAIStream
from sollol.prometheus import metric_mean, metric_sum, parse_metrics

DEFAULT_PORT = 8000

#: FastAPI's answer for a route that is not registered.
FASTAPI_NOT_FOUND = {"detail": "Not Found"}
#: vLLM's answer when `--api-key` is set and the request lacks the key.
UNAUTHORIZED = {"error": "Unauthorized"}

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
#: The KV-cache gauge: the current name first, then the one vLLM <= 0.9 used (gone in 0.12).
KV_CACHE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")

AUTH_HINT = (
    "vLLM answered 401 Unauthorized: the server runs with --api-key (or VLLM_API_KEY) and this node's key is "
    "missing or wrong; give the node the server's key (api_key=... or http://:KEY@host:8000)"
)
NO_ROUTE_HINT = (
    "vLLM has no route for this request (404 Not Found): a vLLM server registers only the routes of its "
    "model's task, /v1/embeddings for a pooling (embedding) model, /v1/chat/completions and /v1/completions "
    "for a generation model"
)
NO_EMBEDDINGS_HINT = (
    "this vLLM server does not serve embeddings (POST /v1/embeddings is 404 Not Found): it runs a generation "
    "model; embeddings need a vLLM server started with an embedding (pooling) model, e.g. "
    "`vllm serve BAAI/bge-m3 --runner pooling` (older versions: `--task embed`)"
)


def is_flat_error(payload: Any) -> bool:
    """True for the flat error object of vLLM <= 0.10.0: `{"object": "error", "message": ...}`."""
    return isinstance(payload, Mapping) and payload.get("object") == "error" and "message" in payload


def flat_stream_error(payload: Mapping[str, Any]) -> StreamError:
    """The `StreamError` a flat error object inside a stream means."""
    code = int_or_none(payload.get("code")) or 0
    kind = payload.get("type")
    return StreamError(
        str(payload.get("message") or "error in stream"),
        status=code,
        error_type=str(kind) if kind else None,
        body=payload,
    )


class VLLMStream(OpenAIStream):
    """An OpenAI stream that also recognises the flat error object of vLLM <= 0.10.0."""

    def _handle(self, data: str) -> list[Chunk]:
        if '"error"' in data:  # only an error event can be flat; normal events are parsed once
            try:
                payload = json.loads(data)
            except ValueError:
                payload = None
            if is_flat_error(payload):
                raise flat_stream_error(payload)
        return super()._handle(data)


def models_of(data: Mapping[str, Any]) -> list[ModelInfo]:
    """The cards of a `/v1/models` answer; a LoRA card (with `parent`) gets its base model's context."""
    cards = [c for c in data.get("data") or () if isinstance(c, Mapping) and c.get("id")]
    contexts = {str(c["id"]): int_or_none(c.get("max_model_len")) for c in cards}
    infos = []
    for card in cards:
        parent = card.get("parent")
        context = int_or_none(card.get("max_model_len"))
        if context is None and parent:
            context = contexts.get(str(parent))
        details = {k: card[k] for k in ("owned_by", "root", "parent") if card.get(k) is not None}
        if parent:
            details["lora"] = True
        infos.append(ModelInfo(name=str(card["id"]), context_length=context, details=details))
    return infos


def activity_of(metrics: HttpResponse, listing: HttpResponse) -> Activity:
    """An `Activity` from the answers of `/metrics` and `/v1/models`; what they do not say is None."""
    samples = parse_metrics(metrics.text) if metrics.ok else []
    running = metric_sum(samples, RUNNING)
    waiting = metric_sum(samples, WAITING)
    # A fraction per engine: the node's figure is the mean over data-parallel engines, kept in 0..1.
    kv = metric_mean(samples, *KV_CACHE)
    loaded: tuple[LoadedModel, ...] | None = None
    context: int | None = None
    data = listing.json_object() if listing.ok else None
    if data is not None:
        infos = models_of(data)
        loaded = tuple(LoadedModel(name=m.name, context_length=m.context_length) for m in infos)
        base = {m.context_length for m in infos if not m.details.get("lora") and m.context_length is not None}
        context = base.pop() if len(base) == 1 else None
    engines = sorted(
        {s.labels["engine"] for s in samples if s.name in (RUNNING, WAITING, *KV_CACHE) and "engine" in s.labels}
    )
    raw: dict[str, Any] = {"metrics": metrics.status, "models": listing.status}
    if engines:
        raw["engines"] = engines
    kv_name = next((name for name in KV_CACHE if any(s.name == name for s in samples)), None)
    if kv_name:
        raw["kv_metric"] = kv_name
    return Activity(
        loaded=loaded,
        running=None if running is None else round(running),
        waiting=None if waiting is None else round(waiting),
        kv_cache_usage=kv,
        context_length=context,
        raw=raw,
    )


class VLLMBackend(OpenAICompatibleBackend):
    """vLLM's OpenAI-compatible server."""

    name = "vllm"
    default_ports: tuple[int, ...] = (DEFAULT_PORT,)
    operations = frozenset({"chat", "generate", "embed"})
    health_path = "/health"
    include_usage = True

    def health_state(self, response: HttpResponse) -> NodeState:
        """200 is up. 503 is a dead engine: down, not loading (a loading vLLM refuses connections)."""
        if not response.reached:
            return NodeState.DOWN
        if response.ok:
            return NodeState.UP
        if response.status in (401, 403):
            return NodeState.AUTH_REQUIRED
        return NodeState.DOWN

    def error(self, response: HttpResponse) -> BackendError:
        """Nested, flat and bare-string errors; a missing route means "not supported"."""
        body = response.json_object()
        if response.status == 401 and body is not None and body.get("error") == UNAUTHORIZED["error"]:
            return AuthenticationError(AUTH_HINT, status=401, error_type="Unauthorized", body=body)
        if response.status == 404 and body == FASTAPI_NOT_FOUND:
            return NotSupportedError(NO_ROUTE_HINT, status=404, error_type="Not Found", body=body)
        return http_error(response)

    def models(self) -> Exchange[Sequence[ModelInfo]]:
        """`GET /v1/models`: one card per served name, plus LoRA adapters."""
        data = self.check((yield from fetch(HttpRequest.get(f"{self.prefix}/models"))))
        return models_of(data)

    def activity(self) -> Exchange[Activity]:
        """`/metrics` (open even with `--api-key`) and `/v1/models`, read at once."""
        metrics, listing = yield from fetch_all(HttpRequest.get("/metrics"), HttpRequest.get(f"{self.prefix}/models"))
        return activity_of(metrics, listing)

    # -- requests ------------------------------------------------------------------------------

    def chat_body(self, request: ChatRequest, stream: bool) -> dict[str, Any]:
        """The OpenAI body; Ollama's boolean `think` becomes the chat template's `enable_thinking`."""
        body = super().chat_body(request, stream)
        think = request.params.get("think")
        if isinstance(think, bool):
            kwargs = dict(body.get("chat_template_kwargs") or {})
            kwargs.setdefault("enable_thinking", think)
            body["chat_template_kwargs"] = kwargs
        return body

    def chat_stream(self, request: ChatRequest) -> StreamPlan:
        """`POST /v1/chat/completions` as server-sent events (both error shapes recognised)."""
        plan = super().chat_stream(request)
        return StreamPlan(request=plan.request, decoder=lambda: VLLMStream("chat"))

    def generate_stream(self, request: GenerateRequest) -> StreamPlan:
        """`POST /v1/completions` as server-sent events (both error shapes recognised)."""
        plan = super().generate_stream(request)
        return StreamPlan(request=plan.request, decoder=lambda: VLLMStream("completion"))

    def embed(self, request: EmbedRequest) -> Exchange[EmbedResult]:
        """`POST /v1/embeddings`, which only a server running a pooling model has."""
        try:
            return (yield from super().embed(request))
        except NotSupportedError as exc:
            if exc.status != 404:
                raise
            raise NotSupportedError(NO_EMBEDDINGS_HINT, status=404, error_type=exc.error_type, body=exc.body) from None
