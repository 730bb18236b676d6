"""`AsyncPool`: sends each chat, generate and embed request to the best node, failing over.

Building a pool does no I/O and starts nothing. On first use (or `async with`) it detects
nodes whose kind was not given, reads each node's models, and starts two background
tasks: one probes each node's cheap liveness request every `health_interval` seconds,
the other re-reads models and activity every `refresh_interval` seconds.

A request goes to the node the policy picks among those that serve its model (by the name
users write, or an alias), have the capabilities it needs, are healthy and below their
concurrency limit. When every such node is full the request waits in a bounded priority
queue; when a node fails the request is retried on one not yet tried, within
`max_attempts` and `deadline`. See `docs/routing.md`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, TypeVar, overload

import attrs

from sollol.activity import ActivityEvent, RequestRecord
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
    ModelNotFoundError,
    NodeTimeoutError,
    NoNodeForModelError,
    OverloadedError,
    PoolClosedError,
    ProtocolError,
    SollolError,
    StreamInterruptedError,
    UnavailableError,
)
from sollol.health import CircuitState
from sollol.http import Exchange, HttpResponse
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
    Usage,
)
from sollol.latency import ModelStats, decay_factor, split_timing
from sollol.node import Node, NodeSpec, parse_nodes
from sollol.plugins import Plugins, default_plugins
from sollol.queue import WaitQueue
from sollol.routing import AliasSpec, Choice, Policy, PoolNode, Router, Target, needs_of
from sollol.transport import Timeouts, Transport

log = logging.getLogger(__name__)

#: Seconds the pool may hold what happened before its observers get it (see `AsyncPool._note`).
DELIVERY_DELAY = 0.01
#: Activity entries the pool holds at most: it delivers them at once when this many are waiting.
JOURNAL_LIMIT = 256

_now = time.time
# `_record(RequestRecord, (field, ...))` builds a record from all its fields in order, in C:
# NamedTuple's generated `__new__` is a Python call that costs three times as much.
_record = tuple.__new__

R = TypeVar("R", ChatResult, GenerateResult, EmbedResult)


class AsyncPool:
    """A pool of LLM server nodes of any kind, used with `await`.

    Settings beyond the nodes:
    - `policy`: a registered policy name (`sollol`, `least_loaded`, `latency`,
      `affinity`, `round_robin`, `random`, or a plugin's) or a policy object.
    - `aliases`: logical model name -> the name on each node: one name, a list of
      names (any of them), or a mapping from node id / backend kind ("*" for the rest).
    - `max_concurrency`: requests per node at once, for nodes that do not set their own.
    - `queue_limit`, `queue_timeout`: how many requests may wait for a free node, and
      how long each may wait before `BusyError`.
    - `max_attempts`, `deadline`: failover budget (nodes tried) and the time after which
      no new attempt starts (seconds).
    - `health_interval`: seconds between liveness probes (0 = none);
      `failure_threshold`: server errors in a row that open a node's circuit breaker.
    - `latency_half_life`: seconds for a node's latency estimate to drift halfway back to
      the cluster's when nothing new was measured.
    """

    default_backend: str | None = None

    def __init__(
        self,
        nodes: Iterable[NodeSpec] | str | None = None,
        *,
        backend: str | None = None,
        policy: str | Policy = "sollol",
        plugins: Plugins | None = None,
        timeouts: Timeouts | None = None,
        max_attempts: int = 3,
        refresh_interval: float = 15.0,
        seed: int | None = None,
        aliases: Mapping[str, AliasSpec] | None = None,
        max_concurrency: int | None = None,
        queue_limit: int = 1024,
        queue_timeout: float = 30.0,
        deadline: float = 300.0,
        health_interval: float = 5.0,
        failure_threshold: int = 3,
        latency_half_life: float = 60.0,
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
        if max_concurrency is not None and max_concurrency < 1:
            raise ConfigError("max_concurrency must be at least 1 (or None for no limit)")
        if queue_limit < 0 or queue_timeout < 0:
            raise ConfigError("queue_limit and queue_timeout cannot be negative")
        self._given = parsed
        self._policy_spec = policy
        self._plugins = plugins
        self._timeouts = timeouts or Timeouts()
        self.max_attempts = max_attempts
        self.refresh_interval = refresh_interval
        self.aliases: dict[str, AliasSpec] = dict(aliases or {})
        self.max_concurrency = max_concurrency
        self.queue_timeout = queue_timeout
        self.deadline = deadline
        self.health_interval = health_interval
        self.failure_threshold = failure_threshold
        self.latency_half_life = latency_half_life
        self._rng = random.Random(seed)
        self._nodes: list[PoolNode] = []
        self._policy: Policy | None = None
        self._router: Router | None = None
        self._queue = WaitQueue(limit=queue_limit)
        self._transport: Transport | None = None
        self._started: asyncio.Future[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._journal: list[RequestRecord | ActivityEvent] = []  # noted, not yet delivered
        self._loop: asyncio.AbstractEventLoop | None = None
        self._delivery: asyncio.TimerHandle | None = None  # the next delivery to the observers

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

    @property
    def policy(self) -> Policy | None:
        """The routing policy (None before `start`)."""
        return self._policy

    async def start(self) -> None:
        """Detect nodes, read their models, and start the background work. Idempotent."""
        if self._closed:
            raise PoolClosedError("this pool is closed")
        started = self._started
        if started is not None and started.done():  # the common case: started already (no shield per request)
            started.result()
            return
        if self._started is None:
            self._loop = asyncio.get_running_loop()
            self._started = self._loop.create_future()
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
        cooldown = self.health_interval if self.health_interval > 0 else 5.0
        self._nodes = []
        for node in self._given:
            backend = plugins.backend(node.backend) if node.backend else None
            pnode = PoolNode(node, backend, limit=self.max_concurrency)
            pnode.breaker.threshold = max(1, self.failure_threshold)
            pnode.breaker.cooldown = cooldown
            pnode.on_release = self._released
            self._nodes.append(pnode)
        self._router = Router(self._nodes, self._policy, self._rng, self.aliases)
        await asyncio.gather(*(self._refresh_node(p) for p in self._nodes))
        if self.refresh_interval > 0:
            self._tasks.append(asyncio.create_task(self._refresh_forever(), name="sollol-refresh"))
        if self.health_interval > 0:
            self._tasks.append(asyncio.create_task(self._probe_forever(), name="sollol-health"))

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
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._tasks.clear()
        if self._transport is not None:
            await self._transport.aclose()
        self.deliver_activity()

    # -- node knowledge ------------------------------------------------------------------------

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_interval)
            await asyncio.gather(*(self._refresh_node(p) for p in self._nodes), return_exceptions=True)

    async def _probe_forever(self) -> None:
        while True:
            await asyncio.sleep(self.health_interval)
            await asyncio.gather(*(self._probe(p) for p in self._nodes), return_exceptions=True)
            self._decay(self.health_interval)

    async def refresh(self) -> None:
        """Re-read every node's state, models and activity now."""
        await self.start()
        await asyncio.gather(*(self._refresh_node(p) for p in self._nodes))

    async def probe(self) -> None:
        """Probe every node's liveness now (what the health task does each interval)."""
        await self.start()
        await asyncio.gather(*(self._probe(p) for p in self._nodes))

    async def _probe(self, pnode: PoolNode) -> None:
        """One liveness probe: the backend's cheap request, never a generation."""
        if pnode.backend is None:
            await self._refresh_node(pnode)
            return
        assert self._transport is not None
        previous = pnode.state
        response = await self._transport.probe(pnode.node, pnode.backend.health())
        self._apply_health(pnode, response)
        if pnode.state is NodeState.UP and (previous is not NodeState.UP or pnode.models is None):
            await self._refresh_node(pnode, probed=True)

    def _apply_health(self, pnode: PoolNode, response: HttpResponse) -> NodeState:
        assert pnode.backend is not None
        state = pnode.backend.health_state(response)
        previous = pnode.state
        reason = response.error or (None if response.ok else f"HTTP {response.status}")
        self._set_state(pnode, state, reason)
        if state is NodeState.UP:
            if previous in (NodeState.DOWN, NodeState.AUTH_REQUIRED):
                if pnode.breaker.reset():
                    self._emit("circuit.closed", pnode.id, data={"reason": "node is back"})
            elif pnode.breaker.probe_ok():
                self._emit("circuit.half_open", pnode.id, data={"reason": "liveness probe answered"})
            self._wake(pnode)
        return state

    async def _refresh_node(self, pnode: PoolNode, *, probed: bool = False) -> None:
        assert self._transport is not None
        transport = self._transport
        if pnode.backend is None:
            found = decide(pnode.node, await probe_node(transport, self.plugins, pnode.node), self.plugins)
            if found.backend is None:
                self._set_state(pnode, found.state, found.reason)
                return
            pnode.backend = self.plugins.backend(found.backend)
            pnode.node = pnode.node.with_backend(found.backend)
            if self._router is not None:
                self._router.invalidate()
        backend = pnode.backend
        if not probed:
            state = self._apply_health(pnode, await transport.probe(pnode.node, backend.health()))
            if state is not NodeState.UP:
                return
        try:
            models = await transport.run(pnode.node, backend.models())
        except SollolError as exc:
            log.warning("could not read the models of %s: %s", pnode.id, exc)
        else:
            fresh = {model_key(m.name): m for m in models}
            if fresh != pnode.models:
                pnode.models = fresh
                if self._router is not None:
                    self._router.invalidate()
        try:
            pnode.set_activity(await transport.run(pnode.node, backend.activity(), tolerant=True))
        except SollolError as exc:
            log.debug("could not read the activity of %s: %s", pnode.id, exc)

    def _set_state(self, pnode: PoolNode, state: NodeState, reason: str | None) -> None:
        if state is pnode.state:
            return
        previous = pnode.state
        pnode.state = state
        if state is not NodeState.UP:
            pnode.last_error = reason
        log.info("node %s: %s -> %s%s", pnode.id, previous.value, state.value, f" ({reason})" if reason else "")
        self._emit(
            "node." + state.value.replace("-", "_"), pnode.id, data={"reason": reason, "previous": previous.value}
        )

    def _decay(self, elapsed: float) -> None:
        """Let estimates that got no news drift back toward the cluster's."""
        assert self._router is not None
        factor = decay_factor(elapsed, self.latency_half_life)
        cluster = self._router.cluster
        for pnode in self._nodes:
            for key, stats in pnode.stats.items():
                prior = cluster.get(key)
                if prior is not None and prior is not stats:
                    stats.decay_toward(prior, factor)

    def _observed(self) -> bool:
        return bool(self._plugins.observers)  # type: ignore[union-attr]  # started: loaded

    def _emit(
        self, kind: str, node: str | None = None, model: str | None = None, data: Mapping[str, Any] | None = None
    ) -> None:
        self._note(
            ActivityEvent(kind=kind, node=node, model=model, data=data if type(data) is dict else dict(data or {}))
        )
        if not kind.startswith("request."):  # a node, circuit or model change: rare, and news at once
            self.deliver_activity()

    def _note(self, entry: RequestRecord | ActivityEvent) -> None:
        """Keep `entry` for the observers: they get it within `DELIVERY_DELAY` seconds (a node,
        circuit or model change at once, with everything before it).

        Delivering in batches (every `DELIVERY_DELAY`, or at `JOURNAL_LIMIT` entries) gives each
        observer the requests of a busy moment in one call, so what an observer spends per call
        is spread over many requests, and its code and data are in the CPU's caches for all of them.
        """
        journal = self._journal
        journal.append(entry)
        if self._delivery is None or len(journal) >= JOURNAL_LIMIT:
            self._schedule_delivery()

    def _schedule_delivery(self) -> None:
        if len(self._journal) >= JOURNAL_LIMIT:
            self.deliver_activity()
            return
        loop = self._loop
        if loop is None or loop.is_closed():
            self.deliver_activity()
        else:
            self._delivery = loop.call_later(DELIVERY_DELAY, self._deliver_in_time)

    def _deliver_in_time(self) -> None:
        self._delivery = None
        self.deliver_activity()

    def deliver_activity(self) -> None:
        """Hand the observers what happened since the last delivery, now (a reader of what they
        count calls this first; the pool calls it every `DELIVERY_DELAY` while there is news)."""
        journal = self._journal
        if journal:
            self._journal = []
            self.plugins.deliver(journal)

    def nodes(self) -> list[dict[str, Any]]:
        """What the pool knows of each node, as JSON objects."""
        return (
            [p.snapshot() for p in self._nodes]
            if self._nodes
            else [{"id": n.id, "url": n.url, "backend": n.backend, "state": "unknown"} for n in self._given]
        )

    def models(self) -> list[str]:
        """Every model some node serves, and every alias that resolves to one."""
        names: dict[str, str] = {}
        for pnode in self._nodes:
            for name in pnode.model_names():
                names.setdefault(model_key(name), name)
        if self._router is not None:
            for alias in self.aliases:
                if self._router.index.by_key.get(model_key(alias)):
                    names.setdefault(model_key(alias), alias)
        return sorted(names.values())

    def queued(self) -> int:
        """Requests waiting for a free node now."""
        return len(self._queue)

    # -- the API -------------------------------------------------------------------------------

    @overload
    async def chat(
        self,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        *,
        stream: Literal[False] = ...,
        options: Mapping[str, Any] | None = ...,
        **params: Any,
    ) -> ChatResult: ...
    @overload
    async def chat(
        self,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        *,
        stream: Literal[True],
        options: Mapping[str, Any] | None = ...,
        **params: Any,
    ) -> AsyncIterator[Chunk]: ...
    async def chat(
        self,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        *,
        stream: bool = False,
        options: Mapping[str, Any] | None = None,
        **params: Any,
    ) -> ChatResult | AsyncIterator[Chunk]:
        """Chat with `model`. With `stream=True`, an async iterator of chunks.

        `priority=` (an int, higher first) orders the request in the wait queue; it is
        not sent to the node.
        """
        priority = int(params.pop("priority", 0) or 0)
        request = ChatRequest(model=model, messages=tuple(messages), options=options or {}, params=params)  # type: ignore[arg-type]
        if stream:
            await self.start()
            return self._stream(request, priority)
        return await self._serve(request, ChatResult, priority)

    @overload
    async def generate(
        self,
        model: str,
        prompt: str = ...,
        *,
        stream: Literal[False] = ...,
        options: Mapping[str, Any] | None = ...,
        **params: Any,
    ) -> GenerateResult: ...
    @overload
    async def generate(
        self,
        model: str,
        prompt: str = ...,
        *,
        stream: Literal[True],
        options: Mapping[str, Any] | None = ...,
        **params: Any,
    ) -> AsyncIterator[Chunk]: ...
    async def generate(
        self,
        model: str,
        prompt: str = "",
        *,
        stream: bool = False,
        options: Mapping[str, Any] | None = None,
        **params: Any,
    ) -> GenerateResult | AsyncIterator[Chunk]:
        """Complete `prompt` with `model`. With `stream=True`, an async iterator of chunks."""
        priority = int(params.pop("priority", 0) or 0)
        request = GenerateRequest(model=model, prompt=prompt, options=options or {}, params=params)
        if stream:
            await self.start()
            return self._stream(request, priority)
        return await self._serve(request, GenerateResult, priority)

    async def embed(
        self, model: str, input: str | Sequence[str], *, options: Mapping[str, Any] | None = None, **params: Any
    ) -> EmbedResult:
        """Embed one text or several with `model`."""
        priority = int(params.pop("priority", 0) or 0)
        inputs = (input,) if isinstance(input, str) else tuple(input)
        request = EmbedRequest(model=model, inputs=inputs, options=options or {}, params=params)  # type: ignore[arg-type]
        return await self._serve(request, EmbedResult, priority)

    @overload
    async def serve(self, request: ChatRequest, *, priority: int | None = None) -> ChatResult: ...
    @overload
    async def serve(self, request: GenerateRequest, *, priority: int | None = None) -> GenerateResult: ...
    @overload
    async def serve(self, request: EmbedRequest, *, priority: int | None = None) -> EmbedResult: ...
    async def serve(self, request: Request, *, priority: int | None = None) -> Result:
        """Serve a request value (non-streamed)."""
        request, rank = _take_priority(request, priority)
        kind: Any = {"chat": ChatResult, "generate": GenerateResult, "embed": EmbedResult}[request.operation]
        result: Result = await self._serve(request, kind, rank)
        return result

    async def stream(
        self, request: ChatRequest | GenerateRequest, *, priority: int | None = None
    ) -> AsyncIterator[Chunk]:
        """Serve a request value as a stream."""
        await self.start()
        plain, rank = _take_priority(request, priority)
        assert isinstance(plain, (ChatRequest, GenerateRequest))
        return self._stream(plain, rank)

    async def stream_lines(
        self,
        request: ChatRequest | GenerateRequest,
        *,
        passthrough: str = "ollama",
        priority: int | None = None,
        sink: Callable[[bytes], bool] | None = None,
    ) -> AsyncIterator[Chunk | bytes]:
        """Like `stream`, but when the node that serves is of the `passthrough` kind (an
        NDJSON backend: "ollama"), its lines come as they arrived (`bytes`: one or more whole
        lines, each ending in a newline) instead of chunks: what a gateway in front of such a
        node sends on untouched. Only the lines that end the stream or carry an error are
        decoded (for the usage, the latency figures and failover); others are checked, not parsed.

        `sink`: after the first piece was taken from the iterator, ordinary lines may go to
        `sink(piece)` instead, the moment they arrive (from the connection's `data_received`,
        when the transport offers that: `sollol.gateway.http1`), without waking the consumer.
        It returns False to refuse a piece, which then comes from the iterator as usual; it
        must not block. Pieces keep their order either way.
        """
        await self.start()
        plain, rank = _take_priority(request, priority)
        assert isinstance(plain, (ChatRequest, GenerateRequest))
        return self._stream(plain, rank, passthrough, sink)

    # -- routing and failover --------------------------------------------------------------------

    def _nothing_serves(self, request: Request, needs: frozenset[str]) -> SollolError:
        assert self._router is not None
        every = self._router.targets(request)
        if every:
            capable = [t for t in every if t.serves(needs, request.operation)]
            if not capable:
                what = ", ".join(sorted(needs)) or request.operation
                return NoNodeForModelError(request.model, self.models(), f"no node's {request.model!r} supports {what}")
            return AllNodesFailedError(
                request.model,
                [
                    (
                        t.pnode.id,
                        ConnectError(
                            f"node is {t.pnode.state.value}, circuit {t.pnode.breaker.state.value}: "
                            f"{t.pnode.last_error or 'no answer'}"
                        ),
                    )
                    for t in capable
                ],
            )
        if not any(p.up for p in self._nodes):
            return AllNodesFailedError(
                request.model,
                [(p.id, ConnectError(f"node is {p.state.value}: {p.last_error or 'no answer'}")) for p in self._nodes],
            )
        detail = ""
        if not any(p.backend and request.operation in p.backend.operations for p in self._nodes):
            detail = f"no node's backend supports {request.operation}"
        return NoNodeForModelError(request.model, self.models(), detail)

    async def _acquire(
        self,
        request: Request,
        needs: frozenset[str],
        targets: Sequence[Target],
        tried: list[str],
        failures: list[tuple[str, BaseException]],
        priority: int,
        deadline: float,
    ) -> tuple[Choice, Target, bool, float]:
        """A node for the next attempt: (choice, target, holds a reservation, seconds queued)."""
        router = self._router
        assert router is not None
        eligible = router.eligible(targets, request, needs, tried)
        if eligible:
            choice, target = router.choose(eligible, request)
            return choice, target, False, 0.0
        operation = request.operation
        full = [
            t
            for t in targets
            if t.pnode.id not in tried and t.pnode.full and t.pnode.available() and t.serves(needs, operation)
        ]
        if not full:
            if failures:
                raise AllNodesFailedError(request.model, failures)
            raise self._nothing_serves(request, needs)
        timeout = min(self.queue_timeout, deadline - time.monotonic())
        if self._observed():
            self._emit(
                "request.queued",
                None,
                request.model,
                {
                    "operation": request.operation,
                    "depth": len(self._queue) + 1,
                    "priority": priority,
                    "protocol": request.protocol,
                },
            )
        began = time.monotonic()
        pnode = await self._queue.wait({t.pnode.id for t in full}, request.model, priority=priority, timeout=timeout)
        waited = time.monotonic() - began
        target = next(t for t in full if t.pnode is pnode)
        return Choice(node=pnode, score=0.0, parts=(("queued", waited),)), target, True, waited

    def _released(self, pnode: PoolNode) -> None:
        if self._queue._waiters:
            self._queue.wake(pnode)

    def _wake(self, pnode: PoolNode) -> None:
        while self._queue._waiters and self._queue.wake(pnode):
            pass

    def _exchange(self, backend: Backend, request: Request) -> Exchange[Any]:
        if isinstance(request, ChatRequest):
            return backend.chat(request)
        if isinstance(request, GenerateRequest):
            return backend.generate(request)
        return backend.embed(request)

    def _route(
        self, choice: Choice, tried: list[str], failures: list[tuple[str, BaseException]], queued: float
    ) -> Route:
        assert self._policy is not None
        return Route(
            node=choice.node.id,
            tried=tuple(tried),
            policy=self._policy.name,
            score=choice.score,
            parts=choice.parts,
            failures=tuple([(n, str(e)) for n, e in failures]) if failures else (),
            queued=queued,
        )

    def _dispatching(self, pnode: PoolNode, request: Request, route: Route) -> bool:
        """Start an attempt. True when its routing decision is left to its ending event.

        A plain first attempt (not queued) emits no `request.routed`: its `request.finished`
        or `request.failed` carries the decision (`routed: True`), so a request costs one
        event. Retries and queued requests announce it now (streams: `_dispatching_stream`).
        """
        if pnode.breaker.state is CircuitState.HALF_OPEN:
            pnode.breaker.start_trial()
        if route.queued or len(route.tried) > 1:
            if self._plugins.observers:  # type: ignore[union-attr]
                self._note(_routed(pnode, request, route))
            return False
        return True

    def _dispatching_stream(
        self, pnode: PoolNode, request: Request, route: Route
    ) -> tuple[RequestRecord, list[Any], int] | None:
        """Start a stream's attempt, and announce it (`request.routed`: a live view shows a
        stream while it runs). Returns the announcement while it waits for delivery: the
        record, the journal it waits in and its place there (None when nobody observes, or it
        went out at once). A stream that ends while its announcement still waits folds its
        ending into it (`_succeeded`): one record, as for a plain request."""
        if pnode.breaker.state is CircuitState.HALF_OPEN:
            pnode.breaker.start_trial()
        if not self._plugins.observers:  # type: ignore[union-attr]
            return None
        record = _routed(pnode, request, route)
        journal = self._journal
        journal.append(record)  # (`_note`, written out: once per stream)
        if self._delivery is None or len(journal) >= JOURNAL_LIMIT:
            self._schedule_delivery()
            if journal is not self._journal:
                return None
        return record, journal, len(journal) - 1

    def _failed(
        self,
        pnode: PoolNode,
        exc: BaseException,
        request: Request,
        target: Target,
        route: Route,
        folded: bool = False,
    ) -> bool:
        """Account a failed attempt. True when another node may be tried.

        `folded`: no `request.routed` was noted for this attempt, so the failure carries its
        routing decision.
        """
        pnode.failed += 1
        pnode.last_error = str(exc)
        retry = not (isinstance(exc, BackendError) and not exc.retryable)
        breaker = pnode.breaker
        opened = False
        if isinstance(exc, ModelNotFoundError):
            # The inventory was stale: forget the model there; the node itself is fine.
            if pnode.models is not None and pnode.models.pop(target.key, None) is not None and self._router is not None:
                self._router.invalidate()
        elif isinstance(exc, OverloadedError):
            pass  # busy, not broken
        elif isinstance(exc, UnavailableError):
            self._set_state(pnode, NodeState.LOADING, str(exc))  # not dead: probes bring it back
        elif isinstance(exc, AuthenticationError):
            self._set_state(pnode, NodeState.AUTH_REQUIRED, str(exc))
        elif isinstance(exc, ConnectError) and "ConnectError" in str(exc):
            # Refused or unreachable (httpx's ConnectError): the node is down.
            self._set_state(pnode, NodeState.DOWN, str(exc))
            opened = breaker.failure(str(exc), trip=True)
        elif isinstance(exc, (ConnectError, NodeTimeoutError)):
            opened = breaker.failure(str(exc), trip=True)
        elif retry:
            opened = breaker.failure(str(exc))
        if opened:
            self._emit("circuit.opened", pnode.id, data={"reason": str(exc), "failures": breaker.consecutive})
        if self._observed():
            self._note(
                RequestRecord(
                    kind="request.failed",
                    node=pnode.id,
                    model=request.model,
                    operation=request.operation,
                    protocol=request.protocol,
                    at=_now(),
                    route=route,
                    routed=folded,
                    attempt=len(route.tried),
                    error=type(exc).__name__,
                    reason=str(exc),
                    retry=retry,
                )
            )
        return retry

    def _succeeded(
        self,
        pnode: PoolNode,
        target: Target,
        request: Request,
        route: Route,
        elapsed: float,
        usage: Usage | None,
        first: float | None,
        chunks: int,
        waited: bool = False,
        folded: bool = False,
        announced: tuple[RequestRecord, list[Any], int] | None = None,
    ) -> None:
        """Account a served request: breaker, warmth, latency.

        `folded`: no `request.routed` was emitted for this attempt, so `request.finished`
        carries the routing decision too (`routed: True`): one event for the request.

        `announced`: a stream's `request.routed`, if it is still waiting for delivery (see
        `_dispatching_stream`): the ending takes its place, with the routing decision (`routed: True`)
        and its time (`at`, when it was routed, so the journal stays in time order): observers
        get one record for a stream that ended within a delivery, as for a plain request.

        `waited`: the node was at its parallel slots when the request was sent, so the time
        to the first byte includes waiting in the node's own queue: not a service time.
        """
        pnode.served += 1
        breaker = pnode.breaker
        sent = time.monotonic() - elapsed
        if breaker.state is not CircuitState.CLOSED:
            if breaker.success(sent):
                self._emit("circuit.closed", pnode.id, data={"reason": "a request succeeded"})
        elif sent >= breaker.failed_at:  # one sent before the last failure says nothing about now
            breaker.consecutive = 0
        if pnode.loaded_keys is not None:
            pnode.loaded_keys.add(target.key)
        load = usage.load_duration if usage is not None else None
        if load and load > 0:
            pnode.load_cost.observe(load)
        else:
            load = 0.0
        tokens = usage.completion_tokens if usage is not None else None
        if request.operation != "embed":
            stats = target.stats
            if first is not None:
                ttft: float | None = max(first - load, 0.0) if not waited else None
                per_token = (elapsed - first) / (chunks - 1) if chunks > 1 else None
            elif waited:
                ttft = per_token = None
            else:
                ttft, per_token = split_timing(max(elapsed - load, 0.0), tokens, stats)
            stats.fold(ttft, per_token, tokens)
            assert self._router is not None
            cluster = self._router.cluster
            shared = cluster.get(target.key)
            if shared is None:
                shared = cluster[target.key] = ModelStats(stats.ttft, stats.per_token, stats.tokens)
            shared.fold(ttft, per_token, tokens)
        if self._plugins.observers:  # type: ignore[union-attr]  # (a call less than `_observed()`)
            # Every served request passes here: the record is built as a plain tuple (its fields
            # in order, see RequestRecord), a fifth of the cost of an event and its dict, and
            # noted as `_note` does, without the call.
            journal = self._journal
            place = -1
            if announced is not None and announced[1] is journal:
                at, folded, place = announced[0].at, True, announced[2]
            else:
                at = _now()
            record = _record(
                RequestRecord,
                (
                    "request.finished",
                    pnode.id,
                    request.model,
                    request.operation,
                    request.protocol,
                    at,
                    route,
                    folded,
                    len(route.tried),
                    elapsed,
                    first,
                    chunks,
                    load,
                    None,
                    None,
                    None,
                ),
            )
            if place >= 0:
                journal[place] = record  # the stream's announcement, not yet delivered, becomes its ending
                return
            journal.append(record)
            if self._delivery is None or len(journal) >= JOURNAL_LIMIT:
                self._schedule_delivery()

    def _begin(self, request: Request) -> tuple[frozenset[str], list[Target]]:
        assert self._router is not None
        needs = needs_of(request)
        targets = self._router.targets(request)
        if not targets:
            raise self._nothing_serves(request, needs)
        return needs, targets

    async def _serve(self, request: Request, kind: type[R], priority: int = 0) -> R:
        if self._closed:
            raise PoolClosedError("this pool is closed")
        await self.start()
        transport = self._transport
        assert transport is not None
        needs, targets = self._begin(request)
        deadline = time.monotonic() + self.deadline
        tried: list[str] = []
        failures: list[tuple[str, BaseException]] = []
        queued = 0.0
        while True:
            choice, target, reserved, waited = await self._acquire(
                request, needs, targets, tried, failures, priority, deadline
            )
            queued += waited
            pnode = target.pnode
            backend = pnode.backend
            assert backend is not None
            tried.append(pnode.id)
            route = self._route(choice, tried, failures, queued)
            folded = self._dispatching(pnode, request, route)
            local = request if target.name == request.model else attrs.evolve(request, model=target.name)
            waited = pnode.load - reserved >= pnode.slots
            started = time.perf_counter()
            try:
                with pnode.lease(reserved=reserved):
                    result = await transport.run(pnode.node, self._exchange(backend, local))
            except (BackendError, ProtocolError) as exc:
                if isinstance(exc, BackendError):
                    exc.at(pnode.id)
                if not self._failed(pnode, exc, request, target, route, folded):
                    raise
                failures.append((pnode.id, exc))
                if len(tried) >= self.max_attempts or time.monotonic() >= deadline:
                    raise AllNodesFailedError(request.model, failures) from exc
                continue
            elapsed = time.perf_counter() - started
            self._succeeded(pnode, target, request, route, elapsed, result.usage, None, 0, waited, folded)
            return _placed_result(result, pnode.node, route)  # type: ignore[no-any-return]

    async def _stream(
        self,
        request: ChatRequest | GenerateRequest,
        priority: int = 0,
        passthrough: str | None = None,
        sink: Callable[[bytes], bool] | None = None,
    ) -> AsyncIterator[Any]:
        if self._closed:
            raise PoolClosedError("this pool is closed")
        transport = self._transport
        assert transport is not None
        needs, targets = self._begin(request)
        deadline = time.monotonic() + self.deadline
        tried: list[str] = []
        failures: list[tuple[str, BaseException]] = []
        queued = 0.0
        while True:
            choice, target, reserved, waited = await self._acquire(
                request, needs, targets, tried, failures, priority, deadline
            )
            queued += waited
            pnode = target.pnode
            backend = pnode.backend
            assert backend is not None
            tried.append(pnode.id)
            local = request if target.name == request.model else attrs.evolve(request, model=target.name)
            plan: StreamPlan = (
                backend.chat_stream(local) if isinstance(local, ChatRequest) else backend.generate_stream(local)
            )
            route = self._route(choice, tried, failures, queued)
            announced = self._dispatching_stream(pnode, request, route)
            sent = 0
            first: float | None = None
            usage: Usage | None = None
            done = False
            waited = pnode.load - reserved >= pnode.slots
            started = time.perf_counter()
            try:
                with pnode.lease(reserved=reserved):
                    async with transport.stream(pnode.node, plan.request) as response:
                        if not 200 <= response.status < 300:
                            raise backend.error(await response.read())
                        decoder = plan.decoder()
                        if passthrough is not None and backend.name == passthrough:
                            rest = b""
                            finish: Callable[[], None] | None = getattr(response, "finish", None)
                            take: Callable[[bytes], bool] | None = None
                            sinking = False  # the consumer has the first piece: `sink` may go on

                            if sink is not None:

                                def take(data: bytes) -> bool:
                                    # Runs in the node connection's `data_received`: only whole
                                    # ordinary lines, with nothing held over, go to the sink. It
                                    # reads `sinking` and `rest` as they are at that moment.
                                    nonlocal sent
                                    if not sinking or rest or not data.endswith(b"\n"):  # noqa: B023
                                        return False
                                    lines = data.count(b"\n")
                                    if _ordinary_lines(data) != lines or not sink(data):
                                        return False
                                    sent += lines
                                    return True

                            async for piece in response.pieces(take):
                                if rest:
                                    piece = rest + piece
                                end = piece.rfind(b"\n") + 1
                                if not end:
                                    rest = piece
                                    continue
                                rest = piece[end:]
                                whole = piece[:end] if rest else piece
                                lines = whole.count(b"\n")
                                if first is None:
                                    first = time.perf_counter() - started
                                ordinary = _ordinary_lines(whole)
                                if ordinary == lines:
                                    sent += lines
                                    yield whole
                                    sinking = True
                                    continue
                                # Some line ends the stream or carries an error: only such lines
                                # are decoded; the lines before any error go on as one piece.
                                # Usually it is the last line alone: the others are ordinary.
                                good: list[bytes] = []
                                failure: BackendError | ProtocolError | None = None
                                if ordinary == lines - 1 and not whole.endswith(_ORDINARY_END):
                                    cut = whole.rfind(b"\n", 0, len(whole) - 1) + 1
                                    if cut:
                                        good.append(whole[:cut])
                                    rest_lines = [whole[cut:]]
                                else:
                                    rest_lines = whole.splitlines(keepends=True)
                                for line in rest_lines:
                                    if _ordinary_lines(line) == 1:
                                        good.append(line)
                                        continue
                                    try:
                                        decoded = decoder.feed(line)  # an in-band error raises here
                                    except (BackendError, ProtocolError) as exc:
                                        failure = exc
                                        break
                                    for chunk in decoded:
                                        if chunk.usage is not None:
                                            usage = chunk.usage
                                        done = done or chunk.done
                                    if decoded:
                                        good.append(line)
                                if good:
                                    passed = b"".join(good)
                                    sent += passed.count(b"\n")
                                    yield passed
                                    sinking = True
                                if failure is not None:
                                    raise failure
                                if done and not rest and finish is not None:
                                    finish()  # the final line came: the body's end is not waited for
                            for chunk in decoder.feed(rest) + decoder.close():  # close: was there a done line?
                                sent += 1
                                if chunk.usage is not None:
                                    usage = chunk.usage
                                done = done or chunk.done
                                yield rest + b"\n"
                            rest = b""
                        else:
                            async for piece in response.pieces():
                                for chunk in decoder.feed(piece):
                                    if first is None:
                                        first = time.perf_counter() - started
                                    if chunk.usage is not None:
                                        usage = chunk.usage
                                    sent += 1
                                    done = chunk.done
                                    yield _placed(chunk, pnode.node, route)
                            for chunk in decoder.close():
                                if first is None:
                                    first = time.perf_counter() - started
                                if chunk.usage is not None:
                                    usage = chunk.usage
                                sent += 1
                                done = chunk.done
                                yield _placed(chunk, pnode.node, route)
            except (BackendError, ProtocolError) as exc:
                if isinstance(exc, BackendError):
                    exc.at(pnode.id)
                retry = self._failed(pnode, exc, request, target, route)
                if sent:
                    raise StreamInterruptedError(
                        f"the stream from {pnode.id} broke after {sent} chunks: {exc}",
                        node=pnode.id,
                        status=getattr(exc, "status", 0),
                    ) from exc
                if not retry:
                    raise
                failures.append((pnode.id, exc))
                if len(tried) >= self.max_attempts or time.monotonic() >= deadline:
                    raise AllNodesFailedError(request.model, failures) from exc
                continue
            except GeneratorExit:
                if sent and done:  # closed right after the final chunk (the gateway's SSE does): served
                    elapsed = time.perf_counter() - started
                    self._succeeded(
                        pnode, target, request, route, elapsed, usage, first, sent, waited, False, announced
                    )
                raise
            elapsed = time.perf_counter() - started
            self._succeeded(pnode, target, request, route, elapsed, usage, first, sent, waited, False, announced)
            return


def _routed(pnode: PoolNode, request: Request, route: Route) -> RequestRecord:
    """An attempt's `request.routed` record."""
    return _record(
        RequestRecord,
        (
            "request.routed",
            pnode.id,
            request.model,
            request.operation,
            request.protocol,
            _now(),
            route,
            True,
            len(route.tried),
            None,
            None,
            0,
            0.0,
            None,
            None,
            None,
        ),
    )


_ORDINARY_END = b'"done":false}\n'


def _ordinary_lines(data: bytes) -> int:
    """How many of the NDJSON lines in `data` are ordinary ones, -1 when any may carry an error.

    Ollama ends every line but the last of a stream with `"done":false}` (its own compact
    framing, `done` the last key); a quote inside a JSON string is escaped, so `"done":false}`
    and `"error"` match keys only. Two scans of the piece tell which lines need no parsing to
    be passed on; a line framed any other way falls to the full decode."""
    return data.count(_ORDINARY_END) if b'"error"' not in data else -1


def _placed_result(result: Any, node: Node, route: Route) -> Any:
    """`result` with where it was served. The codec built it for this call alone and nothing
    else holds it yet, so its two fields are filled in place (past the frozen guard, as attrs'
    own `__attrs_post_init__` idiom does) instead of copying it with `attrs.evolve`."""
    set_attribute = object.__setattr__
    set_attribute(result, "node", node)
    set_attribute(result, "route", route)
    return result


def _placed(chunk: Chunk, node: Node, route: Route) -> Chunk:
    """`chunk` with where it came from: `attrs.evolve` without its generic cost (once per streamed chunk)."""
    return type(chunk)(
        text=chunk.text,
        thinking=chunk.thinking,
        tool_calls=chunk.tool_calls,
        done=chunk.done,
        done_reason=chunk.done_reason,
        usage=chunk.usage,
        model=chunk.model,
        raw=chunk.raw,
        node=node,
        route=route,
    )


def _take_priority(request: Request, priority: int | None) -> tuple[Request, int]:
    """The request without a `priority` param (never sent to a node), and the priority."""
    if "priority" in request.params:
        params = dict(request.params)
        given = params.pop("priority")
        request = attrs.evolve(request, params=params)
        if priority is None:
            priority = int(given or 0)
    return request, priority or 0


__all__ = ["AsyncPool", "Node"]
