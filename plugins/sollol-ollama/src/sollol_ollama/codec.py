"""The Ollama codec: Ollama's native API (`/api/*`), NDJSON streams, its error shapes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sollol.activity import Activity, LoadedModel, ModelInfo
from sollol.codec import (
    NdjsonEvents,
    StreamPlan,
    http_error,
    inband_error,
    int_or_none,
    json_object,
    seconds_from_ns,
    tool_calls_of,
)
from sollol.detection import NodeState
from sollol.errors import BackendError, OverloadedError, ProtocolError
from sollol.http import Exchange, HttpRequest, HttpResponse, fetch, fetch_all
from sollol.inference import (
    ChatRequest,
    ChatResult,
    Chunk,
    EmbedRequest,
    EmbedResult,
    GenerateRequest,
    GenerateResult,
    Usage,
)

ROOT_TEXT = "Ollama is running"


def usage_of(payload: Mapping[str, Any]) -> Usage:
    """Ollama's counters (absent means zero or unknown) as `Usage`."""
    return Usage(
        prompt_tokens=int_or_none(payload.get("prompt_eval_count")),
        completion_tokens=int_or_none(payload.get("eval_count")),
        total_duration=seconds_from_ns(payload.get("total_duration")),
        load_duration=seconds_from_ns(payload.get("load_duration")),
    )


def body_of(
    model: str, fields: Mapping[str, Any], request: ChatRequest | GenerateRequest | EmbedRequest, stream: bool | None
) -> dict[str, Any]:
    """A request body: the caller's fields untouched, then model, stream and options."""
    body: dict[str, Any] = {"model": model, **fields}
    body.update(request.params)
    if stream is not None:
        body["stream"] = stream
    if request.options:
        body["options"] = dict(request.options)
    return body


class OllamaStream:
    """Decodes an Ollama NDJSON stream of chat or generate chunks."""

    def __init__(self, field: str) -> None:
        self._events = NdjsonEvents()
        self._field = field
        self._done = False

    def _chunk(self, payload: Any) -> Chunk:
        error = inband_error(payload)
        if error is not None:
            raise error
        if type(payload) is not dict and not isinstance(payload, Mapping):
            raise ProtocolError(f"stream line is not an object: {payload!r}")
        done = bool(payload.get("done"))
        if self._field == "message":
            message = payload.get("message") or {}
            text, thinking, calls = message.get("content") or "", message.get("thinking"), tool_calls_of(message)
        else:
            text, thinking, calls = payload.get("response") or "", payload.get("thinking"), ()
        self._done = self._done or done
        return Chunk(
            text=text,
            thinking=thinking or None,
            tool_calls=calls,
            done=done,
            done_reason=payload.get("done_reason"),
            usage=usage_of(payload) if done else None,
            model=payload.get("model"),
            raw=payload,
        )

    def feed(self, data: bytes) -> list[Chunk]:
        """Chunks completed by `data`."""
        return [self._chunk(p) for p in self._events.feed(data)]

    def close(self) -> list[Chunk]:
        """The last chunk; a stream that never said `done` is an error."""
        chunks = [self._chunk(p) for p in self._events.close()]
        if not self._done:
            raise ProtocolError("the stream ended before its final (done) line")
        return chunks


class OllamaBackend:
    """Codec for Ollama servers."""

    name = "ollama"
    default_ports: tuple[int, ...] = (11434,)
    operations = frozenset({"chat", "generate", "embed"})

    def health(self) -> HttpRequest:
        """`GET /`: cheap, loads nothing."""
        return HttpRequest.get("/")

    def health_state(self, response: HttpResponse) -> NodeState:
        """Up when the root answers Ollama's text."""
        if not response.reached:
            return NodeState.DOWN
        if response.ok:
            return NodeState.UP
        if response.status in (401, 403):
            return NodeState.AUTH_REQUIRED
        return NodeState.DOWN

    def error(self, response: HttpResponse) -> BackendError:
        """Ollama errors are `{"error": "msg"}`; a 503 means its queue is full."""
        error = http_error(response)
        if response.status == 503 and "busy" in error.message:
            return OverloadedError(error.message, status=503, body=error.body)
        return error

    def _check(self, response: HttpResponse) -> Mapping[str, Any]:
        return json_object(response, self.error)

    # -- inventory and activity ----------------------------------------------------------------

    def models(self) -> Exchange[Sequence[ModelInfo]]:
        """`/api/tags`, with `/api/show` for each model's capabilities and context length."""
        tags = self._check((yield from fetch(HttpRequest.get("/api/tags"))))
        entries = [m for m in tags.get("models") or () if isinstance(m, Mapping) and m.get("name")]
        shows = yield from fetch_all(*(HttpRequest.post("/api/show", json={"model": m["name"]}) for m in entries))
        found = []
        for entry, show in zip(entries, shows, strict=True):
            details = entry.get("details") or {}
            info = show.json_object() if show.ok else None
            caps = (info or {}).get("capabilities") or entry.get("capabilities")
            context = None
            for key, value in ((info or {}).get("model_info") or {}).items():
                if key.endswith(".context_length"):
                    context = int_or_none(value)
            found.append(
                ModelInfo(
                    name=str(entry["name"]),
                    size=int_or_none(entry.get("size")),
                    context_length=context,
                    capabilities=frozenset(caps) if isinstance(caps, list) else None,
                    family=details.get("family") or None,
                    details=details if isinstance(details, Mapping) else {},
                )
            )
        return found

    def activity(self) -> Exchange[Activity]:
        """`/api/ps`: loaded models and their memory. Ollama does not report queues."""
        response = yield from fetch(HttpRequest.get("/api/ps"))
        if not response.ok:
            return Activity()
        data = response.json_object() or {}
        loaded = tuple(
            LoadedModel(
                name=str(m.get("name") or m.get("model")),
                size=int_or_none(m.get("size")),
                size_vram=int_or_none(m.get("size_vram")),
                expires_at=m.get("expires_at"),
                context_length=int_or_none(m.get("context_length")) or None,
            )
            for m in data.get("models") or ()
            if isinstance(m, Mapping)
        )
        vram = [m.size_vram for m in loaded if m.size_vram is not None]
        return Activity(loaded=loaded, vram_used=sum(vram) if loaded else 0, raw=data)

    # -- chat and generate ---------------------------------------------------------------------

    def chat(self, request: ChatRequest) -> Exchange[ChatResult]:
        """`POST /api/chat` with `stream: false`."""
        body = body_of(request.model, {"messages": list(request.messages)}, request, False)
        data = self._check((yield from fetch(HttpRequest.post("/api/chat", json=body))))
        message = data.get("message") or {}
        return ChatResult(
            model=str(data.get("model", request.model)),
            text=message.get("content") or "",
            thinking=message.get("thinking") or None,
            tool_calls=tool_calls_of(message),
            done_reason=data.get("done_reason"),
            usage=usage_of(data),
            raw=data,
        )

    def chat_stream(self, request: ChatRequest) -> StreamPlan:
        """`POST /api/chat` streamed as NDJSON."""
        body = body_of(request.model, {"messages": list(request.messages)}, request, True)
        return StreamPlan(
            request=HttpRequest.post("/api/chat", json=body, stream=True), decoder=lambda: OllamaStream("message")
        )

    def generate(self, request: GenerateRequest) -> Exchange[GenerateResult]:
        """`POST /api/generate` with `stream: false`."""
        body = body_of(request.model, {"prompt": request.prompt}, request, False)
        data = self._check((yield from fetch(HttpRequest.post("/api/generate", json=body))))
        return GenerateResult(
            model=str(data.get("model", request.model)),
            text=data.get("response") or "",
            thinking=data.get("thinking") or None,
            done_reason=data.get("done_reason"),
            usage=usage_of(data),
            raw=data,
        )

    def generate_stream(self, request: GenerateRequest) -> StreamPlan:
        """`POST /api/generate` streamed as NDJSON."""
        body = body_of(request.model, {"prompt": request.prompt}, request, True)
        return StreamPlan(
            request=HttpRequest.post("/api/generate", json=body, stream=True), decoder=lambda: OllamaStream("response")
        )

    # -- embeddings --------------------------------------------------------------------------------

    def embed(self, request: EmbedRequest) -> Exchange[EmbedResult]:
        """`POST /api/embed`; on servers too old to have it, the legacy `/api/embeddings`."""
        body = body_of(request.model, {"input": list(request.inputs)}, request, None)
        response = yield from fetch(HttpRequest.post("/api/embed", json=body))
        if response.status == 404 and response.text.strip() == "404 page not found":
            return (yield from self._embed_legacy(request))
        data = self._check(response)
        vectors = data.get("embeddings")
        if not isinstance(vectors, list) or len(vectors) != len(request.inputs):
            count = len(vectors) if isinstance(vectors, list) else "no"
            raise ProtocolError(f"/api/embed returned {count} vectors for {len(request.inputs)} inputs")
        return EmbedResult(
            model=str(data.get("model", request.model)), embeddings=vectors, usage=usage_of(data), raw=data
        )

    def _embed_legacy(self, request: EmbedRequest) -> Exchange[EmbedResult]:
        legacy = {k: v for k, v in request.params.items() if k in ("keep_alive",)}
        bodies = []
        for text in request.inputs:
            body: dict[str, Any] = {"model": request.model, "prompt": text, **legacy}
            if request.options:
                body["options"] = dict(request.options)
            bodies.append(HttpRequest.post("/api/embeddings", json=body))
        answers = yield from fetch_all(*bodies)
        vectors = []
        raws = []
        for answer in answers:
            data = self._check(answer)
            vector = data.get("embedding")
            if not isinstance(vector, list):
                raise ProtocolError("/api/embeddings returned no embedding")
            vectors.append(vector)
            raws.append(data)
        return EmbedResult(model=request.model, embeddings=vectors, raw=raws)
