"""A stand-in pool for the gateway's tests: records what it is asked, answers what it is told.

It has the public surface the gateway uses (start, chat, generate, embed with stream=True,
models, nodes, aclose) and the read-only node table (`_nodes`), and needs no network.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from types import SimpleNamespace
from typing import Any

import httpx

from sollol.activity import Activity, LoadedModel, ModelInfo
from sollol.codec import model_key
from sollol.detection import NodeState
from sollol.gateway import Gateway
from sollol.inference import ChatResult, Chunk, EmbedResult, GenerateResult, ToolCall, Usage
from sollol.node import Node


def fake_node(name: str, backend: str, models: Sequence[ModelInfo], loaded: Sequence[str] | None = None) -> Any:
    activity = Activity(loaded=tuple(LoadedModel(name=m, size=123) for m in loaded)) if loaded is not None else None
    return SimpleNamespace(
        id=name,
        node=Node(host="127.0.0.1", port=1, name=name, backend=backend),
        backend=SimpleNamespace(name=backend),
        state=NodeState.UP,
        models={model_key(m.name): m for m in models},
        activity=activity,
    )


class FakePool:
    """Answers with `result` / `chunks`, or raises `error` (before or during a stream)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.protocols: list[str] = []  # of each request the gateway sent
        self.result: Any = None
        self.chunks: list[Chunk] = []
        self.error: BaseException | None = None
        self.error_after: int | None = None  # raise `error` after this many chunks
        self.closed = False
        self._nodes = [
            fake_node(
                "ollama-1",
                "ollama",
                [ModelInfo(name="llama3.2:latest", size=42, family="llama", details={"parameter_size": "3B"})],
                loaded=["llama3.2:latest"],
            ),
            fake_node(
                "vllm-1",
                "vllm",
                [
                    ModelInfo(name="llama3.2:latest", context_length=4096),
                    ModelInfo(name="bge-m3", capabilities=frozenset({"embedding"})),
                ],
            ),
        ]

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        self.closed = True

    def models(self) -> list[str]:
        return sorted({m.name for p in self._nodes for m in p.models.values()})

    def nodes(self) -> list[dict[str, Any]]:
        return [{"id": p.id, "backend": p.backend.name, "state": "up", "models": []} for p in self._nodes]

    async def _answer(self, kind: str, call: dict[str, Any]) -> Any:
        self.calls.append((kind, call))
        if call.get("stream"):
            return self._stream()
        if self.error is not None:
            raise self.error
        return self.result

    async def _stream(self) -> AsyncIterator[Chunk]:
        if self.error is not None and self.error_after is None:
            raise self.error
        for index, chunk in enumerate(self.chunks):
            if self.error is not None and index == self.error_after:
                raise self.error
            await asyncio.sleep(0)
            yield chunk

    async def chat(
        self,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        *,
        stream: bool = False,
        options: Any = None,
        **params: Any,
    ) -> Any:
        return await self._answer(
            "chat", {"model": model, "messages": list(messages), "stream": stream, "options": options, "params": params}
        )

    async def generate(
        self, model: str, prompt: str = "", *, stream: bool = False, options: Any = None, **params: Any
    ) -> Any:
        return await self._answer(
            "generate", {"model": model, "prompt": prompt, "stream": stream, "options": options, "params": params}
        )

    async def embed(self, model: str, input: Any, *, options: Any = None, **params: Any) -> Any:
        return await self._answer("embed", {"model": model, "input": list(input), "options": options, "params": params})

    # The gateway sends request values (labelled with the client's protocol), as to an AsyncPool.

    async def serve(self, request: Any, *, priority: int | None = None) -> Any:
        self.protocols.append(request.protocol)
        return await self._call(request, stream=False)

    async def stream(self, request: Any, *, priority: int | None = None) -> Any:
        self.protocols.append(request.protocol)
        return await self._call(request, stream=True)

    async def _call(self, request: Any, stream: bool) -> Any:
        options = dict(request.options) or None
        if request.operation == "chat":
            return await self.chat(request.model, request.messages, stream=stream, options=options, **request.params)
        if request.operation == "generate":
            return await self.generate(request.model, request.prompt, stream=stream, options=options, **request.params)
        return await self.embed(request.model, request.inputs, options=options, **request.params)


def chat_result(raw: Any = None, **kw: Any) -> ChatResult:
    values: dict[str, Any] = {
        "model": "llama3.2",
        "text": "Hi there",
        "done_reason": "stop",
        "usage": Usage(prompt_tokens=5, completion_tokens=2, total_duration=0.5),
    }
    values.update(kw)
    return ChatResult(raw=raw, **values)


def generate_result(raw: Any = None, **kw: Any) -> GenerateResult:
    values: dict[str, Any] = {
        "model": "llama3.2",
        "text": "blue",
        "done_reason": "length",
        "usage": Usage(prompt_tokens=3, completion_tokens=1),
    }
    values.update(kw)
    return GenerateResult(raw=raw, **values)


def embed_result(vectors: Sequence[Sequence[float]], raw: Any = None) -> EmbedResult:
    return EmbedResult(model="bge-m3", embeddings=[list(v) for v in vectors], usage=Usage(prompt_tokens=4), raw=raw)


def text_chunks(*texts: str, calls: Sequence[ToolCall] = (), reason: str = "stop") -> list[Chunk]:
    chunks = [Chunk(text=t, raw={"choices": [{"delta": {"content": t}}]}) for t in texts]
    chunks.append(
        Chunk(
            done=True,
            done_reason=reason,
            usage=Usage(prompt_tokens=7, completion_tokens=len(texts)),
            tool_calls=tuple(calls),
        )
    )
    return chunks


def request(
    app: Gateway,
    method: str,
    path: str,
    *,
    json: Any = None,
    content: bytes | None = None,
    headers: Mapping[str, str] | None = None,
) -> httpx.Response:
    """One request to the app, in-process."""

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            response = await client.request(method, path, json=json, content=content, headers=headers)
            await response.aread()
            return response

    return asyncio.run(go())
