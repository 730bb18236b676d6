"""An ASGI app that behaves like Ollama on the wire, for tests and demos without a GPU.

Routes, content types, gin's `404 page not found` text, `{"error": "..."}` errors, NDJSON
streams, counters left out when zero: as `reference/backend-protocols.md` section 3 says.
Run it: `python -m sollol_ollama.emulator --port 11434`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from sollol.testing.emulator import (
    EmulatedModel,
    Emulator,
    EmulatorConfig,
    EmuRequest,
    EmuResponse,
    json_response,
    now_rfc3339,
    route,
    stream_response,
    text_response,
)

NDJSON = "application/x-ndjson"


def error(status: int, message: str) -> EmuResponse:
    """Ollama's error shape."""
    return json_response({"error": message}, status)


class OllamaEmulator(Emulator):
    """Ollama, emulated. `legacy=True` removes `/api/embed` as on servers before 0.3.0."""

    generation_paths = ("/api/chat", "/api/generate", "/api/embed", "/api/embeddings")

    def __init__(self, config: EmulatorConfig | None = None, *, legacy: bool = False, **settings: Any) -> None:
        super().__init__(config, **settings)
        self.legacy = legacy
        if self.config.version is None:
            self.config.version = "0.12.6"

    # -- plain routes ---------------------------------------------------------------------------

    @route("GET", "/")
    async def root(self, request: EmuRequest) -> EmuResponse:
        return text_response("Ollama is running")

    @route("GET", "/api/version")
    async def version(self, request: EmuRequest) -> EmuResponse:
        return json_response({"version": self.config.version})

    def _tag(self, model: EmulatedModel) -> dict[str, Any]:
        return {
            "name": model.name,
            "model": model.name,
            "modified_at": "2025-05-04T17:37:44.706015396-07:00",
            "size": model.size,
            "digest": "a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72",
            "details": {
                "parent_model": "",
                "format": "gguf",
                "family": model.family,
                "families": [model.family],
                "parameter_size": model.parameter_size,
                "quantization_level": model.quantization,
            },
        }

    @route("GET", "/api/tags")
    async def tags(self, request: EmuRequest) -> EmuResponse:
        return json_response({"models": [self._tag(m) for m in self.config.models]})

    @route("GET", "/api/ps")
    async def ps(self, request: EmuRequest) -> EmuResponse:
        expires = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() + 300)) + ".0Z"
        loaded = []
        for m in self.config.models:
            if m.loaded:
                entry = self._tag(m)
                del entry["modified_at"]
                entry.update({"expires_at": expires, "size_vram": m.size, "context_length": m.context_length})
                loaded.append(entry)
        return json_response({"models": loaded})

    @route("POST", "/api/show")
    async def show(self, request: EmuRequest) -> EmuResponse:
        body, problem = self._body(request)
        if problem:
            return problem
        name = body.get("model") or body.get("name")
        model = self.model(name)
        if model is None:
            return error(404, f"model '{name}' not found")
        return json_response(
            {
                "license": "",
                "modelfile": f"FROM {model.name}",
                "parameters": "",
                "template": "{{ .Prompt }}",
                "details": self._tag(model)["details"],
                "model_info": {
                    "general.architecture": model.family,
                    f"{model.family}.context_length": model.context_length,
                },
                "capabilities": list(model.caps),
                "modified_at": "2025-05-04T17:37:44.706015396-07:00",
            }
        )

    # -- helpers -------------------------------------------------------------------------------------

    def _body(self, request: EmuRequest) -> tuple[dict[str, Any], EmuResponse | None]:
        if not request.body:
            return {}, error(400, "missing request body")
        try:
            body = json.loads(request.body)
        except json.JSONDecodeError as exc:
            return {}, error(400, f"invalid character in JSON: {exc.msg}")
        if not isinstance(body, dict):
            return {}, error(400, "json: cannot unmarshal into Go value of type api.Request")
        return body, None

    def _model_for(self, body: dict[str, Any], need: str) -> tuple[EmulatedModel | None, EmuResponse | None]:
        name = body.get("model")
        if not name:
            return None, error(400, "model is required")
        model = self.model(str(name))
        if model is None:
            return None, error(404, f"model '{name}' not found")
        wants_embedding = need == "embedding"
        if model.embedding != wants_embedding:
            return None, error(400, f'"{name}" does not support {need}')
        return model, None

    def _metrics(self, prompt_tokens: int, tokens: int, load: float, started: float) -> dict[str, Any]:
        metrics: dict[str, Any] = {"total_duration": int((time.perf_counter() - started) * 1e9) or 1}
        if load:
            metrics["load_duration"] = int(load * 1e9)
        if prompt_tokens:
            metrics["prompt_eval_count"] = prompt_tokens
            metrics["prompt_eval_duration"] = 1000 * prompt_tokens
        if tokens:
            metrics["eval_count"] = tokens
            metrics["eval_duration"] = (
                max(1, int(tokens * self.config.token_delay * 1e9)) if self.config.token_delay else 1000 * tokens
            )
        return metrics

    # -- generation ----------------------------------------------------------------------------------

    @route("POST", "/api/chat")
    async def chat(self, request: EmuRequest) -> EmuResponse:
        body, problem = self._body(request)
        if problem:
            return problem
        model, problem = self._model_for(body, "chat")
        if problem:
            return problem
        if not isinstance(body.get("messages", []), list):
            return error(400, "json: cannot unmarshal messages")
        messages = body.get("messages") or []
        prompt = next(
            (m.get("content", "") for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "user"), ""
        )
        return await self._generate(request, body, model, str(prompt), "chat")

    @route("POST", "/api/generate")
    async def generate(self, request: EmuRequest) -> EmuResponse:
        body, problem = self._body(request)
        if problem:
            return problem
        model, problem = self._model_for(body, "generate")
        if problem:
            return problem
        if body.get("raw") and (body.get("template") or body.get("system")):
            return error(400, "raw mode does not support template, system, or context")
        return await self._generate(request, body, model, str(body.get("prompt", "")), "generate")

    async def _generate(
        self, request: EmuRequest, body: dict[str, Any], model: EmulatedModel | None, prompt: str, kind: str
    ) -> EmuResponse:
        assert model is not None
        options = body.get("options") or {}
        limit = options.get("num_predict") if isinstance(options, dict) else None
        tokens = self.reply_tokens(prompt, limit if isinstance(limit, int) else None)
        prompt_tokens = self.prompt_tokens(prompt)
        started = time.perf_counter()
        name = body["model"]
        tools = body.get("tools")
        fault = request.fault

        def piece(text: str) -> dict[str, Any]:
            out: dict[str, Any] = {"model": name, "created_at": now_rfc3339()}
            if kind == "chat":
                out["message"] = {"role": "assistant", "content": text}
            else:
                out["response"] = text
            out["done"] = False
            return out

        def final(load: float) -> dict[str, Any]:
            out = piece("")
            out["done"] = True
            out["done_reason"] = "stop" if limit is None or len(tokens) < limit else "length"
            out.update(self._metrics(prompt_tokens, len(tokens), load, started))
            if kind == "chat" and tools:
                first = tools[0].get("function", {}) if isinstance(tools[0], dict) else {}
                out["message"]["tool_calls"] = [
                    {"function": {"name": first.get("name", "tool"), "arguments": {"query": prompt}}}
                ]
            return out

        if body.get("stream", True) is False:
            async with self.slots():
                self.enter()
                try:
                    load = await self.work(model)
                    for _ in tokens:
                        await self.pace()
                finally:
                    self.leave()
            out = final(load)
            if kind == "chat":
                out["message"]["content"] = "".join(tokens)
            else:
                out["response"] = "".join(tokens)
            return json_response(out)

        async def lines() -> AsyncIterator[bytes]:
            async with self.slots():
                self.enter()
                try:
                    load = await self.work(model)
                    for index, token in enumerate(tokens):
                        if fault is not None and fault.kind in ("stream_error", "truncate") and index == fault.after:
                            if fault.kind == "stream_error":
                                yield (json.dumps({"error": fault.message}) + "\n").encode()
                            return
                        await self.pace()
                        yield (json.dumps(piece(token), separators=(",", ":")) + "\n").encode()
                    yield (json.dumps(final(load), separators=(",", ":")) + "\n").encode()
                finally:
                    self.leave()

        return stream_response(lines(), NDJSON)

    # -- embeddings ----------------------------------------------------------------------------------

    @route("POST", "/api/embed")
    async def embed(self, request: EmuRequest) -> EmuResponse:
        if self.legacy:
            return await self.not_found(request)
        body, problem = self._body(request)
        if problem:
            return problem
        model, problem = self._model_for(body, "embedding")
        if problem:
            return problem
        assert model is not None
        raw = body.get("input", [])
        inputs = [raw] if isinstance(raw, str) else list(raw)
        started = time.perf_counter()
        async with self.slots():
            self.enter()
            try:
                load = await self.work(model)
            finally:
                self.leave()
        out: dict[str, Any] = {
            "model": body["model"],
            "embeddings": [self.vector(str(t), model.dimensions) for t in inputs],
        }
        out.update(
            {k: v for k, v in self._metrics(sum(self.prompt_tokens(str(t)) for t in inputs), 0, load, started).items()}
        )
        return json_response(out)

    @route("POST", "/api/embeddings")
    async def embeddings(self, request: EmuRequest) -> EmuResponse:
        body, problem = self._body(request)
        if problem:
            return problem
        model, problem = self._model_for(body, "embedding")
        if problem:
            return problem
        assert model is not None
        prompt = body.get("prompt", "")
        await self.work(model)
        return json_response({"embedding": self.vector(str(prompt), model.dimensions) if prompt else []})


def main() -> None:
    """Serve an emulated Ollama on a loopback port."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11434)
    parser.add_argument(
        "--model", action="append", default=[], help="model name (repeatable); prefix 'embed:' for an embedding model"
    )
    parser.add_argument("--token-delay", type=float, default=0.0)
    args = parser.parse_args()
    models = [EmulatedModel(name=m.removeprefix("embed:"), embedding=m.startswith("embed:")) for m in args.model] or [
        EmulatedModel(name="llama3.2:latest"),
        EmulatedModel(name="all-minilm:latest", embedding=True),
    ]
    import uvicorn

    app = OllamaEmulator(EmulatorConfig(models=models, token_delay=args.token_delay, name=f"ollama@{args.port}"))
    asyncio.run(
        uvicorn.Server(
            uvicorn.Config(app, host=args.host, port=args.port, server_header=False, log_level="warning")
        ).serve()
    )


if __name__ == "__main__":
    main()
