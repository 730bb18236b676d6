"""An ASGI app that behaves like llama.cpp's `llama-server` on the wire, for tests and demos.

It follows the recordings of a real server in `reference/recorded/llamacpp/` and section 6 of
`reference/backend-protocols.md`: `Server: llama.cpp` on every answer (404, 401 and 503 too),
the `File Not Found` JSON 404, `{"error":{"code","message","type"}}` errors, `/health`, `/props`,
`/slots`, `/metrics` (501 unless `metrics=True`, as without `--metrics`), `/v1/models` with both an
Ollama-style `models` and an OpenAI-style `data` list, the OpenAI routes, the native `/completion`
stream that ends without `[DONE]`, `/v1/embeddings` (501 unless `embeddings=True`), and 503
`Loading model` on every route while `loading` is set. `api_2025=True` adds the `/api/tags`,
`/api/show` and `/api/chat` routes that builds from May 2025 to April 2026 served (`/api/chat`
speaks OpenAI there, not Ollama's NDJSON).

One server serves one model (single-model mode): the first configured model, by its name as
`--alias`; the `model` a request names is ignored, as llama.cpp does.

Run it: `python -m sollol_llamacpp.emulator --port 8080 [--embeddings] [--metrics]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import string
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sollol.testing.emulator import (
    EmulatedModel,
    Emulator,
    EmulatorConfig,
    EmuRequest,
    EmuResponse,
    json_response,
    route,
    stream_response,
    text_response,
)

SSE = "text/event-stream"
METRICS_TYPE = "text/plain; version=0.0.4"
BUILD_INFO = "b0-unknown"
#: Routes an `--api-key` server leaves open (2025 builds add `/api/tags`).
PUBLIC_PATHS = frozenset({"/health", "/v1/health", "/models", "/v1/models", "/"})
#: Routes 2025 builds answered while the model was still loading (with `meta: null`).
LOADING_EXEMPT_2025 = frozenset({"/models", "/v1/models", "/api/tags"})
STREAM_HEADERS = (("X-Accel-Buffering", "no"),)
SSE_END = b"data: [DONE]\n\n"
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' -}}"
    "{%- endfor -%}"
)

METRICS = (
    ("prompt_tokens_total", "counter", "Number of prompt tokens processed, excluding cached tokens"),
    ("prompt_tokens_cached_total", "counter", "Number of prompt tokens reused from the cache"),
    ("prompt_seconds_total", "counter", "Total time spent processing prompts"),
    ("tokens_predicted_total", "counter", "Number of generation tokens processed"),
    ("tokens_predicted_seconds_total", "counter", "Total time spent generating tokens"),
    ("n_decode_total", "counter", "Total number of llama_decode() calls"),
    ("n_tokens_max", "counter", "Largest observed sequence length (prompt + generation)"),
    ("prompt_tokens_seconds", "gauge", "Average prompt throughput in tokens/s"),
    ("predicted_tokens_seconds", "gauge", "Average generation throughput in tokens/s"),
    ("requests_processing", "gauge", "Number of requests processing"),
    ("requests_deferred", "gauge", "Number of requests deferred"),
    ("n_busy_slots_per_decode", "gauge", "Average number of busy slots per llama_decode() call"),
)


def error(status: int, message: str, kind: str, **extra: Any) -> EmuResponse:
    """llama.cpp's error envelope (`format_error_response`)."""
    return json_response({"error": {"code": status, "message": message, "type": kind, **extra}}, status)


def sse(obj: Any) -> bytes:
    """One server-sent event as llama.cpp writes it."""
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def completion_id() -> str:
    """An id like llama.cpp's: `chatcmpl-` and 32 letters and digits."""
    return "chatcmpl-" + "".join(random.choices(string.ascii_letters + string.digits, k=32))


def default_model() -> EmulatedModel:
    """Gemma 3 270M as the real test server serves it."""
    return EmulatedModel(
        name="gemma-3-270m", family="gemma3", parameter_size="270M", context_length=2048, dimensions=640, size=246587904
    )


class LlamaCppEmulator(Emulator):
    """llama.cpp's `llama-server`, emulated.

    `metrics` and `embeddings` stand for `--metrics` and `--embeddings`; `pooling="none"` makes
    `/v1/embeddings` refuse as a server without `--pooling` does; `loading` answers 503 on every
    route until cleared; `api_2025` adds the `/api/*` routes of 2025 builds; `config.parallel` is
    the number of slots (`-np`, default 4); the model's `context_length` is the context per slot;
    `reasoning` puts that text in `reasoning_content` before each chat answer.
    """

    generation_paths = (
        "/v1/chat/completions",
        "/chat/completions",
        "/v1/completions",
        "/completion",
        "/completions",
        "/v1/embeddings",
        "/embedding",
        "/embeddings",
        "/api/chat",
    )
    default_headers = (("Server", "llama.cpp"), ("Access-Control-Allow-Origin", ""))

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        *,
        metrics: bool = False,
        embeddings: bool | None = None,
        pooling: str = "mean",
        loading: bool = False,
        api_2025: bool = False,
        n_ctx_train: int = 32768,
        reasoning: str | None = None,
        **settings: Any,
    ) -> None:
        if config is None and "models" not in settings:
            settings["models"] = [default_model()]
        elif config is not None:  # settings beside a config refine it rather than vanish
            for key, value in settings.items():
                setattr(config, key, value)
        super().__init__(config, **settings)
        if not self.config.models:
            raise ValueError("llama-server serves exactly one model; configure one")
        if self.config.parallel is None:
            self.config.parallel = 4
        self.metrics = metrics
        self.embeddings = self.served_model.embedding if embeddings is None else embeddings
        self.pooling = pooling
        self.loading = loading
        self.api_2025 = api_2025
        self.n_ctx_train = n_ctx_train
        self.reasoning = reasoning
        self.started_at = int(time.time())
        self.deferred = 0
        self.task_ids = 0
        self.counters = {"prompt_tokens_total": 0, "tokens_predicted_total": 0, "n_decode_total": 0, "n_tokens_max": 0}

    # -- identity --------------------------------------------------------------------------------

    @property
    def served_model(self) -> EmulatedModel:
        """The one model this server serves."""
        return self.config.models[0]

    @property
    def alias(self) -> str:
        """The `--alias` the model is listed and answered under."""
        return self.served_model.name

    @property
    def build_info(self) -> str:
        """What `/props` and `system_fingerprint` say the build is."""
        return self.config.version or BUILD_INFO

    @property
    def n_slots(self) -> int:
        """Parallel slots (`-np`)."""
        return self.config.parallel or 4

    # -- middleware: loading, API key, unknown routes -----------------------------------------------

    def _loading_answer(self, request: EmuRequest) -> EmuResponse | None:
        if not self.loading:
            return None
        if self.api_2025 and request.path in LOADING_EXEMPT_2025:
            return None
        if request.path == "/" or request.path.endswith(".html"):
            return EmuResponse(status=503, body=b"<html><body>Loading model</body></html>", content_type="text/html")
        return error(503, "Loading model", "unavailable_error")

    async def unauthorized(self, request: EmuRequest) -> EmuResponse | None:
        """503 while loading; 401 `Invalid API Key` off the public routes when a key is set."""
        loading = self._loading_answer(request)
        if loading is not None:
            return loading
        key = self.config.api_key
        if key is None or request.path in PUBLIC_PATHS or (self.api_2025 and request.path == "/api/tags"):
            return None
        bearer = request.headers.get("authorization", "")
        given = bearer[7:].strip() if bearer.lower().startswith("bearer ") else request.headers.get("x-api-key")
        if given == key:
            return None
        return error(401, "Invalid API Key", "authentication_error")

    async def not_found(self, request: EmuRequest) -> EmuResponse:
        """cpp-httplib's unknown route, in llama.cpp's envelope (503 while loading)."""
        loading = self._loading_answer(request)
        if loading is not None:
            return loading
        return json_response({"error": {"message": "File Not Found", "type": "not_found_error", "code": 404}}, 404)

    async def method_not_allowed(self, request: EmuRequest) -> EmuResponse:
        """llama.cpp registers no other method on its paths: the same 404."""
        return await self.not_found(request)

    # -- status routes --------------------------------------------------------------------------------

    @route("GET", "/")
    async def root(self, request: EmuRequest) -> EmuResponse:
        return text_response(
            "<!doctype html><html><head><title>llama.cpp</title></head><body></body></html>", content_type="text/html"
        )

    @route("GET", "/health", "/v1/health")
    async def health(self, request: EmuRequest) -> EmuResponse:
        return json_response({"status": "ok"})

    @route("GET", "/props")
    async def props(self, request: EmuRequest) -> EmuResponse:
        model = self.served_model
        return json_response(
            {
                "default_generation_settings": {
                    "params": {
                        "seed": 4294967295,
                        "temperature": 0.8,
                        "top_k": 40,
                        "top_p": 0.95,
                        "min_p": 0.05,
                        "max_tokens": -1,
                        "n_predict": -1,
                        "n_keep": 0,
                        "stream": False,
                    },
                    "n_ctx": model.context_length,
                },
                "total_slots": self.n_slots,
                "model_alias": self.alias,
                "model_ftype": "Q4_K - Medium",
                "model_path": f"/models/{self.alias}.gguf",
                "modalities": {"vision": False, "video": False, "audio": False},
                "endpoint_slots": True,
                "endpoint_props": False,
                "endpoint_metrics": self.metrics,
                "ui": True,
                "chat_template": CHAT_TEMPLATE,
                "bos_token": "<bos>",
                "eos_token": "<eos>",
                "build_info": self.build_info,
                "is_sleeping": False,
            }
        )

    @route("GET", "/slots")
    async def slots_route(self, request: EmuRequest) -> EmuResponse:
        busy = min(self.in_flight, self.n_slots)
        if request.query.get("fail_on_no_slot") == "1" and busy >= self.n_slots:
            return error(503, "no slot available", "unavailable_error")
        slots: list[dict[str, Any]] = []
        for index in range(self.n_slots):
            slot: dict[str, Any] = {
                "id": index,
                "n_ctx": self.served_model.context_length,
                "speculative": False,
                "is_processing": index < busy,
            }
            if index < busy:
                slot["id_task"] = self.task_ids - index
            slots.append(slot)
        return json_response(slots)

    @route("GET", "/metrics")
    async def metrics_route(self, request: EmuRequest) -> EmuResponse:
        if not self.metrics:
            return error(
                501, "This server does not support metrics endpoint. Start it with `--metrics`", "not_supported_error"
            )
        values: dict[str, float] = {name: 0 for name, _, _ in METRICS}
        values.update(self.counters)
        values["requests_processing"] = min(self.in_flight, self.n_slots)
        values["requests_deferred"] = self.deferred
        lines = []
        for name, kind, text in METRICS:
            lines += [
                f"# HELP llamacpp:{name} {text}",
                f"# TYPE llamacpp:{name} {kind}",
                f"llamacpp:{name} {values[name]:g}",
            ]
        body = ("\n".join(lines) + "\n").encode()
        return EmuResponse(
            body=body, content_type=METRICS_TYPE, headers=[("Process-Start-Time-Unix", str(self.started_at))]
        )

    @route("GET", "/models", "/v1/models")
    async def models(self, request: EmuRequest) -> EmuResponse:
        model = self.served_model
        meta: dict[str, Any] | None = {
            "vocab_type": 1,
            "n_vocab": 262144,
            "n_ctx": model.context_length,
            "n_ctx_train": self.n_ctx_train,
            "n_embd": model.dimensions,
            "n_params": 268098176,
            "size": model.size,
            "ftype": "Q4_K - Medium",
        }
        if self.loading:
            meta = None
        return json_response(
            {
                "models": [
                    {
                        "name": self.alias,
                        "model": self.alias,
                        "modified_at": "",
                        "size": "",
                        "digest": "",
                        "type": "model",
                        "description": "",
                        "tags": [""],
                        "capabilities": ["completion"],  # an --embeddings server says so too
                        "parameters": "",
                        "details": {
                            "parent_model": "",
                            "format": "gguf",
                            "family": "",
                            "families": [""],
                            "parameter_size": "",
                            "quantization_level": "",
                        },
                    }
                ],
                "object": "list",
                "data": [
                    {
                        "id": self.alias,
                        "aliases": [self.alias],
                        "tags": [],
                        "object": "model",
                        "architecture": {"input_modalities": ["text"], "output_modalities": ["text"]},
                        "created": self.started_at,
                        "owned_by": "llamacpp",
                        "meta": meta,
                    }
                ],
            }
        )

    @route("GET", "/api/tags")
    async def api_tags(self, request: EmuRequest) -> EmuResponse:
        """`GET /api/tags` of 2025 builds: the `/v1/models` answer."""
        if not self.api_2025:
            return await self.not_found(request)
        return await self.models(request)

    @route("POST", "/api/chat")
    async def api_chat(self, request: EmuRequest) -> EmuResponse:
        """`POST /api/chat` of 2025 builds: OpenAI chat, not Ollama's NDJSON."""
        if not self.api_2025:
            return await self.not_found(request)
        return await self.chat(request)

    @route("POST", "/api/show")
    async def api_show(self, request: EmuRequest) -> EmuResponse:
        """`POST /api/show` of 2025 builds (any name: the one model)."""
        if not self.api_2025:
            return await self.not_found(request)
        return json_response(
            {
                "template": "{{ .Prompt }}",
                "model_info": {"llama.context_length": self.served_model.context_length},
                "modelfile": "",
                "parameters": "",
                "details": {
                    "parent_model": "",
                    "format": "gguf",
                    "family": "",
                    "families": [""],
                    "parameter_size": "",
                    "quantization_level": "",
                },
                "capabilities": ["completion"],
            }
        )

    # -- helpers -----------------------------------------------------------------------------------------

    def _body(self, request: EmuRequest) -> tuple[dict[str, Any], EmuResponse | None]:
        try:
            body = json.loads(request.body or b"")
        except ValueError as exc:
            column = getattr(exc, "colno", 1)
            return {}, error(
                400,
                f"[json.exception.parse_error.101] parse error at line 1, column {column}: "
                "syntax error while parsing value",
                "invalid_request_error",
            )
        if not isinstance(body, dict):
            return {}, error(400, "[json.exception.type_error.302] type must be object", "invalid_request_error")
        return body, None

    @asynccontextmanager
    async def occupy(self) -> AsyncIterator[None]:
        """Hold a slot for one task; tasks beyond the slots wait (`requests_deferred`). Tests use it to look busy."""
        gate = self.slots()
        self.deferred += 1
        try:
            await gate.acquire()
        finally:
            self.deferred -= 1
        self.task_ids += 1
        self.enter()
        try:
            yield
        finally:
            self.leave()
            gate.release()

    def _count(self, prompt_tokens: int, tokens: int) -> None:
        self.counters["prompt_tokens_total"] += prompt_tokens
        self.counters["tokens_predicted_total"] += tokens
        self.counters["n_decode_total"] += tokens + 1
        self.counters["n_tokens_max"] = max(self.counters["n_tokens_max"], prompt_tokens + tokens)

    def _timings(self, prompt_tokens: int, tokens: int) -> dict[str, Any]:
        per_token = (self.config.token_delay or 0.0125) * 1000
        return {
            "cache_n": 0,
            "prompt_n": prompt_tokens,
            "prompt_ms": 2.0 * prompt_tokens,
            "prompt_per_token_ms": 2.0,
            "prompt_per_second": 500.0,
            "predicted_n": tokens,
            "predicted_ms": per_token * tokens,
            "predicted_per_token_ms": per_token,
            "predicted_per_second": 1000.0 / per_token,
        }

    @staticmethod
    def _usage(prompt_tokens: int, tokens: int) -> dict[str, Any]:
        return {
            "completion_tokens": tokens,
            "prompt_tokens": prompt_tokens,
            "total_tokens": prompt_tokens + tokens,
            "prompt_tokens_details": {"cached_tokens": 0},
        }

    @staticmethod
    def _limit(body: dict[str, Any]) -> int | None:
        for key in ("max_tokens", "max_completion_tokens", "n_predict"):
            value = body.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                return value
        return None

    def _too_long(self, prompt_tokens: int) -> EmuResponse | None:
        n_ctx = self.served_model.context_length
        if prompt_tokens < n_ctx:
            return None
        return error(
            400,
            "the request exceeds the available context size, try increasing it",
            "exceed_context_size_error",
            n_prompt_tokens=prompt_tokens,
            n_ctx=n_ctx,
        )

    def _first_result_error(self, request: EmuRequest) -> EmuResponse | None:
        """A stream whose first result fails answers a plain JSON error, not a stream."""
        fault = request.fault
        if fault is not None and fault.kind == "stream_error" and fault.after <= 0:
            return error(500, fault.message, "server_error")
        return None

    # -- chat ----------------------------------------------------------------------------------------------

    @route("POST", "/v1/chat/completions", "/chat/completions")
    async def chat(self, request: EmuRequest) -> EmuResponse:
        body, problem = self._body(request)
        if problem:
            return problem
        messages = body.get("messages")
        if messages is None:
            return error(400, "'messages' is required", "invalid_request_error")
        if not isinstance(messages, list):
            return error(400, "Expected 'messages' to be an array", "invalid_request_error")
        prompt = ""
        for turn in messages:
            content = turn.get("content") if isinstance(turn, dict) else None
            if isinstance(content, list):
                content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
            if isinstance(turn, dict) and turn.get("role") == "user":
                prompt = str(content or "")
        prompt_tokens = (
            sum(self.prompt_tokens(str(m.get("content") or "")) + 4 for m in messages if isinstance(m, dict)) or 1
        )
        too_long = self._too_long(prompt_tokens)
        if too_long:
            return too_long
        limit = self._limit(body)
        tokens = self.reply_tokens(prompt, limit)
        finish = "length" if limit is not None and len(tokens) >= limit else "stop"
        tools = body.get("tools")
        call: dict[str, Any] | None = None
        if isinstance(tools, list) and tools and isinstance(tools[0], dict):
            name = (tools[0].get("function") or {}).get("name", "tool")
            call = {
                "type": "function",
                "function": {"name": name, "arguments": json.dumps({"query": prompt})},
                "id": "call_" + completion_id()[9:25],
            }
            finish = "tool_calls"
        ident, created = completion_id(), int(time.time())
        head = {
            "created": created,
            "id": ident,
            "model": self.alias,
            "system_fingerprint": self.build_info,
            "object": "chat.completion.chunk",
        }

        if not body.get("stream"):
            async with self.occupy():
                for _ in tokens:
                    await self.pace()
            self._count(prompt_tokens, len(tokens))
            message: dict[str, Any] = {"role": "assistant", "content": None if call else "".join(tokens)}
            if self.reasoning:
                message["reasoning_content"] = self.reasoning
            if call:
                message["tool_calls"] = [call]
            return json_response(
                {
                    "choices": [{"finish_reason": finish, "index": 0, "message": message}],
                    "created": created,
                    "model": self.alias,
                    "system_fingerprint": self.build_info,
                    "object": "chat.completion",
                    "usage": self._usage(prompt_tokens, len(tokens)),
                    "id": ident,
                    "timings": self._timings(prompt_tokens, len(tokens)),
                }
            )

        first = self._first_result_error(request)
        if first:
            return first
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        fault = request.fault

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            return sse({"choices": [{"finish_reason": finish_reason, "index": 0, "delta": delta}], **head})

        async def events() -> AsyncIterator[bytes]:
            async with self.occupy():
                yield chunk({"role": "assistant", "content": None})
                pieces: list[dict[str, Any]] = []
                if self.reasoning:
                    pieces.append({"reasoning_content": self.reasoning})
                if call:
                    pieces.append(
                        {
                            "tool_calls": [
                                {
                                    "index": 0,
                                    "id": call["id"],
                                    "type": "function",
                                    "function": {"name": call["function"]["name"], "arguments": ""},
                                }
                            ]
                        }
                    )
                    pieces.append(
                        {"tool_calls": [{"index": 0, "function": {"arguments": call["function"]["arguments"]}}]}
                    )
                else:
                    pieces += [{"content": t} for t in tokens]
                for index, delta in enumerate(pieces):
                    if fault is not None and fault.kind in ("stream_error", "truncate") and index == fault.after:
                        if fault.kind == "stream_error":
                            yield sse({"error": {"code": 500, "message": fault.message, "type": "server_error"}})
                        return
                    await self.pace()
                    yield chunk(delta)
            self._count(prompt_tokens, len(tokens))
            timings = self._timings(prompt_tokens, len(tokens))
            final = {"choices": [{"finish_reason": finish, "index": 0, "delta": {}}], **head}
            if not include_usage:
                final["timings"] = timings
            yield sse(final)
            if include_usage:
                yield sse({"choices": [], **head, "usage": self._usage(prompt_tokens, len(tokens)), "timings": timings})
            yield SSE_END

        return stream_response(events(), SSE, STREAM_HEADERS)

    # -- completions ------------------------------------------------------------------------------------------

    def _prompt(self, body: dict[str, Any]) -> tuple[str, EmuResponse | None]:
        prompt = body.get("prompt")
        if prompt is None:
            return "", error(400, '"prompt" must be provided', "invalid_request_error")
        if isinstance(prompt, list):
            prompt = " ".join(str(p) for p in prompt)
        return str(prompt), None

    @route("POST", "/v1/completions")
    async def completions(self, request: EmuRequest) -> EmuResponse:
        body, problem = self._body(request)
        if problem:
            return problem
        prompt, problem = self._prompt(body)
        if problem:
            return problem
        prompt_tokens = self.prompt_tokens(prompt)
        too_long = self._too_long(prompt_tokens)
        if too_long:
            return too_long
        limit = self._limit(body)
        tokens = self.reply_tokens(prompt, limit)
        finish = "length" if limit is not None and len(tokens) >= limit else "stop"
        ident, created = completion_id(), int(time.time())
        tail = {
            "created": created,
            "model": self.alias,
            "system_fingerprint": self.build_info,
            "object": "text_completion",
            "id": ident,
        }
        if not body.get("stream"):
            async with self.occupy():
                for _ in tokens:
                    await self.pace()
            self._count(prompt_tokens, len(tokens))
            return json_response(
                {
                    "choices": [{"text": "".join(tokens), "index": 0, "logprobs": None, "finish_reason": finish}],
                    "created": created,
                    "model": self.alias,
                    "system_fingerprint": self.build_info,
                    "object": "text_completion",
                    "usage": self._usage(prompt_tokens, len(tokens)),
                    "id": ident,
                    "timings": self._timings(prompt_tokens, len(tokens)),
                }
            )
        first = self._first_result_error(request)
        if first:
            return first
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        fault = request.fault

        async def events() -> AsyncIterator[bytes]:
            async with self.occupy():
                for index, token in enumerate(tokens):
                    if fault is not None and fault.kind in ("stream_error", "truncate") and index == fault.after:
                        if fault.kind == "stream_error":
                            yield sse({"error": {"code": 500, "message": fault.message, "type": "server_error"}})
                        return
                    await self.pace()
                    yield sse(
                        {"choices": [{"text": token, "index": 0, "logprobs": None, "finish_reason": None}], **tail}
                    )
            self._count(prompt_tokens, len(tokens))
            timings = self._timings(prompt_tokens, len(tokens))
            final: dict[str, Any] = {
                "choices": [{"text": "", "index": 0, "logprobs": None, "finish_reason": finish}],
                **tail,
            }
            if not include_usage:
                final["timings"] = timings
            yield sse(final)
            if include_usage:
                yield sse({"choices": [], **tail, "usage": self._usage(prompt_tokens, len(tokens)), "timings": timings})
            yield SSE_END

        return stream_response(events(), SSE, STREAM_HEADERS)

    @route("POST", "/completion", "/completions")
    async def completion(self, request: EmuRequest) -> EmuResponse:
        """The native route: `content`/`stop` objects; the stream ends on `stop: true`, no `[DONE]`."""
        body, problem = self._body(request)
        if problem:
            return problem
        prompt, problem = self._prompt(body)
        if problem:
            return problem
        prompt_tokens = self.prompt_tokens(prompt) + 1
        too_long = self._too_long(prompt_tokens)
        if too_long:
            return too_long
        limit = self._limit(body)
        tokens = self.reply_tokens(prompt, limit)
        stop_type = "limit" if limit is not None and len(tokens) >= limit else "eos"

        def final(slot: int) -> dict[str, Any]:
            return {
                "index": 0,
                "content": "",
                "tokens": [],
                "id_slot": slot,
                "stop": True,
                "model": self.alias,
                "tokens_predicted": len(tokens),
                "tokens_evaluated": prompt_tokens,
                "generation_settings": {
                    "n_predict": -1 if limit is None else limit,
                    "stream": bool(body.get("stream")),
                },
                "prompt": "<bos>" + prompt,
                "has_new_line": False,
                "truncated": False,
                "stop_type": stop_type,
                "stopping_word": "",
                "tokens_cached": prompt_tokens + len(tokens),
                "timings": self._timings(prompt_tokens, len(tokens)),
            }

        if not body.get("stream"):
            async with self.occupy():
                for _ in tokens:
                    await self.pace()
            self._count(prompt_tokens, len(tokens))
            out = final(0)
            out["content"] = "".join(tokens)
            return json_response(out)
        first = self._first_result_error(request)
        if first:
            return first
        fault = request.fault

        async def events() -> AsyncIterator[bytes]:
            async with self.occupy():
                for index, token in enumerate(tokens):
                    if fault is not None and fault.kind in ("stream_error", "truncate") and index == fault.after:
                        if fault.kind == "stream_error":
                            yield sse({"error": {"code": 500, "message": fault.message, "type": "server_error"}})
                        return
                    await self.pace()
                    piece = {
                        "index": 0,
                        "content": token,
                        "tokens": [1000 + index],
                        "stop": False,
                        "id_slot": -1,
                        "tokens_predicted": index + 1,
                        "tokens_evaluated": prompt_tokens,
                    }
                    yield sse(piece)
            self._count(prompt_tokens, len(tokens))
            yield sse(final(0))

        return stream_response(events(), SSE, STREAM_HEADERS)

    # -- embeddings ---------------------------------------------------------------------------------------------

    def _embed_inputs(self, request: EmuRequest, key: str) -> tuple[list[str], EmuResponse | None]:
        if not self.embeddings:
            return [], error(
                501, "This server does not support embeddings. Start it with `--embeddings`", "not_supported_error"
            )
        body, problem = self._body(request)
        if problem:
            return [], problem
        raw = body.get(key, body.get("content"))
        if raw is None:
            return [], error(400, f'"{key}" must be provided', "invalid_request_error")
        return ([raw] if isinstance(raw, str) else [str(r) for r in raw]), None

    @route("POST", "/v1/embeddings")
    async def embeddings_oai(self, request: EmuRequest) -> EmuResponse:
        inputs, problem = self._embed_inputs(request, "input")
        if problem:
            return problem
        if self.pooling == "none":
            return error(
                400,
                "Pooling type 'none' is not OAI compatible. Please use a different pooling type",
                "invalid_request_error",
            )
        async with self.occupy():
            await self.pace()
        dims = self.served_model.dimensions
        tokens = sum(self.prompt_tokens(t) for t in inputs)
        self._count(tokens, 0)
        return json_response(
            {
                "model": self.alias,
                "object": "list",
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                "data": [
                    {"embedding": self.vector(t, dims), "index": i, "object": "embedding"} for i, t in enumerate(inputs)
                ],
            }
        )

    @route("POST", "/embedding", "/embeddings")
    async def embeddings_native(self, request: EmuRequest) -> EmuResponse:
        """The native route: one 2-D `embedding` per input (a single row once pooled)."""
        inputs, problem = self._embed_inputs(request, "content")
        if problem:
            return problem
        async with self.occupy():
            await self.pace()
        dims = self.served_model.dimensions
        self._count(sum(self.prompt_tokens(t) for t in inputs), 0)
        return json_response([{"index": i, "embedding": [self.vector(t, dims)]} for i, t in enumerate(inputs)])


def main() -> None:
    """Serve an emulated llama-server on a loopback port."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--alias", default="gemma-3-270m", help="the model name the server lists and answers under")
    parser.add_argument(
        "--embeddings", action="store_true", help="serve /v1/embeddings, as `llama-server --embeddings`"
    )
    parser.add_argument("--metrics", action="store_true", help="serve /metrics, as `llama-server --metrics`")
    parser.add_argument("-np", "--parallel", type=int, default=4, help="slots")
    parser.add_argument("-c", "--ctx-size", type=int, default=2048, help="context per slot")
    parser.add_argument("--token-delay", type=float, default=0.0)
    args = parser.parse_args()
    model = default_model()
    model.name, model.context_length, model.embedding = args.alias, args.ctx_size, args.embeddings
    import uvicorn

    config = EmulatorConfig(
        models=[model], parallel=args.parallel, token_delay=args.token_delay, name=f"llamacpp@{args.port}"
    )
    app = LlamaCppEmulator(config, metrics=args.metrics, embeddings=args.embeddings)
    asyncio.run(
        uvicorn.Server(
            uvicorn.Config(app, host=args.host, port=args.port, server_header=False, log_level="warning")
        ).serve()
    )


if __name__ == "__main__":
    main()
