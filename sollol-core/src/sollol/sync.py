"""`Pool`: the synchronous face of `AsyncPool`.

It runs an `AsyncPool` on a private event loop in its own thread, so it works the same in a
plain script, inside Jupyter, or under any other running event loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Coroutine, Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal, TypeVar, overload

from sollol.inference import ChatResult, Chunk, EmbedResult, GenerateResult
from sollol.node import NodeSpec
from sollol.pool import AsyncPool

T = TypeVar("T")


class Pool:
    """A pool of LLM server nodes of any kind, used synchronously."""

    async_pool_class: type[AsyncPool] = AsyncPool

    def __init__(self, nodes: Iterable[NodeSpec] | str | None = None, **settings: Any) -> None:
        self._pool = self.async_pool_class(nodes, **settings)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return repr(self._pool).replace("AsyncPool", "Pool", 1)

    def __enter__(self) -> Pool:
        self._call(self._pool.start())
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def async_pool(self) -> AsyncPool:
        """The `AsyncPool` underneath."""
        return self._pool

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="sollol-pool", daemon=True)
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        loop = self._ensure_loop()
        return asyncio.run_coroutine_threadsafe(self._delivered(coro), loop).result()

    async def _delivered(self, coro: Coroutine[Any, Any, T]) -> T:
        """`coro`'s result, once the observers have what it did (a caller may look at once)."""
        try:
            return await coro
        finally:
            self._pool.deliver_activity()

    def close(self) -> None:
        """Stop the pool and its thread."""
        if self._loop is None:
            return
        self._call(self._pool.aclose())
        loop, thread = self._loop, self._thread
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(timeout=5)
        loop.close()
        self._loop = self._thread = None

    def _iterate(self, coro: Coroutine[Any, Any, AsyncIterator[Chunk]]) -> Iterator[Chunk]:
        stream = self._call(coro)

        async def step() -> tuple[bool, Chunk | None]:
            try:
                return True, await stream.__anext__()
            except StopAsyncIteration:
                return False, None

        def chunks() -> Iterator[Chunk]:
            try:
                while True:
                    more, chunk = self._call(step())
                    if not more:
                        return
                    assert chunk is not None
                    yield chunk
            finally:
                aclose = getattr(stream, "aclose", None)
                if aclose is not None and self._loop is not None:
                    self._call(aclose())

        return chunks()

    def start(self) -> None:
        """Detect nodes and read their models now rather than on first use."""
        self._call(self._pool.start())

    def refresh(self) -> None:
        """Re-read every node's state, models and activity."""
        self._call(self._pool.refresh())

    @overload
    def chat(
        self, model: str, messages: Sequence[Mapping[str, Any]], *, stream: Literal[False] = ..., **kw: Any
    ) -> ChatResult: ...
    @overload
    def chat(
        self, model: str, messages: Sequence[Mapping[str, Any]], *, stream: Literal[True], **kw: Any
    ) -> Iterator[Chunk]: ...
    def chat(
        self, model: str, messages: Sequence[Mapping[str, Any]], *, stream: bool = False, **kw: Any
    ) -> ChatResult | Iterator[Chunk]:
        """Chat with `model`. With `stream=True`, an iterator of chunks."""
        if stream:
            return self._iterate(self._pool.chat(model, messages, stream=True, **kw))
        result: ChatResult = self._call(self._pool.chat(model, messages, **kw))
        return result

    @overload
    def generate(self, model: str, prompt: str = ..., *, stream: Literal[False] = ..., **kw: Any) -> GenerateResult: ...
    @overload
    def generate(self, model: str, prompt: str = ..., *, stream: Literal[True], **kw: Any) -> Iterator[Chunk]: ...
    def generate(
        self, model: str, prompt: str = "", *, stream: bool = False, **kw: Any
    ) -> GenerateResult | Iterator[Chunk]:
        """Complete `prompt`. With `stream=True`, an iterator of chunks."""
        if stream:
            return self._iterate(self._pool.generate(model, prompt, stream=True, **kw))
        result: GenerateResult = self._call(self._pool.generate(model, prompt, **kw))
        return result

    def embed(self, model: str, input: str | Sequence[str], **kw: Any) -> EmbedResult:
        """Embed one text or several."""
        return self._call(self._pool.embed(model, input, **kw))

    def nodes(self) -> list[dict[str, Any]]:
        """What the pool knows of each node."""
        return self._pool.nodes()

    def models(self) -> list[str]:
        """Every model some node serves."""
        return self._pool.models()


def _kind_pools(backend: str, label: str) -> tuple[type[AsyncPool], type[Pool]]:
    """An AsyncPool and a Pool whose nodes default to one backend kind."""
    async_cls = type(
        f"Async{label}Pool", (AsyncPool,), {"default_backend": backend, "__doc__": f"An AsyncPool of {label} nodes."}
    )
    sync_cls = type(f"{label}Pool", (Pool,), {"async_pool_class": async_cls, "__doc__": f"A Pool of {label} nodes."})
    return async_cls, sync_cls


AsyncOllamaPool, OllamaPool = _kind_pools("ollama", "Ollama")
AsyncVLLMPool, VLLMPool = _kind_pools("vllm", "VLLM")
AsyncTGIPool, TGIPool = _kind_pools("tgi", "TGI")
AsyncLlamaCppPool, LlamaCppPool = _kind_pools("llamacpp", "LlamaCpp")
AsyncLocalAIPool, LocalAIPool = _kind_pools("localai", "LocalAI")
