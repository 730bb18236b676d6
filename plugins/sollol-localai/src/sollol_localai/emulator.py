"""An ASGI app that behaves like LocalAI on the wire, for tests and demos without a GPU.

Health routes with Echo's empty bodies (or Fiber's "OK" before v3.8), `/version` as
"v4.9.0 (commit)", `/system`, `/backend/monitor` with numeric states, the discovery
document, `/v1/*` with LocalAI's error envelope and stream shape, the `Resource not found`
404, API keys, and the Ollama-compatible `/api/*` surface of v4.2 and later: as
`reference/backend-protocols.md` section 7 says. Defaults follow `version`; every knob can
be set on its own. Run it: `python -m sollol_localai.emulator --port 8080`.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import re
import time
import uuid
from collections.abc import AsyncIterator
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

JSON = "application/json"
SSE = "text/event-stream"
NDJSON = "application/x-ndjson"
OLLAMA_COMPAT_VERSION = "0.9.0"
DEFAULT_VERSION = "v4.9.0 (82c191afadf5e0f2ab3c8f3d4b6f1e2a9c7d5b3e)"
OPENAI_GENERATION = (
    "/v1/chat/completions",
    "/chat/completions",
    "/v1/completions",
    "/completions",
    "/v1/embeddings",
    "/embeddings",
)
OLLAMA_GENERATION = ("/api/chat", "/api/generate", "/api/embed", "/api/embeddings")
#: Routes LocalAI keeps open when API keys are configured.
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/.well-known/localai.json", "/api/instructions", "/"})
OLLAMA_PATHS = frozenset({*OLLAMA_GENERATION, "/api/tags", "/api/ps", "/api/show", "/api/version"})
HISTOGRAM_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)


def parse_version(text: str) -> tuple[int, int, int]:
    """(major, minor, patch) of "v4.9.0 (commit)"; a version it cannot read counts as new."""
    match = re.match(r"\s*v?(\d+)\.(\d+)(?:\.(\d+))?", text)
    if not match:
        return (99, 0, 0)
    return (int(match[1]), int(match[2]), int(match[3] or 0))


def error(status: int, message: str, code: int | str | None = None, kind: str = "") -> EmuResponse:
    """LocalAI's error envelope; `type` is not omitempty, so it is often ""."""
    return json_response(
        {"error": {"code": status if code is None else code, "message": message, "type": kind}}, status, JSON
    )


def ollama_error(status: int, message: str) -> EmuResponse:
    """The Ollama-compatible routes' error shape."""
    return json_response({"error": message}, status, JSON)


def sse(obj: Any) -> bytes:
    """One server-sent event with a JSON payload."""
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def go_time() -> str:
    """The time now as Go's JSON encoder writes a UTC time.Time."""
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int((t % 1) * 1e9):09d}Z"


class LocalAIEmulator(Emulator):
    """LocalAI, emulated.

    Knobs (None means "as the version has it"): `framework` "echo" (>= v3.8) or "fiber";
    `ollama_api` the `/api/*` routes (>= v4.2); `ollama_root` "Ollama is running" at `/`
    (LOCALAI_OLLAMA_API_ROOT_ENDPOINT); `well_known` the discovery document (>= v4.1.1);
    `starting` `/readyz` answers 503 starting (>= v4.8 during preload); `system_backend`
    `/system` entries carry `backend`; `opaque_errors` (LOCALAI_OPAQUE_ERRORS) errors have
    no body; `metrics` `/metrics` is served. The API key is `config.api_key`.
    """

    generation_paths = OPENAI_GENERATION + OLLAMA_GENERATION

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        *,
        framework: str | None = None,
        ollama_api: bool | None = None,
        ollama_root: bool = False,
        well_known: bool | None = None,
        starting: bool = False,
        system_backend: bool = True,
        opaque_errors: bool = False,
        metrics: bool = True,
        **settings: Any,
    ) -> None:
        super().__init__(config, **settings)
        if self.config.version is None:
            self.config.version = DEFAULT_VERSION
        release = parse_version(self.config.version)
        self.framework = framework or ("echo" if release >= (3, 8, 0) else "fiber")
        if self.framework not in ("echo", "fiber"):
            raise ValueError(f"framework must be 'echo' or 'fiber', not {self.framework!r}")
        self.ollama_api = release >= (4, 2, 0) if ollama_api is None else ollama_api
        self.ollama_root = ollama_root
        self.well_known = release >= (4, 1, 1) if well_known is None else well_known
        self.starting = starting
        self.system_backend = system_backend
        self.opaque_errors = opaque_errors
        self.metrics_enabled = metrics
        #: Every chunk carries usage, and the last one whether asked or not (before v4.2.5).
        self.legacy_usage = release < (4, 2, 5)
        self.busy: dict[str, int] = {}
        self._calls: dict[tuple[str, str], list[float]] = {}

    # -- framework behaviour ---------------------------------------------------------------------

    async def not_found(self, request: EmuRequest) -> EmuResponse:
        if "text/html" in request.headers.get("accept", ""):
            return text_response("<!doctype html><html><body>LocalAI</body></html>", 200, "text/html; charset=utf-8")
        return error(404, "Resource not found")

    async def method_not_allowed(self, request: EmuRequest) -> EmuResponse:
        return error(405, "Method Not Allowed")

    async def unauthorized(self, request: EmuRequest) -> EmuResponse | None:
        key = self.config.api_key
        if not key or request.path in PUBLIC_PATHS:
            return None
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if key in (given, request.headers.get("x-api-key"), request.headers.get("xi-api-key")):
            return None
        return error(401, "An authentication key is required", kind="invalid_request_error")

    async def _dispatch(self, request: EmuRequest) -> EmuResponse:
        if request.path in OLLAMA_PATHS and not self.ollama_api:
            return await self._finish(request, await self.not_found(request))
        if request.path == "/" and not self.ollama_root:
            return await self._finish(
                request,
                text_response("<!doctype html><html><body>LocalAI</body></html>", 200, "text/html; charset=utf-8"),
            )
        started = time.perf_counter()
        response = await super()._dispatch(request)
        self._calls.setdefault((request.method, request.path), []).append(time.perf_counter() - started)
        return await self._finish(request, response)

    async def _finish(self, request: EmuRequest, response: EmuResponse) -> EmuResponse:
        if self.opaque_errors and response.status >= 400 and response.stream is None:
            return EmuResponse(status=response.status, body=b"", content_type=None, headers=response.headers)
        return response

    def _health(self) -> EmuResponse:
        if self.framework == "fiber":
            return text_response("OK")
        return EmuResponse(status=200, body=b"", content_type=None)

    # -- plain routes ------------------------------------------------------------------------------

    @route("GET", "/healthz")
    async def healthz(self, request: EmuRequest) -> EmuResponse:
        return self._health()

    @route("GET", "/readyz")
    async def readyz(self, request: EmuRequest) -> EmuResponse:
        if self.starting:
            return json_response({"status": "starting", "reason": "startup preload in progress"}, 503, JSON)
        return self._health()

    @route("GET", "/version")
    async def version(self, request: EmuRequest) -> EmuResponse:
        return json_response({"version": self.config.version}, 200, JSON)

    @route("GET", "/system")
    async def system(self, request: EmuRequest) -> EmuResponse:
        loaded = []
        for model in self.config.models:
            if model.loaded:
                entry = {"id": model.name}
                if self.system_backend:
                    entry["backend"] = "llama-cpp"
                loaded.append(entry)
        return json_response({"backends": ["llama-cpp", "whisper", "piper"], "loaded_models": loaded}, 200, JSON)

    @route("GET", "/backend/monitor", "/v1/backend/monitor")
    async def monitor(self, request: EmuRequest) -> EmuResponse:
        name = request.query.get("model")
        if not name and request.body:
            try:
                name = str(request.json().get("model") or "")
            except (ValueError, AttributeError):
                name = ""
        if not name:
            return error(400, "model is required")
        model = self.model(name)
        if model is None or not model.loaded:
            return error(500, f"backend {name} is not currently loaded")
        state = 1 if self.busy.get(model.name) else 2
        return json_response(
            {"state": state, "memory": {"total": model.size, "breakdown": {"gpu": model.size}}}, 200, JSON
        )

    @route("GET", "/.well-known/localai.json")
    async def discovery(self, request: EmuRequest) -> EmuResponse:
        if not self.well_known:
            return await self.not_found(request)
        groups = {
            "openai": ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models"],
            "localai": ["/system", "/version", "/backend/monitor", "/metrics"],
        }
        if self.ollama_api:
            groups["ollama"] = sorted(OLLAMA_PATHS)
        endpoints = {path: path for paths in groups.values() for path in paths}
        return json_response(
            {"version": self.config.version, "endpoints": endpoints, "endpoint_groups": groups}, 200, JSON
        )

    @route("GET", "/metrics")
    async def metrics(self, request: EmuRequest) -> EmuResponse:
        if not self.metrics_enabled:
            return await self.not_found(request)
        scope = 'otel_scope_name="github.com/mudler/LocalAI",otel_scope_version=""'
        lines = ["# HELP api_call api call", "# TYPE api_call histogram"]
        for (method, path), seconds in sorted(self._calls.items()):
            labels = f'method="{method}",path="{path}",{scope}'
            for bound in HISTOGRAM_BUCKETS:
                lines.append(f'api_call_bucket{{{labels},le="{bound:g}"}} {sum(1 for s in seconds if s <= bound)}')
            lines.append(f'api_call_bucket{{{labels},le="+Inf"}} {len(seconds)}')
            lines.append(f"api_call_sum{{{labels}}} {sum(seconds):.9g}")
            lines.append(f"api_call_count{{{labels}}} {len(seconds)}")
        lines += [
            "# HELP target_info Target metadata",
            "# TYPE target_info gauge",
            'target_info{service_name="LocalAI"} 1',
        ]
        return text_response("\n".join(lines) + "\n", 200, "text/plain; version=0.0.4; charset=utf-8")

    @route("GET", "/v1/models", "/models")
    async def models(self, request: EmuRequest) -> EmuResponse:
        return json_response(
            {"object": "list", "data": [{"id": m.name, "object": "model"} for m in self.config.models]}, 200, JSON
        )

    @route("GET", "/")
    async def root(self, request: EmuRequest) -> EmuResponse:
        return text_response("Ollama is running")

    # -- shared helpers ----------------------------------------------------------------------------

    def _body(self, request: EmuRequest, ollama: bool = False) -> tuple[dict[str, Any], EmuResponse | None]:
        fail = ollama_error if ollama else error
        try:
            body = json.loads(request.body) if request.body else {}
        except ValueError as exc:  # JSONDecodeError, or UnicodeDecodeError for bytes that are not UTF-8
            detail = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
            return {}, fail(400, f"failed parsing request body: {detail}")
        if not isinstance(body, dict):
            return {}, fail(400, "failed parsing request body: expected an object")
        return body, None

    def _pick(
        self, name: Any, embedding: bool, ollama: bool = False
    ) -> tuple[EmulatedModel | None, EmuResponse | None]:
        if not name:
            found = next((m for m in self.config.models if m.embedding == embedding), None)
            if found is None:
                return None, (
                    ollama_error(400, "model is required")
                    if ollama
                    else error(400, "no model specified and no default model available", kind="invalid_request_error")
                )
            return found, None
        model = self.model(str(name))
        if model is None:
            if ollama:
                return None, ollama_error(404, f"model '{name}' not found")
            message = f'model "{name}" not found. To see available models, call GET /v1/models'
            return None, error(404, message, kind="invalid_request_error")
        if model.embedding != embedding:
            what = "embeddings" if embedding else "text generation"
            message = f"rpc error: code = Unimplemented desc = model {model.name} does not support {what}"
            return None, (ollama_error(500, message) if ollama else error(500, message, kind="server_error"))
        return model, None

    async def _run(self, model: EmulatedModel, tokens: list[str]) -> None:
        """Do a non-streamed generation's work: a slot, the load, the tokens' time."""
        async with self.slots():
            self._enter(model)
            try:
                await self.work(model)
                for _ in tokens:
                    await self.pace()
            finally:
                self._leave(model)

    def _enter(self, model: EmulatedModel) -> None:
        self.enter()
        self.busy[model.name] = self.busy.get(model.name, 0) + 1

    def _leave(self, model: EmulatedModel) -> None:
        self.leave()
        self.busy[model.name] -= 1

    @staticmethod
    def _limit(body: dict[str, Any]) -> int | None:
        for key in ("max_tokens", "max_completion_tokens"):
            if isinstance(body.get(key), int) and not isinstance(body.get(key), bool):
                return int(body[key])
        return None

    # -- OpenAI routes -----------------------------------------------------------------------------

    @route("POST", "/v1/chat/completions", "/chat/completions")
    async def chat(self, request: EmuRequest) -> EmuResponse:
        body, problem = self._body(request)
        if problem:
            return problem
        model, problem = self._pick(body.get("model"), embedding=False)
        if problem:
            return problem
        assert model is not None
        messages = body.get("messages")
        if not isinstance(messages, list):
            return error(400, "messages is required", kind="invalid_request_error")
        prompt = next(
            (str(m.get("content", "")) for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "user"),
            "",
        )
        return await self._openai(request, body, model, prompt, "chat")

    @route("POST", "/v1/completions", "/completions")
    async def completions(self, request: EmuRequest) -> EmuResponse:
        body, problem = self._body(request)
        if problem:
            return problem
        model, problem = self._pick(body.get("model"), embedding=False)
        if problem:
            return problem
        assert model is not None
        prompt = body.get("prompt", "")
        if isinstance(prompt, list):
            prompt = " ".join(str(p) for p in prompt)
        return await self._openai(request, body, model, str(prompt), "completion")

    async def _openai(
        self, request: EmuRequest, body: dict[str, Any], model: EmulatedModel, prompt: str, kind: str
    ) -> EmuResponse:
        limit = self._limit(body)
        tokens = self.reply_tokens(prompt, limit)
        finish = "length" if limit is not None and len(tokens) >= limit else "stop"
        name = str(body.get("model") or model.name)
        object_name = "chat.completion" if kind == "chat" else "text_completion"
        rid = str(uuid.uuid4())
        created = int(time.time())
        usage = {
            "prompt_tokens": self.prompt_tokens(prompt),
            "completion_tokens": len(tokens),
            "total_tokens": self.prompt_tokens(prompt) + len(tokens),
        }
        zero_usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}

        def head(obj: str) -> dict[str, Any]:
            return {"created": created, "object": obj, "id": rid, "model": name}

        if not body.get("stream"):
            await self._run(model, tokens)
            text = "".join(tokens)
            choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
            if kind == "chat":
                choice["message"] = {"role": "assistant", "content": text}
            else:
                choice["text"] = text
            return json_response({**head(object_name), "choices": [choice], "usage": usage}, 200, JSON)

        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        chunk_object = "chat.completion.chunk" if kind == "chat" else "text_completion"
        fault = request.fault

        def chunk(
            delta: dict[str, Any] | None, text: str | None, reason: str | None, final: bool = False
        ) -> dict[str, Any]:
            choice: dict[str, Any] = {"index": 0, "finish_reason": reason}
            if kind == "chat":
                choice["delta"] = delta or {}
            else:
                choice["text"] = text or ""
            out = {**head(chunk_object), "choices": [choice]}
            if self.legacy_usage:
                out["usage"] = usage if final else zero_usage
            return out

        async def events() -> AsyncIterator[bytes]:
            async with self.slots():
                self._enter(model)
                try:
                    await self.work(model)
                    if kind == "chat":
                        yield sse(chunk({"role": "assistant", "content": ""}, None, None))
                    for index, token in enumerate(tokens):
                        if fault is not None and fault.kind in ("stream_error", "truncate") and index == fault.after:
                            if fault.kind == "stream_error":
                                yield sse(
                                    {
                                        "error": {
                                            "code": "server_error",
                                            "message": fault.message,
                                            "type": "server_error",
                                        }
                                    }
                                )
                                yield b"data: [DONE]\n\n"
                            return
                        await self.pace()
                        yield sse(chunk({"content": token}, token, None))
                    yield sse(chunk({}, "", finish, final=True))
                    if include_usage and not self.legacy_usage:
                        yield sse(
                            {
                                "id": rid,
                                "created": created,
                                "model": name,
                                "object": chunk_object,
                                "choices": [],
                                "usage": usage,
                            }
                        )
                    yield b"data: [DONE]\n\n"
                finally:
                    self._leave(model)

        return stream_response(events(), SSE)

    @route("POST", "/v1/embeddings", "/embeddings")
    async def embeddings(self, request: EmuRequest) -> EmuResponse:
        body, problem = self._body(request)
        if problem:
            return problem
        model, problem = self._pick(body.get("model"), embedding=True)
        if problem:
            return problem
        assert model is not None
        raw = body.get("input", [])
        inputs = [raw] if isinstance(raw, str) else list(raw) if isinstance(raw, list) else []
        if not inputs:
            return error(400, "input is required", kind="invalid_request_error")
        await self._run(model, [])
        data = [
            {"embedding": self.vector(str(text), model.dimensions), "index": i, "object": "embedding"}
            for i, text in enumerate(inputs)
        ]
        tokens = sum(self.prompt_tokens(str(t)) for t in inputs)
        out = {
            "created": int(time.time()),
            "object": "list",
            "id": str(uuid.uuid4()),
            "model": str(body.get("model") or model.name),
            "data": data,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return json_response(out, 200, JSON)

    # -- Ollama-compatible routes (>= v4.2) --------------------------------------------------------

    @route("GET", "/api/version")
    async def ollama_version(self, request: EmuRequest) -> EmuResponse:
        return json_response({"version": OLLAMA_COMPAT_VERSION}, 200, JSON)

    def _ollama_entry(self, model: EmulatedModel) -> dict[str, Any]:
        tagged = model.name if ":" in model.name else f"{model.name}:latest"
        return {
            "name": tagged,
            "model": tagged,
            "size": 0,
            "digest": "sha256:" + hashlib.sha256(model.name.encode()).hexdigest(),
            "details": {
                "format": "gguf",
                "family": "llama-cpp",
                "families": ["llama-cpp"],
                "parameter_size": model.parameter_size,
                "quantization_level": model.quantization,
            },
        }

    @route("GET", "/api/tags")
    async def ollama_tags(self, request: EmuRequest) -> EmuResponse:
        entries = [{**self._ollama_entry(m), "modified_at": go_time()} for m in self.config.models]
        return json_response({"models": entries or None}, 200, JSON)

    @route("GET", "/api/ps")
    async def ollama_ps(self, request: EmuRequest) -> EmuResponse:
        expires = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() + 86400)) + ".000000000Z"
        entries = [
            {**self._ollama_entry(m), "size_vram": 0, "expires_at": expires} for m in self.config.models if m.loaded
        ]
        return json_response({"models": entries or None}, 200, JSON)

    @route("POST", "/api/show")
    async def ollama_show(self, request: EmuRequest) -> EmuResponse:
        body, problem = self._body(request, ollama=True)
        if problem:
            return problem
        name = body.get("name") or body.get("model")
        if not name:
            return ollama_error(400, "name is required")
        model = self.model(str(name))
        if model is None:
            return ollama_error(404, f"model '{name}' not found")
        caps = ["embedding"] if model.embedding else ["completion"]
        return json_response(
            {
                "modelfile": f"FROM {model.name}",
                "parameters": "",
                "template": "",
                "details": self._ollama_entry(model)["details"],
                "model_info": {"general.architecture": "llama-cpp", "general.context_length": model.context_length},
                "capabilities": caps,
            },
            200,
            JSON,
        )

    @route("POST", "/api/chat", "/api/generate")
    async def ollama_generate(self, request: EmuRequest) -> EmuResponse:
        body, problem = self._body(request, ollama=True)
        if problem:
            return problem
        if not body.get("model"):
            return ollama_error(400, "model is required")
        model, problem = self._pick(body["model"], embedding=False, ollama=True)
        if problem:
            return problem
        assert model is not None
        chat = request.path == "/api/chat"
        if chat:
            messages = body.get("messages") or []
            prompt = next(
                (
                    str(m.get("content", ""))
                    for m in reversed(messages)
                    if isinstance(m, dict) and m.get("role") == "user"
                ),
                "",
            )
        else:
            prompt = str(body.get("prompt", ""))
        options = body.get("options")
        limit = options.get("num_predict") if isinstance(options, dict) else None
        tokens = self.reply_tokens(prompt, limit if isinstance(limit, int) else None)
        name = str(body["model"])
        started = time.perf_counter()
        fault = request.fault

        def line(text: str, done: bool, reason: str | None = None, counts: bool = False) -> bytes:
            out: dict[str, Any] = {"model": name, "created_at": go_time()}
            if chat:
                out["message"] = {"role": "assistant" if reason != "error" else "", "content": text}
            else:
                out["response"] = text
            out["done"] = done
            if reason:
                out["done_reason"] = reason
            if counts:
                out.update(
                    {
                        "total_duration": int((time.perf_counter() - started) * 1e9) or 1,
                        "prompt_eval_count": self.prompt_tokens(prompt),
                        "eval_count": len(tokens),
                    }
                )
            return json.dumps(out, separators=(",", ":")).encode() + b"\n"

        if body.get("stream", True) is False:
            await self._run(model, tokens)
            return EmuResponse(
                status=200, body=line("".join(tokens), True, "stop", counts=True).rstrip(b"\n"), content_type=JSON
            )

        async def lines() -> AsyncIterator[bytes]:
            async with self.slots():
                self._enter(model)
                try:
                    await self.work(model)
                    for index, token in enumerate(tokens):
                        if fault is not None and fault.kind in ("stream_error", "truncate") and index == fault.after:
                            if fault.kind == "stream_error":
                                yield line("", True, "error")
                            return
                        await self.pace()
                        yield line(token, False)
                    yield line("", True, "stop", counts=True)
                finally:
                    self._leave(model)

        return stream_response(lines(), NDJSON)

    @route("POST", "/api/embed", "/api/embeddings")
    async def ollama_embed(self, request: EmuRequest) -> EmuResponse:
        body, problem = self._body(request, ollama=True)
        if problem:
            return problem
        model, problem = self._pick(body.get("model"), embedding=True, ollama=True)
        if problem:
            return problem
        assert model is not None
        await self._run(model, [])
        if request.path == "/api/embeddings":
            prompt = body.get("prompt", "")
            return json_response({"embedding": self.vector(str(prompt), model.dimensions)}, 200, JSON)
        raw = body.get("input", [])
        inputs = [raw] if isinstance(raw, str) else list(raw) if isinstance(raw, list) else []
        return json_response(
            {"model": str(body.get("model")), "embeddings": [self.vector(str(t), model.dimensions) for t in inputs]},
            200,
            JSON,
        )


def main() -> None:
    """Serve an emulated LocalAI on a loopback port."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument(
        "--model", action="append", default=[], help="model name (repeatable); prefix 'embed:' for an embedding model"
    )
    parser.add_argument("--version", default=DEFAULT_VERSION)
    parser.add_argument("--api-key", default=None)
    parser.add_argument(
        "--ollama-root", action="store_true", help="answer 'Ollama is running' at / (LOCALAI_OLLAMA_API_ROOT_ENDPOINT)"
    )
    parser.add_argument("--token-delay", type=float, default=0.0)
    args = parser.parse_args()
    models = [EmulatedModel(name=m.removeprefix("embed:"), embedding=m.startswith("embed:")) for m in args.model] or [
        EmulatedModel(name="qwen2.5-7b-instruct"),
        EmulatedModel(name="text-embedding-ada-002", embedding=True),
    ]
    import uvicorn

    config = EmulatorConfig(
        models=models,
        version=args.version,
        api_key=args.api_key,
        token_delay=args.token_delay,
        name=f"localai@{args.port}",
    )
    app = LocalAIEmulator(config, ollama_root=args.ollama_root)
    asyncio.run(
        uvicorn.Server(
            uvicorn.Config(app, host=args.host, port=args.port, server_header=False, log_level="warning")
        ).serve()
    )


if __name__ == "__main__":
    main()
