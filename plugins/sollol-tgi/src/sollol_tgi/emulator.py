"""An ASGI app that behaves like Hugging Face TGI on the wire, for tests and demos without a GPU.

As `reference/backend-protocols.md` section 5 says: axum's empty 404/405/401 bodies and its
text 415/422 bodies, `/info` in the shape of the chosen TGI version, `/generate` and
`/generate_stream` (SSE written `data:{...}` without a space, `:` keep-alive comments, no
`[DONE]`, errors in band with HTTP 200), the `/v1` routes (every delta repeats the role, `id`
is `""`, `object` comes first, usage only on request, `data:[DONE]`), `{"error", "error_type"}`
errors, 429 beyond `max_concurrent_requests`, `/metrics` without `_total` suffixes.

`tgi_version` changes `/info` (and `/metrics`): before 2.0.3 there is no `router`, before 2.1
the prompt limit is `max_input_length`, before 2.3 the batch fields are listed, before 3.0
there is no `tgi_batch_max_total_tokens`. Run it: `python -m sollol_tgi.emulator --port 3000`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
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
    Receive,
    Scope,
    Send,
    json_response,
    route,
    stream_response,
    text_response,
)

SSE = "text/event-stream"
JSON = "application/json"
DEFAULT_MODEL = "meta-llama/Llama-3.2-1B-Instruct"
DEFAULT_VERSION = "3.3.6"
EOS = {"id": 2, "text": "</s>", "logprob": -0.12, "special": True}
ROUTER = "text-generation-router"

#: Routes `--api-key` protects and `max_concurrent_requests` counts.
GENERATION_ROUTES = ("/", "/generate", "/generate_stream", "/v1/chat/completions", "/v1/completions")


def version_tuple(version: str) -> tuple[int, ...]:
    """ "2.0.3" -> (2, 0, 3); anything after the numbers (`-dev0`) is ignored."""
    parts: list[int] = []
    for piece in version.split("-", 1)[0].split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def error(status: int, message: str, error_type: str) -> EmuResponse:
    """TGI's `ErrorResponse`."""
    return json_response({"error": message, "error_type": error_type}, status, content_type=JSON)


def empty(status: int) -> EmuResponse:
    """An answer with no body and no content type (axum's 401/404/405, the health routes)."""
    return EmuResponse(status=status, body=b"", content_type=None)


def sse(payload: Any) -> bytes:
    """One event as axum writes it: `data:` without a space."""
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data:{data}\n\n".encode()


KEEP_ALIVE = b":\n\n"


class Rejected(Exception):
    """A request TGI would refuse: carries the answer."""

    def __init__(self, response: EmuResponse, message: str = "", error_type: str = "", status: int = 0) -> None:
        super().__init__(message)
        self.response = response
        self.message = message
        self.error_type = error_type
        self.status = status


def validation(message: str) -> Rejected:
    """A 422 validation error."""
    return Rejected(error(422, message, "validation"), message, "validation", 422)


class TGIEmulator(Emulator):
    """TGI, emulated. It serves the first configured model, like TGI serves its one model.

    Knobs: `tgi_version` (the `/info` shape), `max_concurrent_requests` (beyond it: 429, or an
    in-band `overloaded` error on streams), `max_stop_sequences`, `healthy` (False makes
    `/health` answer 503), `keepalive_every` (a `:` comment line every N tokens of a native
    stream, and one before the first). `config.api_key` protects the generation routes.
    """

    generation_paths = ("/generate", "/generate_stream", "/v1/chat/completions", "/v1/completions")

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        *,
        tgi_version: str = DEFAULT_VERSION,
        max_concurrent_requests: int = 128,
        max_stop_sequences: int = 4,
        max_batch_total_tokens: int | None = None,
        healthy: bool = True,
        keepalive_every: int | None = 4,
        **settings: Any,
    ) -> None:
        if config is None and "models" not in settings:
            settings["models"] = [EmulatedModel(name=DEFAULT_MODEL, context_length=4096, family="llama")]
        super().__init__(config, **settings)
        if self.config.version is None:
            self.config.version = tgi_version
        self.max_concurrent_requests = max_concurrent_requests
        self.max_stop_sequences = max_stop_sequences
        self.max_batch_total_tokens = max_batch_total_tokens
        self.healthy = healthy
        self.keepalive_every = keepalive_every
        self.admitted = 0  # generation requests in flight (queued or running)
        self.queued = 0  # waiting for a parallel slot
        self.counts = {"count": 0, "success": 0}
        self.failures: dict[str, int] = {}

    # -- identity -------------------------------------------------------------------------------

    @property
    def version(self) -> str:
        """The TGI version emulated."""
        return self.config.version or DEFAULT_VERSION

    @property
    def served_model(self) -> EmulatedModel:
        """TGI serves one model."""
        return self.config.models[0]

    @property
    def max_total_tokens(self) -> int:
        """The context length."""
        return self.served_model.context_length

    @property
    def max_input_tokens(self) -> int:
        """The prompt limit."""
        return self.max_total_tokens - 1

    @property
    def fingerprint(self) -> str:
        """`system_fingerprint`: version and Docker label, "native" outside Docker."""
        return f"{self.version}-native"

    # -- axum's answers ---------------------------------------------------------------------------

    async def not_found(self, request: EmuRequest) -> EmuResponse:
        """axum: 404 with an empty body."""
        return empty(404)

    async def method_not_allowed(self, request: EmuRequest) -> EmuResponse:
        """axum: 405 with an empty body."""
        return empty(405)

    async def unauthorized(self, request: EmuRequest) -> EmuResponse | None:
        """With `--api-key`, only generation routes need it; 401 has an empty body."""
        key = self.config.api_key
        if not key or request.method != "POST" or request.path not in GENERATION_ROUTES:
            return None
        if request.headers.get("authorization") == f"Bearer {key}":
            return None
        return empty(401)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        counted = scope["type"] == "http" and scope.get("method") == "POST" and scope.get("path") in GENERATION_ROUTES
        if counted:
            self.admitted += 1
        try:
            await super().__call__(scope, receive, send)
        finally:
            if counted:
                self.admitted -= 1

    # -- plain routes -----------------------------------------------------------------------------

    @route("GET", "/", "/health", "/ping")
    async def health(self, request: EmuRequest) -> EmuResponse:
        if not self.healthy:
            return error(503, "unhealthy", "healthcheck")
        return empty(200)

    def info(self) -> dict[str, Any]:
        """`/info` as the emulated version writes it."""
        version = version_tuple(self.version)
        model = self.served_model
        out: dict[str, Any] = {
            "model_id": model.name,
            "model_sha": "0e9e39f249a16976918f6564b8830bc894c89659",
        }
        batch_fields = version < (2, 3)
        if batch_fields:
            out.update({"model_dtype": "torch.float16", "model_device_type": "cuda"})
        out.update(
            {
                "model_pipeline_tag": "text-generation",
                "max_concurrent_requests": self.max_concurrent_requests,
                "max_best_of": 2,
                "max_stop_sequences": self.max_stop_sequences,
            }
        )
        out["max_input_tokens" if version >= (2, 1) else "max_input_length"] = self.max_input_tokens
        out["max_total_tokens"] = self.max_total_tokens
        if batch_fields:
            out.update(
                {
                    "waiting_served_ratio": 1.2,
                    "max_batch_total_tokens": self.batch_budget,
                    "max_waiting_tokens": 20,
                    "max_batch_size": None,
                }
            )
        out.update({"validation_workers": 2, "max_client_batch_size": 4})
        if version >= (2, 0, 3):
            out["router"] = ROUTER
        out.update({"version": self.version, "sha": "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678", "docker_label": None})
        return out

    @property
    def batch_budget(self) -> int:
        """The batch token budget (`max_batch_total_tokens`)."""
        return self.max_batch_total_tokens or self.max_total_tokens * 16

    @route("GET", "/info")
    async def info_route(self, request: EmuRequest) -> EmuResponse:
        return json_response(self.info(), content_type=JSON)

    @route("GET", "/v1/models")
    async def models_route(self, request: EmuRequest) -> EmuResponse:
        name = self.served_model.name
        return json_response(
            {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": name}]},
            content_type=JSON,
        )

    @route("GET", "/metrics")
    async def metrics(self, request: EmuRequest) -> EmuResponse:
        lines = [
            "# TYPE tgi_request_count counter",
            f"tgi_request_count {self.counts['count']}",
            "# TYPE tgi_request_success counter",
            f"tgi_request_success {self.counts['success']}",
        ]
        if self.failures:
            lines.append("# TYPE tgi_request_failure counter")
            lines += [f'tgi_request_failure{{err="{kind}"}} {n}' for kind, n in sorted(self.failures.items())]
        lines += [
            "# TYPE tgi_queue_size gauge",
            f"tgi_queue_size {self.queued}",
            "# TYPE tgi_batch_current_size gauge",
            f"tgi_batch_current_size {self.in_flight}",
            "# TYPE tgi_batch_current_max_tokens gauge",
            f"tgi_batch_current_max_tokens {self.in_flight * self.max_total_tokens}",
        ]
        if version_tuple(self.version) >= (3,):
            lines += ["# TYPE tgi_batch_max_total_tokens gauge", f"tgi_batch_max_total_tokens {self.batch_budget}"]
        lines += [
            "# TYPE tgi_request_duration histogram",
            'tgi_request_duration_bucket{le="0.5"} 0',
            f'tgi_request_duration_bucket{{le="+Inf"}} {self.counts["success"]}',
            f"tgi_request_duration_sum {0.1 * self.counts['success']:.3f}",
            f"tgi_request_duration_count {self.counts['success']}",
        ]
        return text_response("\n".join(lines) + "\n")

    # -- request checks ---------------------------------------------------------------------------

    def _json(self, request: EmuRequest, required: str) -> dict[str, Any]:
        """axum's `Json` extractor: 415 without the content type, 400 bad JSON, 422 bad shape."""
        if not request.headers.get("content-type", "").lower().startswith("application/json"):
            raise Rejected(text_response("Expected request with `Content-Type: application/json`", 415))
        try:
            body = json.loads(request.body)
        except json.JSONDecodeError as exc:
            where = f"at line {exc.lineno} column {exc.colno}"
            raise Rejected(text_response(f"Failed to parse the request body as JSON: {exc.msg} {where}", 400)) from None
        except ValueError as exc:  # undecodable bytes
            raise Rejected(text_response(f"Failed to parse the request body as JSON: {exc}", 400)) from None
        problem = ""
        if not isinstance(body, dict):
            problem = "invalid type: expected a map at line 1 column 1"
        elif required not in body:
            problem = f"missing field `{required}` at line 1 column {len(request.body)}"
        if problem:
            raise Rejected(text_response(f"Failed to deserialize the JSON body into the target type: {problem}", 422))
        return dict(body)

    def _admit(self) -> None:
        if self.admitted > self.max_concurrent_requests:
            raise Rejected(error(429, "Model is overloaded", "overloaded"), "Model is overloaded", "overloaded", 429)

    def _validate(self, inputs: str, params: Mapping[str, Any], *, stream: bool, chat: bool = False) -> int | None:
        """TGI's parameter validation; returns max_new_tokens (None when not given)."""
        temperature = params.get("temperature")
        if temperature is not None and temperature <= 0 and not chat:
            raise validation("`temperature` must be strictly positive")
        if params.get("repetition_penalty") is not None and params["repetition_penalty"] <= 0:
            raise validation("`repetition_penalty` must be strictly positive")
        for key in ("top_p", "typical_p"):
            value = params.get(key)
            if value is not None and not 0.0 < value < 1.0:
                raise validation(f"`{key}` must be > 0.0 and < 1.0")
        if params.get("top_k") is not None and params["top_k"] <= 0:
            raise validation("`top_k` must be strictly positive")
        if stream and (params.get("best_of") or 1) != 1:
            raise validation("`best_of` != 1 is not supported when streaming tokens")
        stop = params.get("stop") or []
        if len(stop) > self.max_stop_sequences:
            raise validation(f"`stop` supports up to {self.max_stop_sequences} stop sequences. Given: {len(stop)}")
        if not inputs:
            raise validation("`inputs` cannot be empty")
        limit = params.get("max_new_tokens", params.get("max_tokens"))
        if limit is not None and limit <= 0:
            raise validation("`max_new_tokens` must be strictly positive")
        tokens = self.prompt_tokens(inputs)
        if tokens > self.max_input_tokens:
            raise validation(f"`inputs` must have less than {self.max_input_tokens} tokens. Given: {tokens}")
        if limit is not None and tokens + limit > self.max_total_tokens:
            given = f"Given: {tokens} `inputs` tokens and {limit} `max_new_tokens`"
            raise validation(f"`inputs` tokens + `max_new_tokens` must be <= {self.max_total_tokens}. {given}")
        return int(limit) if limit is not None else None

    def _fail(self, kind: str) -> None:
        self.failures[kind] = self.failures.get(kind, 0) + 1

    # -- generation -------------------------------------------------------------------------------

    def plan(self, prompt: str, limit: int | None, stop: list[str]) -> tuple[list[str], str]:
        """The reply tokens and TGI's finish reason (`length`, `stop_sequence` or `eos_token`)."""
        tokens = self.reply_tokens(prompt, limit)
        text = ""
        for index, token in enumerate(tokens):
            text += token
            if any(s and s in text for s in stop):
                return tokens[: index + 1], "stop_sequence"
        if limit is not None and len(tokens) >= limit:
            return tokens, "length"
        return tokens, "eos_token"

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Hold a parallel slot, counting the wait as queued and the hold as running."""
        slots = self.slots()
        self.queued += 1
        try:
            await slots.acquire()
        finally:
            self.queued -= 1
        self.enter()
        try:
            await self.work(self.served_model)
            yield
        finally:
            self.leave()
            slots.release()

    def _token(self, index: int, text: str) -> dict[str, Any]:
        return {"id": 1000 + index, "text": text, "logprob": -0.25, "special": False}

    @route("POST", "/generate")
    async def generate(self, request: EmuRequest) -> EmuResponse:
        try:
            body = self._json(request, "inputs")
            return await self._generate(request, body)
        except Rejected as rejected:
            self._fail(rejected.error_type or "validation")
            return rejected.response

    async def _generate(self, request: EmuRequest, body: dict[str, Any], *, as_list: bool = False) -> EmuResponse:
        self.counts["count"] += 1
        self._admit()
        params = body.get("parameters") or {}
        inputs = str(body["inputs"])
        limit = self._validate(inputs, params, stream=False)
        tokens, finish = self.plan(inputs, limit, list(params.get("stop") or []))
        started = time.perf_counter()
        async with self.running():
            for _ in tokens:
                await self.pace()
        generated = len(tokens) + (finish == "eos_token")
        text = "".join(tokens)
        out: dict[str, Any] = {"generated_text": inputs + text if params.get("return_full_text") else text}
        if params.get("details"):
            token_list = [self._token(i, t) for i, t in enumerate(tokens)] + ([EOS] if finish == "eos_token" else [])
            out["details"] = {
                "finish_reason": finish,
                "generated_tokens": generated,
                "seed": params.get("seed"),
                "prefill": [],
                "tokens": token_list,
            }
        self.counts["success"] += 1
        elapsed = int((time.perf_counter() - started) * 1000)
        headers = [
            ("x-compute-type", "gpu+optimized"),
            ("x-compute-time", f"{elapsed / 1000:.3f}"),
            ("x-compute-characters", str(len(inputs))),
            ("x-total-time", str(elapsed)),
            ("x-validation-time", "0"),
            ("x-queue-time", "0"),
            ("x-inference-time", str(elapsed)),
            ("x-time-per-token", str(elapsed // max(generated, 1))),
            ("x-prompt-tokens", str(self.prompt_tokens(inputs))),
            ("x-generated-tokens", str(generated)),
        ]
        return json_response([out] if as_list else out, content_type=JSON, headers=headers)

    @route("POST", "/generate_stream")
    async def generate_stream(self, request: EmuRequest) -> EmuResponse:
        try:
            body = self._json(request, "inputs")
        except Rejected as rejected:
            return rejected.response
        return self._generate_stream(request, body)

    def _generate_stream(self, request: EmuRequest, body: dict[str, Any]) -> EmuResponse:
        params = body.get("parameters") or {}
        inputs = str(body["inputs"])
        fault = request.fault
        self.counts["count"] += 1

        async def events() -> AsyncIterator[bytes]:
            # Validation and overload errors are events too: the 200 went out first.
            try:
                self._admit()
                limit = self._validate(inputs, params, stream=True)
            except Rejected as rejected:
                self._fail(rejected.error_type)
                yield sse({"error": rejected.message, "error_type": rejected.error_type})
                return
            tokens, finish = self.plan(inputs, limit, list(params.get("stop") or []))
            async with self.running():
                yield KEEP_ALIVE
                shown = [*tokens, None] if finish == "eos_token" else tokens
                for index, token in enumerate(shown):
                    if fault is not None and fault.kind in ("stream_error", "truncate") and index == fault.after:
                        if fault.kind == "stream_error":
                            self._fail("generation")
                            yield sse({"error": fault.message, "error_type": "generation"})
                        return
                    if self.keepalive_every and index and index % self.keepalive_every == 0:
                        yield KEEP_ALIVE
                    await self.pace()
                    last = index == len(shown) - 1
                    event: dict[str, Any] = {
                        "index": index + 1,
                        "token": dict(EOS) if token is None else self._token(index, token),
                        "generated_text": None,
                        "details": None,
                    }
                    if last:
                        event["generated_text"] = (
                            inputs + "".join(tokens) if params.get("return_full_text") else "".join(tokens)
                        )
                        if params.get("details"):
                            event["details"] = {
                                "finish_reason": finish,
                                "generated_tokens": len(shown),
                                "seed": params.get("seed"),
                                "input_length": self.prompt_tokens(inputs),
                            }
                    yield sse(event)
            self.counts["success"] += 1

        return stream_response(
            events(), SSE, headers=[("x-accel-buffering", "no"), ("x-compute-type", "gpu+optimized")]
        )

    @route("POST", "/")
    async def compat(self, request: EmuRequest) -> EmuResponse:
        """The compat route: `stream` picks the stream; otherwise a JSON array."""
        try:
            body = self._json(request, "inputs")
            if body.get("stream"):
                return self._generate_stream(request, body)
            return await self._generate(request, body, as_list=True)
        except Rejected as rejected:
            return rejected.response

    # -- the /v1 routes -----------------------------------------------------------------------------

    def _served_name(self, body: Mapping[str, Any]) -> str:
        """`model` is "UNUSED": absent or "tgi" gives the model id, anything else is echoed."""
        model = body.get("model")
        return self.served_model.name if not model or model == "tgi" else str(model)

    @staticmethod
    def _openai_finish(finish: str) -> str:
        return "stop" if finish == "eos_token" else finish

    @route("POST", "/v1/chat/completions")
    async def chat(self, request: EmuRequest) -> EmuResponse:
        try:
            body = self._json(request, "messages")
        except Rejected as rejected:
            return rejected.response
        messages = body.get("messages") or []
        prompt = ""
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                content = message.get("content")
                if isinstance(content, list):
                    content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
                prompt = str(content or "")
                break
        tools = body.get("tools") if body.get("tool_choice") != "none" else None
        return await self._openai(request, body, prompt or "(empty)", "chat", tools)

    @route("POST", "/v1/completions")
    async def completions(self, request: EmuRequest) -> EmuResponse:
        try:
            body = self._json(request, "prompt")
        except Rejected as rejected:
            return rejected.response
        if body.get("suffix") is not None:
            return error(
                422, "Suffix is not supported and can be achieved by preprocessing the prompt.", "suffix not supported"
            )
        prompt = body["prompt"]
        if isinstance(prompt, list):
            prompt = prompt[0] if prompt else ""
        return await self._openai(request, body, str(prompt), "completion", None)

    async def _openai(
        self, request: EmuRequest, body: dict[str, Any], prompt: str, kind: str, tools: Any
    ) -> EmuResponse:
        created = int(time.time())
        name = self._served_name(body)
        stream = bool(body.get("stream"))
        self.counts["count"] += 1
        try:
            raw_stop = body.get("stop") or []
            stop: list[str] = [raw_stop] if isinstance(raw_stop, str) else [str(s) for s in raw_stop]
            params: dict[str, Any] = {
                k: body.get(k) for k in ("temperature", "top_p", "max_tokens") if body.get(k) is not None
            }
            params["stop"] = stop
            if not stream:
                self._admit()
            limit = self._validate(prompt, params, stream=False, chat=True)
        except Rejected as rejected:
            self._fail(rejected.error_type)
            if stream and rejected.status:
                return self._openai_error_stream(rejected.message, rejected.status)
            return rejected.response
        tokens, finish = self.plan(prompt, limit, stop)
        usage = {
            "prompt_tokens": self.prompt_tokens(prompt),
            "completion_tokens": len(tokens),
            "total_tokens": self.prompt_tokens(prompt) + len(tokens),
        }
        head = {
            "object": "chat.completion" if kind == "chat" else "text_completion",
            "id": "",
            "created": created,
            "model": name,
            "system_fingerprint": self.fingerprint,
        }
        call = None
        if tools and isinstance(tools, list) and isinstance(tools[0], dict):
            function = tools[0].get("function") or {}
            call = {
                "id": "0",
                "type": "function",
                "function": {"name": function.get("name", "tool"), "arguments": json.dumps({"query": prompt})},
            }
        if not stream:
            async with self.running():
                for _ in tokens:
                    await self.pace()
            self.counts["success"] += 1
            choice: dict[str, Any] = {"index": 0}
            if kind == "chat":
                message: dict[str, Any] = {"role": "assistant"}
                if call is not None:
                    message["tool_calls"] = [call]
                else:
                    message["content"] = "".join(tokens)
                choice["message"] = message
            else:
                choice["text"] = "".join(tokens)
            choice.update({"logprobs": None, "finish_reason": self._openai_finish(finish)})
            return json_response({**head, "choices": [choice], "usage": usage}, content_type=JSON)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return stream_response(
            self._openai_stream(request.fault, head, kind, tokens, finish, usage, include_usage, call), SSE
        )

    def _openai_error_stream(self, message: str, status: int) -> EmuResponse:
        async def events() -> AsyncIterator[bytes]:
            yield sse({"error": {"message": message, "http_status_code": status}})
            yield sse("[DONE]")

        return stream_response(events(), SSE)

    async def _openai_stream(
        self,
        fault: Fault | None,
        head: dict[str, Any],
        kind: str,
        tokens: list[str],
        finish: str,
        usage: dict[str, Any],
        include_usage: bool,
        call: dict[str, Any] | None,
    ) -> AsyncIterator[bytes]:
        chunk_head = {**head, "object": "chat.completion.chunk" if kind == "chat" else "text_completion"}
        if self.admitted > self.max_concurrent_requests:
            self._fail("overloaded")
            yield sse({"error": {"message": "Model is overloaded", "http_status_code": 429}})
            yield sse("[DONE]")
            return

        def chunk(text: str, finish_reason: str | None, index: int) -> dict[str, Any]:
            choice: dict[str, Any] = {"index": 0}
            if kind == "chat":
                if call is not None:
                    fragment = {
                        "index": 0,
                        "id": call["id"] if index == 0 else "",
                        "type": "function",
                        "function": {"name": call["function"]["name"] if index == 0 else None, "arguments": text},
                    }
                    choice["delta"] = {"role": "assistant", "tool_calls": [fragment]}
                else:
                    choice["delta"] = {"role": "assistant", "content": text}
            else:
                choice["text"] = text
            choice.update({"logprobs": None, "finish_reason": finish_reason})
            out = {**chunk_head, "choices": [choice]}
            if kind == "chat":
                out["usage"] = None
            return out

        pieces: list[str] = list(tokens)
        if call is not None:
            arguments = call["function"]["arguments"]
            pieces = [arguments[i : i + 8] for i in range(0, len(arguments), 8)]
        if finish == "eos_token":
            pieces.append("")  # the EOS token: an empty delta that carries the finish reason
        async with self.running():
            for index, piece in enumerate(pieces):
                if fault is not None and fault.kind in ("stream_error", "truncate") and index == fault.after:
                    if fault.kind == "stream_error":
                        self._fail("generation")
                        yield sse({"error": {"message": fault.message, "http_status_code": 424}})
                        yield sse("[DONE]")
                    return
                await self.pace()
                last = index == len(pieces) - 1
                yield sse(chunk(piece, self._openai_finish(finish) if last else None, index))
        if include_usage:
            yield sse({**chunk_head, "choices": [], "usage": usage})
        self.counts["success"] += 1
        yield sse("[DONE]")


def main() -> None:
    """Serve an emulated TGI on a loopback port."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3000)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--tgi-version", default=DEFAULT_VERSION)
    parser.add_argument("--token-delay", type=float, default=0.0)
    parser.add_argument("--api-key", default=None)
    args = parser.parse_args()
    import uvicorn

    config = EmulatorConfig(
        models=[EmulatedModel(name=args.model)],
        token_delay=args.token_delay,
        name=f"tgi@{args.port}",
        api_key=args.api_key,
    )
    app = TGIEmulator(config, tgi_version=args.tgi_version)
    asyncio.run(
        uvicorn.Server(
            uvicorn.Config(app, host=args.host, port=args.port, server_header=False, log_level="warning")
        ).serve()
    )


if __name__ == "__main__":
    main()
