"""An ASGI app that behaves like vLLM's OpenAI-compatible server on the wire, without a GPU.

What `reference/backend-protocols.md` section 4 says, as detection and clients see it: the
`server: uvicorn` header, FastAPI's `{"detail": "Not Found"}` 404 and 405, `/health` 200 with an
empty body (503 once the engine is "dead"), `/ping`, `/version`, `/load`, `/metrics` with engine
labels, `/v1/models` cards with `max_model_len` (and LoRA cards with `parent`), chat and
completions streamed with the role chunk, the usage chunk only when asked for, and `[DONE]`,
`/v1/embeddings` only when an embedding model is configured (vLLM registers the routes of its
model's task only), nested or (`flat_errors=True`, <= 0.10.0) flat errors, and `--api-key`
protecting only `/v1/*` with `{"error": "Unauthorized"}`.

Run it: `python -m sollol_vllm.emulator --port 8000`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import struct
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from sollol.testing.emulator import (
    EmulatedModel,
    Emulator,
    EmulatorConfig,
    EmuRequest,
    EmuResponse,
    Fault,
    json_response,
    route,
    stream_response,
    text_response,
)

JSON = "application/json"
SSE = "text/event-stream; charset=utf-8"
METRICS = "text/plain; version=0.0.4; charset=utf-8"
DEFAULT_MODEL = "meta-llama/Llama-3.2-1B-Instruct"
REASONING_TEXT = "The user greets me. I should answer briefly."

_PHRASES = {
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_ERROR_TYPES = {
    400: "BadRequestError",
    404: "NotFoundError",
    500: "InternalServerError",
    503: "ServiceUnavailableError",
}


def sse(payload: Any) -> bytes:
    """One server-sent event as vLLM writes it (`data: ` and a blank line)."""
    text = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {text}\n\n".encode()


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping) and p.get("type") == "text")
    return ""


class VLLMEmulator(Emulator):
    """vLLM's OpenAI-compatible server, emulated.

    Options beside `EmulatorConfig`: `flat_errors` (the flat error object of <= 0.10.0),
    `old_metrics` (`vllm:gpu_cache_usage_perc` and no `engine` label, as <= 0.9), `engines`
    (data-parallel engines in `/metrics`), `lora` (adapter name -> base model),
    `load_tracking` (`/load` counts requests), `force_include_usage`, and `reasoning_field`
    (`"reasoning"`, or `"reasoning_content"` as 0.8-0.10 wrote it) to emit reasoning text.
    Set `engine_dead = True` to make `/health` answer 503.
    """

    generation_paths = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
    default_headers = (("server", "uvicorn"),)

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        *,
        flat_errors: bool = False,
        old_metrics: bool = False,
        engines: int = 1,
        lora: Mapping[str, str] | None = None,
        load_tracking: bool = False,
        force_include_usage: bool = False,
        reasoning_field: str | None = None,
        **settings: Any,
    ) -> None:
        if config is None:
            settings.setdefault("models", [EmulatedModel(name=DEFAULT_MODEL, context_length=131072)])
            settings.setdefault("name", "vllm")
        super().__init__(config, **settings)
        self.flat_errors = flat_errors
        self.old_metrics = old_metrics
        self.engines = max(1, engines)
        self.lora = dict(lora or {})
        self.load_tracking = load_tracking
        self.force_include_usage = force_include_usage
        self.reasoning_field = reasoning_field
        self.engine_dead = False
        self.waiting = 0
        self.kv_tokens = 0
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.finished: dict[str, int] = {}
        self.started_at = time.time()
        if self.config.version is None:
            self.config.version = "0.10.0" if flat_errors else "0.11.0"

    # -- the framework's answers -------------------------------------------------------------

    async def not_found(self, request: EmuRequest) -> EmuResponse:
        return json_response({"detail": "Not Found"}, 404, content_type=JSON)

    async def method_not_allowed(self, request: EmuRequest) -> EmuResponse:
        return json_response({"detail": "Method Not Allowed"}, 405, content_type=JSON)

    async def unauthorized(self, request: EmuRequest) -> EmuResponse | None:
        """With an API key, only paths under `/v1` are checked; the answer is a bare string."""
        key = self.config.api_key
        if key is None or not request.path.startswith("/v1") or request.method == "OPTIONS":
            return None
        if request.headers.get("authorization") == f"Bearer {key}":
            return None
        return json_response({"error": "Unauthorized"}, 401, content_type=JSON)

    def error(self, status: int, message: str, kind: str | None = None, param: str | None = None) -> EmuResponse:
        """vLLM's error answer, nested (>= 0.10.1) or flat (<= 0.10.0); `code` is the integer status."""
        fields = {
            "message": message,
            "type": kind or _ERROR_TYPES.get(status, _PHRASES.get(status, "Error")),
            "param": param,
            "code": status,
        }
        body = {"object": "error", **fields} if self.flat_errors else {"error": fields}
        return json_response(body, status, content_type=JSON)

    def _error_event(self, fault: Fault) -> bytes:
        fields = {
            "message": fault.message,
            "type": _ERROR_TYPES.get(fault.status, "InternalServerError"),
            "param": None,
            "code": fault.status,
        }
        return sse({"object": "error", **fields} if self.flat_errors else {"error": fields})

    # -- models ---------------------------------------------------------------------------------

    def model(self, name: str | None) -> EmulatedModel | None:
        """The served model called exactly `name` (vLLM compares names as they are); LoRA names give their base."""
        if not name:
            return None
        name = self.lora.get(name, name)
        return next((m for m in self.config.models if m.name == name), None)

    def _pick(
        self, body: Mapping[str, Any], embedding: bool, api: str
    ) -> tuple[EmulatedModel | None, EmuResponse | None]:
        name = body.get("model")
        if name is None:
            first = next((m for m in self.config.models if m.embedding == embedding), None)
            return first, None
        model = self.model(str(name))
        if model is None:
            return None, self.error(404, f"The model `{name}` does not exist.", "NotFoundError", "model")
        if model.embedding != embedding:
            return None, self.error(400, f"The model does not support {api} API", "BadRequestError")
        return model, None

    def _serves(self, embedding: bool) -> bool:
        return any(m.embedding == embedding for m in self.config.models)

    def _card(self, name: str, created: int, root: str, parent: str | None, max_len: int | None) -> dict[str, Any]:
        permission = {
            "id": f"modelperm-{uuid.uuid5(uuid.NAMESPACE_URL, name).hex}",
            "object": "model_permission",
            "created": created,
            "allow_create_engine": False,
            "allow_sampling": True,
            "allow_logprobs": True,
            "allow_search_indices": False,
            "allow_view": True,
            "allow_fine_tuning": False,
            "organization": "*",
            "group": None,
            "is_blocking": False,
        }
        return {
            "id": name,
            "object": "model",
            "created": created,
            "owned_by": "vllm",
            "root": root,
            "parent": parent,
            "max_model_len": max_len,
            "permission": [permission],
        }

    # -- plain routes ---------------------------------------------------------------------------

    @route("GET", "/health")
    async def health(self, request: EmuRequest) -> EmuResponse:
        return text_response("", 503 if self.engine_dead else 200, content_type=None)

    @route("GET", "/ping")
    async def ping(self, request: EmuRequest) -> EmuResponse:
        return await self.health(request)

    @route("POST", "/ping")
    async def ping_post(self, request: EmuRequest) -> EmuResponse:
        return await self.health(request)

    @route("GET", "/version")
    async def version(self, request: EmuRequest) -> EmuResponse:
        return json_response({"version": self.config.version}, content_type=JSON)

    @route("GET", "/load")
    async def load(self, request: EmuRequest) -> EmuResponse:
        return json_response(
            {"server_load": self.in_flight + self.waiting if self.load_tracking else 0}, content_type=JSON
        )

    @route("GET", "/v1/models")
    async def models(self, request: EmuRequest) -> EmuResponse:
        created = int(time.time())
        cards = [self._card(m.name, created, m.name, None, m.context_length) for m in self.config.models]
        cards += [self._card(name, created, f"/adapters/{name}", base, None) for name, base in self.lora.items()]
        return json_response({"object": "list", "data": cards}, content_type=JSON)

    @route("GET", "/metrics")
    async def metrics(self, request: EmuRequest) -> EmuResponse:
        return text_response(self.metrics_text(), content_type=METRICS)

    def kv_usage(self) -> float:
        """The KV-cache fraction in use: tokens held by running requests over the cache's size."""
        context = self.config.models[0].context_length if self.config.models else 4096
        capacity = max(1, context * (self.config.parallel or 4))
        return min(1.0, self.kv_tokens / capacity)

    def metrics_text(self) -> str:
        """The Prometheus exposition: gauges split over engines, counters with `_total`."""
        model = self.config.models[0].name if self.config.models else DEFAULT_MODEL

        def labels(engine: int, **extra: str) -> str:
            pairs = {} if self.old_metrics else {"engine": str(engine)}
            pairs["model_name"] = model
            pairs.update(extra)
            return "{" + ",".join(f'{k}="{v}"' for k, v in pairs.items()) + "}"

        def split(total: int, engine: int) -> int:
            return total // self.engines + (1 if engine < total % self.engines else 0)

        engines = [0] if self.old_metrics else list(range(self.engines))
        kv_name = "vllm:gpu_cache_usage_perc" if self.old_metrics else "vllm:kv_cache_usage_perc"
        lines: list[str] = []

        def gauge(name: str, help_text: str, value: Any) -> None:
            lines.extend((f"# HELP {name} {help_text}", f"# TYPE {name} gauge"))
            lines.extend(f"{name}{labels(e)} {float(value(e))}" for e in engines)

        def counter(name: str, help_text: str, total: int, **extra: str) -> None:
            lines.extend((f"# HELP {name} {help_text}", f"# TYPE {name} counter"))
            lines.extend(f"{name}_total{labels(e, **extra)} {float(split(total, e))}" for e in engines)
            lines.extend(f"{name}_created{labels(e, **extra)} {self.started_at}" for e in engines)

        gauge(
            "vllm:num_requests_running",
            "Number of requests in model execution batches.",
            lambda e: split(self.in_flight, e),
        )
        gauge(
            "vllm:num_requests_waiting", "Number of requests waiting to be processed.", lambda e: split(self.waiting, e)
        )
        gauge(kv_name, "KV-cache usage. 1 means 100 percent usage.", lambda e: round(self.kv_usage(), 6))
        counter("vllm:prompt_tokens", "Number of prefill tokens processed.", self.prompt_tokens_total)
        counter("vllm:generation_tokens", "Number of generation tokens processed.", self.generation_tokens_total)
        for reason, count in sorted(self.finished.items()):
            counter("vllm:request_success", "Count of successfully processed requests.", count, finished_reason=reason)
        lines.append('python_info{implementation="CPython",major="3",minor="12",patchlevel="3",version="3.12.3"} 1.0')
        return "\n".join(lines) + "\n"

    # -- request plumbing -------------------------------------------------------------------------

    def _body(self, request: EmuRequest) -> tuple[dict[str, Any], EmuResponse | None]:
        try:
            body = json.loads(request.body)
        except ValueError:
            return {}, self.error(400, "JSON decode error", "Bad Request")
        if not isinstance(body, dict):
            return {}, self.error(
                400, "Input should be a valid dictionary or object to extract fields from", "Bad Request"
            )
        return body, None

    def _limit(self, body: Mapping[str, Any]) -> tuple[int | None, EmuResponse | None]:
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        if limit is None:
            return None, None
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            return None, self.error(400, f"max_tokens must be at least 1, got {limit}.", "Bad Request", "max_tokens")
        return limit, None

    def _stream_flags(self, body: Mapping[str, Any]) -> tuple[bool, bool, EmuResponse | None]:
        """(include_usage, continuous_usage) for a request, or the 400 for `stream_options` without `stream`."""
        options = body.get("stream_options")
        if options is not None and not body.get("stream"):
            return (
                False,
                False,
                self.error(400, "Stream options can only be defined when `stream=True`.", "Bad Request"),
            )
        options = options if isinstance(options, Mapping) else None
        include = self.force_include_usage or (options is not None and options.get("include_usage", True) is not False)
        continuous = bool(options and options.get("continuous_usage_stats")) and include
        return include, continuous, None

    def _context_check(self, model: EmulatedModel, prompt_tokens: int, limit: int | None) -> EmuResponse | None:
        wanted = prompt_tokens + (limit or 0)
        if wanted > model.context_length:
            return self.error(
                400,
                f"This model's maximum context length is {model.context_length} tokens. However, you requested "
                f"{wanted} tokens ({prompt_tokens} in the messages, {limit or 0} in the completion). "
                "Please reduce the length of the messages or completion.",
                "BadRequestError",
            )
        return None

    @asynccontextmanager
    async def _running(self, model: EmulatedModel, prompt_tokens: int) -> AsyncIterator[None]:
        """Wait (counted as waiting) for a slot, then run (counted as running), holding KV tokens."""
        self.waiting += 1
        slots = self.slots()
        try:
            await slots.acquire()
        finally:
            self.waiting -= 1
        self.enter()
        self.kv_tokens += prompt_tokens
        try:
            await self.work(model)
            yield
        finally:
            self.kv_tokens -= prompt_tokens
            self.leave()
            slots.release()

    def _finish(self, prompt_tokens: int, tokens: int, reason: str) -> None:
        self.prompt_tokens_total += prompt_tokens
        self.generation_tokens_total += tokens
        self.finished[reason] = self.finished.get(reason, 0) + 1

    @staticmethod
    def _usage(prompt_tokens: int, tokens: int) -> dict[str, Any]:
        return {
            "prompt_tokens": prompt_tokens,
            "total_tokens": prompt_tokens + tokens,
            "completion_tokens": tokens,
            "prompt_tokens_details": None,
        }

    # -- chat -----------------------------------------------------------------------------------

    @route("POST", "/v1/chat/completions")
    async def chat(self, request: EmuRequest) -> EmuResponse:
        if not self._serves(embedding=False):
            return await self.not_found(request)
        body, problem = self._body(request)
        if problem:
            return problem
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return self.error(
                400,
                "Field required" if messages is None else "messages must be a non-empty list",
                "Bad Request",
                "messages",
            )
        include_usage, continuous, problem = self._stream_flags(body)
        if problem:
            return problem
        limit, problem = self._limit(body)
        if problem:
            return problem
        model, problem = self._pick(body, embedding=False, api="Chat Completions")
        if problem:
            return problem
        assert model is not None
        prompt = next(
            (
                _text_of(m.get("content"))
                for m in reversed(messages)
                if isinstance(m, Mapping) and m.get("role") == "user"
            ),
            "",
        )
        prompt_tokens = sum(self.prompt_tokens(_text_of(m.get("content"))) for m in messages if isinstance(m, Mapping))
        problem = self._context_check(model, prompt_tokens, limit)
        if problem:
            return problem
        tokens = self.reply_tokens(prompt, limit)
        name = str(body.get("model") or model.name)
        tools = body.get("tools") if body.get("tool_choice") != "none" else None
        tool = (
            (tools[0].get("function") or {}).get("name", "tool")
            if isinstance(tools, list) and tools and isinstance(tools[0], Mapping)
            else None
        )
        reason = "tool_calls" if tool else ("length" if limit is not None and len(tokens) >= limit else "stop")
        ident = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        call_id = f"chatcmpl-tool-{uuid.uuid4().hex[:24]}"
        arguments = json.dumps({"query": prompt})

        if not body.get("stream"):
            async with self._running(model, prompt_tokens):
                for _ in tokens:
                    await self.pace()
            self._finish(prompt_tokens, len(tokens), reason)
            message: dict[str, Any] = {
                "role": "assistant",
                "content": None if tool else "".join(tokens),
                "refusal": None,
                "annotations": None,
                "audio": None,
                "function_call": None,
            }
            if tool:
                message["tool_calls"] = [
                    {"id": call_id, "type": "function", "function": {"name": tool, "arguments": arguments}}
                ]
            if self.reasoning_field == "reasoning_content":
                message["reasoning_content"] = REASONING_TEXT
            else:
                message["reasoning"] = REASONING_TEXT if self.reasoning_field == "reasoning" else None
            return json_response(
                {
                    "id": ident,
                    "object": "chat.completion",
                    "created": created,
                    "model": name,
                    "choices": [
                        {"index": 0, "message": message, "logprobs": None, "finish_reason": reason, "stop_reason": None}
                    ],
                    "service_tier": None,
                    "system_fingerprint": None,
                    "usage": self._usage(prompt_tokens, len(tokens)),
                    "prompt_logprobs": None,
                    "prompt_token_ids": None,
                    "kv_transfer_params": None,
                },
                content_type=JSON,
            )

        fault = request.fault

        def chunk(delta: dict[str, Any], finish: str | None = None, sent: int = 0) -> bytes:
            choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            if finish is not None:
                choice["stop_reason"] = None
            out: dict[str, Any] = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": name,
                "choices": [choice],
            }
            if continuous:
                out["usage"] = self._usage(prompt_tokens, sent)
            return sse(out)

        async def events() -> AsyncIterator[bytes]:
            async with self._running(model, prompt_tokens):
                yield chunk({"role": "assistant", "content": ""})
                if self.reasoning_field:
                    for word in REASONING_TEXT.split(" "):
                        await self.pace()
                        yield chunk({self.reasoning_field: word + " "})
                pieces: list[dict[str, Any]]
                if tool:
                    half = len(arguments) // 2
                    pieces = [
                        {
                            "tool_calls": [
                                {
                                    "id": call_id,
                                    "type": "function",
                                    "index": 0,
                                    "function": {"name": tool, "arguments": ""},
                                }
                            ]
                        },
                        {"tool_calls": [{"index": 0, "function": {"arguments": arguments[:half]}}]},
                        {"tool_calls": [{"index": 0, "function": {"arguments": arguments[half:]}}]},
                    ]
                else:
                    pieces = [{"content": token} for token in tokens]
                held = 0  # generated tokens held in the KV cache until the request ends
                try:
                    for index, delta in enumerate(pieces):
                        if fault is not None and fault.kind in ("stream_error", "truncate") and index == fault.after:
                            if fault.kind == "stream_error":
                                yield self._error_event(fault)
                                yield sse("[DONE]")
                            return
                        await self.pace()
                        held += 1
                        self.kv_tokens += 1
                        yield chunk(delta, sent=index + 1)
                    self._finish(prompt_tokens, len(tokens), reason)
                    yield chunk({"content": ""}, reason, sent=len(pieces))
                    if include_usage:
                        usage = self._usage(prompt_tokens, len(tokens))
                        yield sse(
                            {
                                "id": ident,
                                "object": "chat.completion.chunk",
                                "created": created,
                                "model": name,
                                "choices": [],
                                "usage": usage,
                            }
                        )
                    yield sse("[DONE]")
                finally:
                    self.kv_tokens -= held

        return stream_response(events(), SSE)

    # -- completions ----------------------------------------------------------------------------

    @route("POST", "/v1/completions")
    async def completions(self, request: EmuRequest) -> EmuResponse:
        if not self._serves(embedding=False):
            return await self.not_found(request)
        body, problem = self._body(request)
        if problem:
            return problem
        raw = body.get("prompt")
        if isinstance(raw, list) and raw and isinstance(raw[0], str):
            raw = raw[0]
        if not isinstance(raw, str):
            return self.error(
                400, "Either prompt or prompt_embeds must be provided and non-empty.", "Bad Request", "prompt"
            )
        prompt = raw
        include_usage, continuous, problem = self._stream_flags(body)
        if problem:
            return problem
        limit, problem = self._limit(body)
        if problem:
            return problem
        model, problem = self._pick(body, embedding=False, api="Completions")
        if problem:
            return problem
        assert model is not None
        prompt_tokens = self.prompt_tokens(prompt)
        problem = self._context_check(model, prompt_tokens, limit)
        if problem:
            return problem
        tokens = self.reply_tokens(prompt, limit)
        name = str(body.get("model") or model.name)
        reason = "length" if limit is not None and len(tokens) >= limit else "stop"
        ident = f"cmpl-{uuid.uuid4().hex}"
        created = int(time.time())

        if not body.get("stream"):
            async with self._running(model, prompt_tokens):
                for _ in tokens:
                    await self.pace()
            self._finish(prompt_tokens, len(tokens), reason)
            choice = {
                "index": 0,
                "text": "".join(tokens),
                "logprobs": None,
                "finish_reason": reason,
                "stop_reason": None,
                "prompt_logprobs": None,
            }
            return json_response(
                {
                    "id": ident,
                    "object": "text_completion",
                    "created": created,
                    "model": name,
                    "choices": [choice],
                    "service_tier": None,
                    "system_fingerprint": None,
                    "usage": self._usage(prompt_tokens, len(tokens)),
                    "kv_transfer_params": None,
                },
                content_type=JSON,
            )

        fault = request.fault

        def chunk(text: str, finish: str | None = None, sent: int = 0) -> bytes:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish, "stop_reason": None}
            out: dict[str, Any] = {
                "id": ident,
                "object": "text_completion",
                "created": created,
                "model": name,
                "choices": [choice],
            }
            if continuous:
                out["usage"] = self._usage(prompt_tokens, sent)
            return sse(out)

        async def events() -> AsyncIterator[bytes]:
            async with self._running(model, prompt_tokens):
                for index, token in enumerate(tokens):
                    if fault is not None and fault.kind in ("stream_error", "truncate") and index == fault.after:
                        if fault.kind == "stream_error":
                            yield self._error_event(fault)
                            yield sse("[DONE]")
                        return
                    await self.pace()
                    yield chunk(token, sent=index + 1)
                self._finish(prompt_tokens, len(tokens), reason)
                yield chunk("", reason, sent=len(tokens))
                if include_usage:
                    yield sse(
                        {
                            "id": ident,
                            "object": "text_completion",
                            "created": created,
                            "model": name,
                            "choices": [],
                            "usage": self._usage(prompt_tokens, len(tokens)),
                        }
                    )
                yield sse("[DONE]")

        return stream_response(events(), SSE)

    # -- embeddings -----------------------------------------------------------------------------

    @route("POST", "/v1/embeddings")
    async def embeddings(self, request: EmuRequest) -> EmuResponse:
        if not self._serves(embedding=True):
            return await self.not_found(request)
        body, problem = self._body(request)
        if problem:
            return problem
        raw = body.get("input")
        if isinstance(raw, str):
            inputs = [raw]
        elif isinstance(raw, list) and raw and all(isinstance(x, int) for x in raw):
            inputs = [" ".join(map(str, raw))]
        elif isinstance(raw, list) and raw and all(isinstance(x, (str, list)) for x in raw):
            inputs = [x if isinstance(x, str) else " ".join(map(str, x)) for x in raw]
        else:
            return self.error(
                400, "Field required" if raw is None else "input must be a string or a list", "Bad Request", "input"
            )
        model, problem = self._pick(body, embedding=True, api="Embeddings")
        if problem:
            return problem
        assert model is not None
        dimensions = body.get("dimensions")
        if dimensions is not None and dimensions != model.dimensions:
            return self.error(
                400,
                "Model does not support matryoshka representation, "
                "changing output dimensions will lead to poor results.",
                "BadRequestError",
            )
        encoding = body.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            return self.error(
                400, f"Input should be 'float' or 'base64', got {encoding!r}", "Bad Request", "encoding_format"
            )
        prompt_tokens = sum(self.prompt_tokens(t) for t in inputs)
        async with self._running(model, prompt_tokens):
            pass
        self._finish(prompt_tokens, 0, "stop")
        data = []
        for index, text in enumerate(inputs):
            vector = self.vector(text, model.dimensions)
            value: Any = (
                vector if encoding == "float" else base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            )
            data.append({"index": index, "object": "embedding", "embedding": value})
        return json_response(
            {
                "id": f"embd-{uuid.uuid4().hex}",
                "object": "list",
                "created": int(time.time()),
                "model": str(body.get("model") or model.name),
                "data": data,
                "usage": self._usage(prompt_tokens, 0),
            },
            content_type=JSON,
        )


def main() -> None:
    """Serve an emulated vLLM on a loopback port."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        help="served model name (repeatable); prefix 'embed:' for an embedding model",
    )
    parser.add_argument("--api-key", default=None, help="protect /v1/* like `vllm serve --api-key`")
    parser.add_argument("--flat-errors", action="store_true", help="the flat error object of vLLM <= 0.10.0")
    parser.add_argument(
        "--old-metrics", action="store_true", help="vllm:gpu_cache_usage_perc and no engine label (<= 0.9)"
    )
    parser.add_argument("--engines", type=int, default=1, help="data-parallel engines shown in /metrics")
    parser.add_argument("--token-delay", type=float, default=0.0)
    parser.add_argument("--parallel", type=int, default=None)
    args = parser.parse_args()
    models = [
        EmulatedModel(name=m.removeprefix("embed:"), embedding=m.startswith("embed:"), context_length=131072)
        for m in args.model
    ]
    config = EmulatorConfig(
        models=models or [EmulatedModel(name=DEFAULT_MODEL, context_length=131072)],
        token_delay=args.token_delay,
        parallel=args.parallel,
        api_key=args.api_key,
        name=f"vllm@{args.port}",
    )
    app = VLLMEmulator(config, flat_errors=args.flat_errors, old_metrics=args.old_metrics, engines=args.engines)
    import uvicorn

    asyncio.run(
        uvicorn.Server(
            uvicorn.Config(app, host=args.host, port=args.port, server_header=False, log_level="warning")
        ).serve()
    )


if __name__ == "__main__":
    main()
