"""An ASGI app that answers like an SGLang server, for tests without a GPU.

Built on `sollol.testing.emulator`, so it takes the same `EmulatorConfig` (models, token
speed, latency) and the same injected `Fault`s as every SOLLOL emulator. What it imitates:
FastAPI's `{"detail": "Not Found"}` 404 and `server: uvicorn` header, `/health` with an empty
body, `/get_model_info`, `/v1/models` cards owned by "sglang", OpenAI chat, completion and
embedding routes with SSE streams ending in `data: [DONE]`, SGLang's flat error envelope
`{"object": "error", "message", "type", "param", "code"}`, and `/metrics`.
Run it: `python -m sollol_sglang.emulator --port 30000`.
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
    route,
    stream_response,
)

SSE = "text/event-stream; charset=utf-8"


def error(status: int, message: str, kind: str = "BadRequestError") -> EmuResponse:
    """SGLang's error envelope."""
    return json_response({"object": "error", "message": message, "type": kind, "param": None, "code": status}, status)


def sse(payload: Any) -> bytes:
    """One server-sent event."""
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


class SGLangEmulator(Emulator):
    """SGLang, emulated."""

    generation_paths = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
    default_headers = (("server", "uvicorn"),)

    def __init__(self, config: EmulatorConfig | None = None, **settings: Any) -> None:
        super().__init__(config, **settings)
        if self.config.version is None:
            self.config.version = "0.5.4"

    async def not_found(self, request: EmuRequest) -> EmuResponse:
        return json_response({"detail": "Not Found"}, 404, content_type="application/json")

    async def method_not_allowed(self, request: EmuRequest) -> EmuResponse:
        return json_response({"detail": "Method Not Allowed"}, 405, content_type="application/json")

    # -- status routes -------------------------------------------------------------------------

    @route("GET", "/health")
    async def health(self, request: EmuRequest) -> EmuResponse:
        return EmuResponse(status=200, body=b"", content_type=None)

    @route("GET", "/get_model_info")
    async def model_info(self, request: EmuRequest) -> EmuResponse:
        first = self.config.models[0]
        return json_response(
            {"model_path": first.name, "tokenizer_path": first.name, "is_generation": not first.embedding},
            content_type="application/json",
        )

    @route("GET", "/v1/models")
    async def models(self, request: EmuRequest) -> EmuResponse:
        cards = [
            {
                "id": m.name,
                "object": "model",
                "created": int(time.time()),
                "owned_by": "sglang",
                "root": m.name,
                "max_model_len": m.context_length,
            }
            for m in self.config.models
        ]
        return json_response({"object": "list", "data": cards}, content_type="application/json")

    @route("GET", "/metrics")
    async def metrics(self, request: EmuRequest) -> EmuResponse:
        name = self.config.models[0].name
        text = (
            "# TYPE sglang:num_running_reqs gauge\n"
            f'sglang:num_running_reqs{{model_name="{name}"}} {float(self.in_flight)}\n'
            "# TYPE sglang:num_queue_reqs gauge\n"
            f'sglang:num_queue_reqs{{model_name="{name}"}} 0.0\n'
            "# TYPE sglang:token_usage gauge\n"
            f'sglang:token_usage{{model_name="{name}"}} 0.0\n'
        )
        return EmuResponse(status=200, body=text.encode(), content_type="text/plain; version=0.0.4; charset=utf-8")

    # -- generation ------------------------------------------------------------------------------

    def _read(
        self, request: EmuRequest, embedding: bool
    ) -> tuple[dict[str, Any], EmulatedModel | None, EmuResponse | None]:
        try:
            body = request.json()
        except ValueError:
            return {}, None, error(400, "JSON decode error")
        if not isinstance(body, dict):
            return {}, None, error(400, "the request body must be a JSON object")
        model = self.model(str(body.get("model") or ""))
        if model is None:
            return body, None, error(404, f"The model `{body.get('model')}` does not exist.", "NotFoundError")
        if model.embedding != embedding:
            return body, None, error(400, f"model {model.name} does not support this route")
        return body, model, None

    @route("POST", "/v1/chat/completions")
    async def chat(self, request: EmuRequest) -> EmuResponse:
        body, model, problem = self._read(request, embedding=False)
        if problem is not None or model is None:
            return problem or error(400, "no model")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return error(400, "messages must be a non-empty list")
        prompt = str(messages[-1].get("content", "")) if isinstance(messages[-1], dict) else ""
        return await self._generate(request, body, model, prompt, chat=True)

    @route("POST", "/v1/completions")
    async def completions(self, request: EmuRequest) -> EmuResponse:
        body, model, problem = self._read(request, embedding=False)
        if problem is not None or model is None:
            return problem or error(400, "no model")
        return await self._generate(request, body, model, str(body.get("prompt", "")), chat=False)

    async def _generate(
        self, request: EmuRequest, body: dict[str, Any], model: EmulatedModel, prompt: str, chat: bool
    ) -> EmuResponse:
        limit = body.get("max_tokens")
        tokens = self.reply_tokens(prompt, limit if isinstance(limit, int) else None)
        finish = "length" if isinstance(limit, int) and len(tokens) >= limit else "stop"
        usage = {"prompt_tokens": self.prompt_tokens(prompt), "completion_tokens": len(tokens)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        kind = "chat.completion" if chat else "text_completion"
        base = {"id": "emulated-1", "created": int(time.time()), "model": body["model"]}
        fault = request.fault

        if not body.get("stream"):
            async with self.slots():
                self.enter()
                try:
                    await self.work(model)
                    for _ in tokens:
                        await self.pace()
                finally:
                    self.leave()
            text = "".join(tokens)
            choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
            choice.update({"message": {"role": "assistant", "content": text}} if chat else {"text": text})
            return json_response(
                {**base, "object": kind, "choices": [choice], "usage": usage}, content_type="application/json"
            )

        def piece(text: str, finish_reason: str | None) -> dict[str, Any]:
            part: dict[str, Any] = {"index": 0, "finish_reason": finish_reason}
            part.update({"delta": {"role": "assistant", "content": text}} if chat else {"text": text})
            return {**base, "object": f"{kind}.chunk" if chat else kind, "choices": [part]}

        async def events() -> AsyncIterator[bytes]:
            async with self.slots():
                self.enter()
                try:
                    await self.work(model)
                    for index, token in enumerate(tokens):
                        if fault is not None and fault.kind in ("stream_error", "truncate") and index == fault.after:
                            if fault.kind == "stream_error":
                                yield sse(
                                    {"error": {"message": fault.message, "type": "InternalServerError", "code": 500}}
                                )
                                yield b"data: [DONE]\n\n"
                            return
                        await self.pace()
                        yield sse(piece(token, None))
                    yield sse(piece("", finish))
                    if (body.get("stream_options") or {}).get("include_usage"):
                        yield sse({**base, "object": f"{kind}.chunk", "choices": [], "usage": usage})
                    yield b"data: [DONE]\n\n"
                finally:
                    self.leave()

        return stream_response(events(), SSE)

    @route("POST", "/v1/embeddings")
    async def embeddings(self, request: EmuRequest) -> EmuResponse:
        body, model, problem = self._read(request, embedding=True)
        if problem is not None or model is None:
            return problem or error(400, "no model")
        raw = body.get("input", [])
        inputs = [raw] if isinstance(raw, str) else list(raw)
        await self.work(model)
        data = [
            {"object": "embedding", "index": i, "embedding": self.vector(str(t), model.dimensions)}
            for i, t in enumerate(inputs)
        ]
        tokens = sum(self.prompt_tokens(str(t)) for t in inputs)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return json_response(
            {"object": "list", "data": data, "model": body["model"], "usage": usage}, content_type="application/json"
        )


def main() -> None:
    """Serve an emulated SGLang on a loopback port."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=30000)
    parser.add_argument(
        "--model", action="append", default=[], help="model name (repeatable); prefix 'embed:' for embeddings"
    )
    args = parser.parse_args()
    models = [EmulatedModel(name=m.removeprefix("embed:"), embedding=m.startswith("embed:")) for m in args.model]
    import uvicorn

    app = SGLangEmulator(
        EmulatorConfig(models=models or [EmulatedModel(name="Qwen/Qwen2.5-7B-Instruct")], name=f"sglang@{args.port}")
    )
    asyncio.run(uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="warning")).serve())


if __name__ == "__main__":
    main()
