"""`AsyncPool`: sends each chat, generate and embed request to the best node, failing over.

Building a pool does no I/O and starts nothing. On first use (or `async with`) it detects
nodes whose kind was not given, reads each node's models, and starts a background task
that keeps that knowledge fresh.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any, Literal, TypeVar, overload

import attrs

from sollol.activity import ActivityEvent
from sollol.codec import Backend, StreamPlan, model_key
from sollol.detect import decide, probe_node
from sollol.detection import NodeState
from sollol.discovery import DiscoveryContext, EnvironmentNodes
from sollol.errors import (
    AllNodesFailedError,
    AuthenticationError,
    BackendError,
    ConfigError,
    ConnectError,
    NoNodeForModelError,
    PoolClosedError,
    ProtocolError,
    SollolError,
    StreamInterruptedError,
    TimeoutError,
)
from sollol.http import Exchange
from sollol.inference import (
    ChatRequest,
    ChatResult,
    Chunk,
    EmbedRequest,
    EmbedResult,
    GenerateRequest,
    GenerateResult,
    Request,
    Result,
    Route,
)
from sollol.node import Node, NodeSpec, parse_nodes
from sollol.plugins import Plugins, default_plugins
from sollol.routing import Choice, Policy, PoolNode, candidates_for
from sollol.transport import Timeouts, Transport

log = logging.getLogger(__name__)

R = TypeVar("R", ChatResult, GenerateResult, EmbedResult)


class AsyncPool:
    """A pool of LLM server nodes of any kind, used with `await`."""

    default_backend: str | None = None

    def __init__(
        self,
        nodes: Iterable[NodeSpec] | str | None = None,
        *,
        backend: str | None = None,
        policy: str | Policy = "least_loaded",
        plugins: Plugins | None = None,
        timeouts: Timeouts | None = None,
        max_attempts: int = 3,
        refresh_interval: float = 15.0,
        seed: int | None = None,
    ) -> None:
        backend = backend or self.default_backend
        if nodes is None:
            nodes = list(EnvironmentNodes().candidates(DiscoveryContext()))
        parsed = parse_nodes(nodes)
        if not parsed:
            raise ConfigError("no nodes given: pass nodes, or set SOLLOL_NODES")
        if backend:
            parsed = tuple(n if n.backend else n.with_backend(backend) for n in parsed)
        if max_attempts < 1:
            raise ConfigError("max_attempts must be at least 1")
        self._given = parsed
        self._policy_spec = policy
        self._plugins = plugins
        self._timeouts = timeouts or Timeouts()
        self.max_attempts = max_attempts
        self.refresh_interval = refresh_interval
        self._rng = random.Random(seed)
        self._nodes: list[PoolNode] = []
        self._policy: Policy | None = None
        self._transport: Transport | None = None
        self._started: asyncio.Future[None] | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} nodes={[n.id for n in self._given]}>"

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> AsyncPool:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def plugins(self) -> Plugins:
        """The plugins this pool uses (loaded on first use)."""
        if self._plugins is None:
            self._plugins = default_plugins()
        return self._plugins

    async def start(self) -> None:
        """Detect nodes, read their models, and start the background refresh. Idempotent."""
        if self._closed:
            raise PoolClosedError("this pool is closed")
        if self._started is None:
            self._started = asyncio.get_running_loop().create_future()
            try:
                await self._start()
            except BaseException as exc:
                self._started.set_exception(exc)
                started, self._started = self._started, None
                started.exception()  # mark retrieved
                raise
            self._started.set_result(None)
        else:
            await asyncio.shield(self._started)

    async def _start(self) -> None:
        plugins = self.plugins
        self._policy = self._make_policy(self._policy_spec)
        self._transport = Transport(timeouts=self._timeouts)
        for node in self._given:
            backend = plugins.backend(node.backend) if node.backend else None
            self._nodes.append(PoolNode(node, backend))
        await asyncio.gather(*(self._refresh_node(p) for p in self._nodes))
        if self.refresh_interval > 0:
            self._refresher = asyncio.create_task(self._refresh_forever(), name="sollol-refresh")

    def _make_policy(self, spec: str | Policy) -> Policy:
        if not isinstance(spec, str):
            return spec
        try:
            factory = self.plugins.policies[spec]
        except KeyError:
            have = ", ".join(sorted(self.plugins.policies)) or "none"
            raise ConfigError(f"unknown routing policy {spec!r}; installed: {have}") from None
        policy: Policy = factory()
        return policy

    async def aclose(self) -> None:
        """Stop background work and close every connection."""
        if self._closed:
            return
        self._closed = True
        if self._refresher is not None:
            self._refresher.cancel()
            try:
                await self._refresher
            except asyncio.CancelledError:
                pass
        if self._transport is not None:
            await self._transport.aclose()

    # -- node knowledge ------------------------------------------------------------------------

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_interval)
            await asyncio.gather(*(self._refresh_node(p) for p in self._nodes), return_exceptions=True)

    async def refresh(self) -> None:
        """Re-read every node's state, models and activity now."""
        await self.start()
        await asyncio.gather(*(self._refresh_node(p) for p in self._nodes))

    async def _refresh_node(self, pnode: PoolNode) -> None:
        assert self._transport is not None
        transport = self._transport
        if pnode.backend is None:
            found = decide(pnode.node, await probe_node(transport, self.plugins, pnode.node), self.plugins)
            if found.backend is None:
                self._set_state(pnode, found.state, found.reason)
                return
            pnode.backend = self.plugins.backend(found.backend)
            pnode.node = pnode.node.with_backend(found.backend)
        backend = pnode.backend
        health = await transport.probe(pnode.node, backend.health())
        state = backend.health_state(health)
        self._set_state(pnode, state, health.error or (None if health.ok else f"HTTP {health.status}"))
        if state is not NodeState.UP:
            return
        try:
            models = await transport.run(pnode.node, backend.models())
        except SollolError as exc:
            log.warning("could not read the models of %s: %s", pnode.id, exc)
        else:
            pnode.models = {model_key(m.name): m for m in models}
        try:
            pnode.activity = await transport.run(pnode.node, backend.activity(), tolerant=True)
        except SollolError as exc:
            log.debug("could not read the activity of %s: %s", pnode.id, exc)

    def _set_state(self, pnode: PoolNode, state: NodeState, reason: str | None) -> None:
        if state is pnode.state:
            return
        previous, pnode.state = pnode.state, state
        if state is not NodeState.UP:
            pnode.last_error = reason
        log.info("node %s: %s -> %s%s", pnode.id, previous.value, state.value, f" ({reason})" if reason else "")
        self._emit("node." + state.value.replace("-", "_"), pnode.id, data={"reason": reason, "previous": previous.value})

    def _emit(self, kind: str, node: str | None = None, model: str | None = None, data: Mapping[str, Any] | None = None) -> None:
        self.plugins.emit(ActivityEvent(kind=kind, node=node, model=model, data=dict(data or {})))

    def nodes(self) -> list[dict[str, Any]]:
        """What the pool knows of each node, as JSON objects."""
        return [p.snapshot() for p in self._nodes] if self._nodes else [
            {"id": n.id, "url": n.url, "backend": n.backend, "state": "unknown"} for n in self._given
        ]

    def models(self) -> list[str]:
        """Every model some node serves."""
        names: dict[str, str] = {}
        for pnode in self._nodes:
            for name in pnode.model_names():
                names.setdefault(model_key(name), name)
        return sorted(names.values())

    # -- the API -------------------------------------------------------------------------------

    @overload
    async def chat(self, model: str, messages: Sequence[Mapping[str, Any]], *, stream: Literal[False] = ..., options: Mapping[str, Any] | None = ..., **params: Any) -> ChatResult: ...
    @overload
    async def chat(self, model: str, messages: Sequence[Mapping[str, Any]], *, stream: Literal[True], options: Mapping[str, Any] | None = ..., **params: Any) -> AsyncIterator[Chunk]: ...
    async def chat(self, model: str, messages: Sequence[Mapping[str, Any]], *, stream: bool = False, options: Mapping[str, Any] | None = None, **params: Any) -> ChatResult | AsyncIterator[Chunk]:
        """Chat with `model`. With `stream=True`, an async iterator of chunks."""
        request = ChatRequest(model=model, messages=tuple(messages), options=options or {}, params=params)
        if stream:
            await self.start()
            return self._stream(request)
        return await self._serve(request, ChatResult)

    @overload
    async def generate(self, model: str, prompt: str = ..., *, stream: Literal[False] = ..., options: Mapping[str, Any] | None = ..., **params: Any) -> GenerateResult: ...
    @overload
    async def generate(self, model: str, prompt: str = ..., *, stream: Literal[True], options: Mapping[str, Any] | None = ..., **params: Any) -> AsyncIterator[Chunk]: ...
    async def generate(self, model: str, prompt: str = "", *, stream: bool = False, options: Mapping[str, Any] | None = None, **params: Any) -> GenerateResult | AsyncIterator[Chunk]:
        """Complete `prompt` with `model`. With `stream=True`, an async iterator of chunks."""
        request = GenerateRequest(model=model, prompt=prompt, options=options or {}, params=params)
        if stream:
            await self.start()
            return self._stream(request)
        return await self._serve(request, GenerateResult)

    async def embed(self, model: str, input: str | Sequence[str], *, options: Mapping[str, Any] | None = None, **params: Any) -> EmbedResult:
        """Embed one text or several with `model`."""
        inputs = (input,) if isinstance(input, str) else tuple(input)
        request = EmbedRequest(model=model, inputs=inputs, options=options or {}, params=params)
        return await self._serve(request, EmbedResult)

    async def serve(self, request: Request) -> Result:
        """Serve a request value (non-streamed)."""
        kind: Any = {"chat": ChatResult, "generate": GenerateResult, "embed": EmbedResult}[request.operation]
        result: Result = await self._serve(request, kind)
        return result

    async def stream(self, request: ChatRequest | GenerateRequest) -> AsyncIterator[Chunk]:
        """Serve a request value as a stream."""
        await self.start()
        return self._stream(request)

    # -- routing and failover --------------------------------------------------------------------

    def _choose(self, request: Request, tried: list[str], failures: list[tuple[str, BaseException]]) -> Choice:
        candidates = candidates_for(self._nodes, request, exclude=set(tried))
        if not candidates:
            if failures:
                raise AllNodesFailedError(request.model, failures)
            raise self._nothing_serves(request)
        assert self._policy is not None
        return self._policy.choose(candidates, request, self._rng)

    def _nothing_serves(self, request: Request) -> SollolError:
        holders = [p for p in self._nodes if p.has_model(request.model)]
        if holders:
            return AllNodesFailedError(
                request.model,
                [(p.id, ConnectError(f"node is {p.state.value}: {p.last_error or 'no answer'}")) for p in holders],
            )
        if not any(p.state in (NodeState.UP, NodeState.UNKNOWN) for p in self._nodes):
            return AllNodesFailedError(
                request.model,
                [(p.id, ConnectError(f"node is {p.state.value}: {p.last_error or 'no answer'}")) for p in self._nodes],
            )
        detail = ""
        if not any(p.backend and request.operation in p.backend.operations for p in self._nodes):
            detail = f"no node's backend supports {request.operation}"
        return NoNodeForModelError(request.model, self.models(), detail)

    def _exchange(self, backend: Backend, request: Request) -> Exchange[Any]:
        if isinstance(request, ChatRequest):
            return backend.chat(request)
        if isinstance(request, GenerateRequest):
            return backend.generate(request)
        return backend.embed(request)

    def _route(self, choice: Choice, tried: list[str], failures: list[tuple[str, BaseException]]) -> Route:
        assert self._policy is not None
        return Route(
            node=choice.node.id,
            tried=tuple(tried),
            policy=self._policy.name,
            score=choice.score,
            parts=choice.parts,
            failures=tuple((n, str(e)) for n, e in failures),
        )

    def _failed(self, pnode: PoolNode, exc: BaseException, request: Request) -> None:
        pnode.failed += 1
        pnode.last_error = str(exc)
        if isinstance(exc, (ConnectError, TimeoutError)) and not isinstance(exc, StreamInterruptedError):
            self._set_state(pnode, NodeState.DOWN, str(exc))
        elif isinstance(exc, AuthenticationError):
            self._set_state(pnode, NodeState.AUTH_REQUIRED, str(exc))
        self._emit("request.failed", pnode.id, request.model, {"reason": str(exc), "operation": request.operation})

    async def _serve(self, request: Request, kind: type[R]) -> R:
        if self._closed:
            raise PoolClosedError("this pool is closed")
        await self.start()
        assert self._transport is not None
        tried: list[str] = []
        failures: list[tuple[str, BaseException]] = []
        while len(tried) < self.max_attempts:
            choice = self._choose(request, tried, failures)
            pnode = choice.node
            assert pnode.backend is not None
            tried.append(pnode.id)
            started = time.perf_counter()
            try:
                with pnode.lease():
                    result = await self._transport.run(pnode.node, self._exchange(pnode.backend, request))
            except (BackendError, ProtocolError) as exc:
                if isinstance(exc, BackendError):
                    exc.at(pnode.id)
                self._failed(pnode, exc, request)
                if isinstance(exc, BackendError) and not exc.retryable:
                    raise
                failures.append((pnode.id, exc))
                continue
            pnode.served += 1
            self._emit("request.finished", pnode.id, request.model, {"latency": time.perf_counter() - started, "operation": request.operation})
            return attrs.evolve(result, node=pnode.node, route=self._route(choice, tried, failures))  # type: ignore[no-any-return]
        raise AllNodesFailedError(request.model, failures)

    async def _stream(self, request: ChatRequest | GenerateRequest) -> AsyncIterator[Chunk]:
        if self._closed:
            raise PoolClosedError("this pool is closed")
        assert self._transport is not None
        tried: list[str] = []
        failures: list[tuple[str, BaseException]] = []
        while len(tried) < self.max_attempts:
            choice = self._choose(request, tried, failures)
            pnode = choice.node
            assert pnode.backend is not None
            tried.append(pnode.id)
            plan: StreamPlan = (
                pnode.backend.chat_stream(request)
                if isinstance(request, ChatRequest)
                else pnode.backend.generate_stream(request)
            )
            route = self._route(choice, tried, failures)
            sent = 0
            try:
                with pnode.lease():
                    async with self._transport.stream(pnode.node, plan.request) as response:
                        if not 200 <= response.status < 300:
                            raise pnode.backend.error(await response.read())
                        decoder = plan.decoder()
                        async for piece in response.pieces():
                            for chunk in decoder.feed(piece):
                                sent += 1
                                yield attrs.evolve(chunk, node=pnode.node, route=route)
                        for chunk in decoder.close():
                            sent += 1
                            yield attrs.evolve(chunk, node=pnode.node, route=route)
            except (BackendError, ProtocolError) as exc:
                if isinstance(exc, BackendError):
                    exc.at(pnode.id)
                self._failed(pnode, exc, request)
                if sent:
                    raise StreamInterruptedError(
                        f"the stream from {pnode.id} broke after {sent} chunks: {exc}",
                        node=pnode.id,
                        status=getattr(exc, "status", 0),
                    ) from exc
                if isinstance(exc, BackendError) and not exc.retryable:
                    raise
                failures.append((pnode.id, exc))
                continue
            pnode.served += 1
            self._emit("request.finished", pnode.id, request.model, {"operation": request.operation, "chunks": sent})
            return
        raise AllNodesFailedError(request.model, failures)
