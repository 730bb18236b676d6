"""The OpenAI-compatible API as a backend codec, shared by every server that speaks it.

vLLM, llama.cpp, LocalAI, TGI and many others (SGLang, LM Studio...) serve `/v1/chat/completions`,
`/v1/completions`, `/v1/embeddings` and `/v1/models`. `OpenAICompatibleBackend` implements the
`Backend` shape over those routes; a plugin instantiates or subclasses it and overrides what its
server does differently (detection, activity, quirks).

Requests arrive in Ollama's vocabulary (messages with `images`, `options`, `format`, `think`...).
Fields that only Ollama understands are translated; every other field is passed through untouched,
so OpenAI clients' own fields (and a server's extras such as vLLM's `top_k`) reach the server.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from sollol.activity import Activity, ModelInfo
from sollol.codec import (
    SseEvents,
    StreamPlan,
    http_error,
    inband_error,
    int_or_none,
    json_object,
    tool_calls_of,
)
from sollol.detection import NodeState
from sollol.errors import BackendError, ProtocolError
from sollol.http import Exchange, HttpRequest, HttpResponse, fetch
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

#: Ollama `options` keys and the OpenAI (or common server extra) field each becomes.
OPTION_FIELDS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "seed": "seed",
    "stop": "stop",
    "num_predict": "max_tokens",
    "frequency_penalty": "frequency_penalty",
    "presence_penalty": "presence_penalty",
    "repeat_penalty": "repetition_penalty",
    "typical_p": "typical_p",
}
#: Ollama-only top-level fields that have no OpenAI meaning and are not sent.
OLLAMA_ONLY = frozenset(
    {"keep_alive", "template", "raw", "context", "truncate", "shift", "images", "system", "format", "think"}
)

FINISH_TO_DONE = {
    "stop": "stop",
    "eos_token": "stop",
    "stop_sequence": "stop",
    "tool_calls": "stop",
    "length": "length",
    "eos": "stop",
    "limit": "length",
    "word": "stop",
}


def done_reason(finish: Any) -> str | None:
    """An OpenAI (or TGI) finish_reason in Ollama's done_reason words."""
    if finish is None:
        return None
    return FINISH_TO_DONE.get(str(finish), str(finish))


def _image_url(image: str) -> str:
    return image if image.startswith(("data:", "http://", "https://")) else f"data:image/png;base64,{image}"


def openai_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Ollama-style messages as OpenAI messages (images become content parts, tool arguments strings)."""
    out: list[dict[str, Any]] = []
    for message in messages:
        converted = {k: v for k, v in message.items() if k not in ("images", "thinking", "tool_name")}
        images = message.get("images")
        if images:
            text = message.get("content") or ""
            parts: list[dict[str, Any]] = [{"type": "text", "text": text}] if isinstance(text, str) else list(text)
            parts += [{"type": "image_url", "image_url": {"url": _image_url(str(img))}} for img in images]
            converted["content"] = parts
        calls = message.get("tool_calls")
        if calls:
            fixed = []
            for index, call in enumerate(calls):
                function = dict(call.get("function") or {})
                if not isinstance(function.get("arguments"), str):
                    function["arguments"] = json.dumps(function.get("arguments") or {})
                fixed.append({"id": call.get("id") or f"call_{index}", "type": "function", "function": function})
            converted["tool_calls"] = fixed
        if message.get("role") == "tool" and "tool_call_id" not in converted and message.get("tool_name"):
            converted["name"] = message["tool_name"]
        out.append(converted)
    return out


def openai_fields(request: ChatRequest | GenerateRequest | EmbedRequest) -> dict[str, Any]:
    """The request's options and params as OpenAI fields."""
    body: dict[str, Any] = {}
    for key, value in request.options.items():
        body[OPTION_FIELDS.get(key, key)] = value
    params = request.params
    fmt = params.get("format")
    if fmt == "json":
        body["response_format"] = {"type": "json_object"}
    elif isinstance(fmt, Mapping):
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "response", "schema": dict(fmt)}}
    think = params.get("think")
    if isinstance(think, str) and think in ("low", "medium", "high"):
        body["reasoning_effort"] = think
    for key, value in params.items():
        if key not in OLLAMA_ONLY:
            body[key] = value
    return body


def usage_of(data: Any) -> Usage:
    """OpenAI `usage` as `Usage`."""
    usage = data.get("usage") if isinstance(data, Mapping) else None
    if not isinstance(usage, Mapping):
        return Usage()
    return Usage(
        prompt_tokens=int_or_none(usage.get("prompt_tokens")),
        completion_tokens=int_or_none(usage.get("completion_tokens")),
    )


def reasoning_of(part: Mapping[str, Any]) -> str | None:
    """Reasoning text under either of its names (`reasoning`, older `reasoning_content`)."""
    value = part.get("reasoning") or part.get("reasoning_content")
    return str(value) if value else None


class OpenAIStream:
    """Decodes an OpenAI-style SSE stream of chat or completion chunks.

    Ends on `[DONE]`; a stream that closes after a finish_reason without `[DONE]` (TGI,
    llama.cpp's native routes) is complete too; one that closes before either is truncated.
    Tool-call fragments are joined and handed over whole on the final chunk.
    """

    def __init__(self, kind: str) -> None:
        self._events = SseEvents()
        self._kind = kind
        self._finish: str | None = None
        self._usage: Usage | None = None
        self._model: str | None = None
        self._calls: dict[int, dict[str, Any]] = {}
        self._done = False

    def _final(self) -> Chunk:
        self._done = True
        calls = tool_calls_of({"tool_calls": [self._calls[i] for i in sorted(self._calls)]})
        return Chunk(
            done=True,
            done_reason=done_reason(self._finish) or "stop",
            usage=self._usage or Usage(),
            model=self._model,
            tool_calls=calls,
        )

    def _handle(self, data: str) -> list[Chunk]:
        if self._done:
            return []
        if data.strip() == "[DONE]":
            return [self._final()]
        payload = json.loads(data) if data.strip() else None
        error = inband_error(payload)
        if error is not None:
            raise error
        if not isinstance(payload, Mapping):
            raise ProtocolError(f"stream event is not an object: {data[:200]!r}")
        self._model = payload.get("model") or self._model
        usage = payload.get("usage")
        if isinstance(usage, Mapping) and (usage.get("completion_tokens") or usage.get("prompt_tokens")):
            self._usage = usage_of(payload)
        chunks = []
        for choice in payload.get("choices") or ():
            if self._kind == "chat":
                delta = choice.get("delta") or {}
                text = delta.get("content") or ""
                thinking = reasoning_of(delta)
                for call in delta.get("tool_calls") or ():
                    slot = self._calls.setdefault(
                        int(call.get("index", 0)), {"function": {"name": "", "arguments": ""}}
                    )
                    if call.get("id"):
                        slot["id"] = call["id"]
                    function = call.get("function") or {}
                    slot["function"]["name"] += function.get("name") or ""
                    arguments = function.get("arguments")
                    slot["function"]["arguments"] += (
                        arguments if isinstance(arguments, str) else json.dumps(arguments or {})
                    )
            else:
                text, thinking = choice.get("text") or "", None
            if text or thinking:
                chunks.append(Chunk(text=text, thinking=thinking, model=self._model, raw=payload))
            if choice.get("finish_reason"):
                self._finish = choice["finish_reason"]
        return chunks

    def feed(self, data: bytes) -> list[Chunk]:
        """Chunks completed by `data`."""
        chunks: list[Chunk] = []
        for event in self._events.feed(data):
            try:
                chunks += self._handle(event.data)
            except ValueError as exc:
                if isinstance(exc, ProtocolError):
                    raise
                raise ProtocolError(f"malformed stream event: {event.data[:200]!r}") from None
        return chunks

    def close(self) -> list[Chunk]:
        """The final chunk; a stream cut off before its end is a `ProtocolError`."""
        chunks: list[Chunk] = []
        for event in self._events.close():
            try:
                chunks += self._handle(event.data)
            except ValueError:  # an event cut off in the middle
                raise ProtocolError(f"the stream ended inside an event: {event.data[:200]!r}") from None
        if not self._done:
            if self._finish is None:
                raise ProtocolError("the stream ended before its final event")
            chunks.append(self._final())
        return chunks


class OpenAICompatibleBackend:
    """A codec for any server with the OpenAI routes. Subclass or configure per server."""

    name = "openai"
    default_ports: tuple[int, ...] = ()
    operations = frozenset({"chat", "generate", "embed"})
    health_path = "/health"
    prefix = "/v1"
    include_usage = True  # ask streams for a usage chunk (stream_options.include_usage)

    def __init__(
        self, name: str | None = None, *, default_ports: tuple[int, ...] | None = None, health_path: str | None = None
    ) -> None:
        if name is not None:
            self.name = name
        if default_ports is not None:
            self.default_ports = default_ports
        if health_path is not None:
            self.health_path = health_path

    # -- health, inventory, activity ---------------------------------------------------------

    def health(self) -> HttpRequest:
        """The liveness request."""
        return HttpRequest.get(self.health_path)

    def health_state(self, response: HttpResponse) -> NodeState:
        """Up on 2xx; 503 means still loading; 401/403 means a key is needed."""
        if not response.reached:
            return NodeState.DOWN
        if response.ok:
            return NodeState.UP
        if response.status in (401, 403):
            return NodeState.AUTH_REQUIRED
        if response.status == 503:
            return NodeState.LOADING
        return NodeState.DOWN

    def error(self, response: HttpResponse) -> BackendError:
        """Any of the error envelopes, by status."""
        return http_error(response)

    def check(self, response: HttpResponse) -> Mapping[str, Any]:
        """The JSON object of a 2xx answer; otherwise raise the error it carries."""
        return json_object(response, self.error)

    def model_info(self, entry: Mapping[str, Any]) -> ModelInfo:
        """One `/v1/models` entry as `ModelInfo`."""
        meta = entry.get("meta") if isinstance(entry.get("meta"), Mapping) else {}
        context = int_or_none(entry.get("max_model_len")) or int_or_none((meta or {}).get("n_ctx_train"))
        return ModelInfo(
            name=str(entry["id"]),
            context_length=context,
            details={k: v for k, v in entry.items() if k in ("owned_by", "root", "parent")},
        )

    def models(self) -> Exchange[Sequence[ModelInfo]]:
        """`GET /v1/models` (`data` may be null when there are none)."""
        data = self.check((yield from fetch(HttpRequest.get(f"{self.prefix}/models"))))
        return [self.model_info(m) for m in data.get("data") or () if isinstance(m, Mapping) and m.get("id")]

    def activity(self) -> Exchange[Activity]:
        """Nothing generic to read; servers override this."""
        return Activity()
        yield  # pragma: no cover - makes this a generator

    # -- requests -----------------------------------------------------------------------------

    def chat_body(self, request: ChatRequest, stream: bool) -> dict[str, Any]:
        """The `/v1/chat/completions` body."""
        body: dict[str, Any] = {"model": request.model, "messages": openai_messages(request.messages)}
        body.update(openai_fields(request))
        body["stream"] = stream
        if stream and self.include_usage:
            body.setdefault("stream_options", {"include_usage": True})
        elif not stream:
            body.pop("stream_options", None)  # vLLM answers 400 to stream_options without stream
        return body

    def completion_body(self, request: GenerateRequest, stream: bool) -> dict[str, Any]:
        """The `/v1/completions` body (a `system` prompt is put before the prompt)."""
        system = request.params.get("system")
        prompt = f"{system}\n\n{request.prompt}" if system else request.prompt
        body: dict[str, Any] = {"model": request.model, "prompt": prompt}
        body.update(openai_fields(request))
        body["stream"] = stream
        if stream and self.include_usage:
            body.setdefault("stream_options", {"include_usage": True})
        elif not stream:
            body.pop("stream_options", None)
        return body

    def chat(self, request: ChatRequest) -> Exchange[ChatResult]:
        """`POST /v1/chat/completions`."""
        data = self.check(
            (yield from fetch(HttpRequest.post(f"{self.prefix}/chat/completions", json=self.chat_body(request, False))))
        )
        choices = data.get("choices") or [{}]
        message = choices[0].get("message") or {}
        return ChatResult(
            model=str(data.get("model") or request.model),
            text=message.get("content") or "",
            thinking=reasoning_of(message),
            tool_calls=tool_calls_of(message),
            done_reason=done_reason(choices[0].get("finish_reason")),
            usage=usage_of(data),
            raw=data,
        )

    def chat_stream(self, request: ChatRequest) -> StreamPlan:
        """`POST /v1/chat/completions` as server-sent events."""
        req = HttpRequest.post(f"{self.prefix}/chat/completions", json=self.chat_body(request, True), stream=True)
        return StreamPlan(request=req, decoder=lambda: OpenAIStream("chat"))

    def generate(self, request: GenerateRequest) -> Exchange[GenerateResult]:
        """`POST /v1/completions`."""
        data = self.check(
            (
                yield from fetch(
                    HttpRequest.post(f"{self.prefix}/completions", json=self.completion_body(request, False))
                )
            )
        )
        choices = data.get("choices") or [{}]
        return GenerateResult(
            model=str(data.get("model") or request.model),
            text=choices[0].get("text") or "",
            done_reason=done_reason(choices[0].get("finish_reason")),
            usage=usage_of(data),
            raw=data,
        )

    def generate_stream(self, request: GenerateRequest) -> StreamPlan:
        """`POST /v1/completions` as server-sent events."""
        req = HttpRequest.post(f"{self.prefix}/completions", json=self.completion_body(request, True), stream=True)
        return StreamPlan(request=req, decoder=lambda: OpenAIStream("completion"))

    def embed(self, request: EmbedRequest) -> Exchange[EmbedResult]:
        """`POST /v1/embeddings`; vectors come back in input order whatever order `data` has."""
        body: dict[str, Any] = {"model": request.model, "input": list(request.inputs)}
        body.update({k: v for k, v in openai_fields(request).items() if k not in ("max_tokens", "temperature")})
        data = self.check((yield from fetch(HttpRequest.post(f"{self.prefix}/embeddings", json=body))))
        items = sorted(
            (d for d in data.get("data") or () if isinstance(d, Mapping)), key=lambda d: int(d.get("index", 0))
        )
        vectors: list[list[float]] = [d["embedding"] for d in items if isinstance(d.get("embedding"), list)]
        if len(vectors) != len(items) or len(vectors) != len(request.inputs):
            raise ProtocolError(f"/v1/embeddings returned {len(vectors)} vectors for {len(request.inputs)} inputs")
        return EmbedResult(
            model=str(data.get("model") or request.model), embeddings=vectors, usage=usage_of(data), raw=data
        )
