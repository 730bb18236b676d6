"""Routing benchmark: one trace through emulated Ollama clusters, every policy against a clairvoyant bound.

    python benchmarks/routing.py            # the full run (about 2.5 minutes on 2 cores)
    python benchmarks/routing.py --quick    # a short smoke run
    nox -s bench_routing

The cluster (loopback only, `OllamaEmulator`s served by a separate process, so the load
generator's CPU does not slow the nodes down): nodes of different token speed and
parallel slots, two models loaded on some nodes and only on disk on others (a cold load
costs LOAD_TIME seconds: scaled down from the 10-30 s of real models, like every other
figure here), a prefix cache per node (a prompt whose conversation start the node has
seen recently skips most of its prefill), a Poisson arrival stream with bursts, and one
node that fails every generation for a stretch in the middle of the run and then
recovers. Every node is declared with its parallel slots (a `parallel` label, what an
operator knows from OLLAMA_NUM_PARALLEL); no pool-side concurrency limit is set, so each
node queues what it cannot run at once, as Ollama does. Each policy gets a fresh cluster.

The clairvoyant bound is a greedy policy with exact knowledge: the node process writes
each node's real state to shared memory (which request runs where and when it will
finish at the pace the node really achieves, which wait for a slot, which models are
loaded and when a load in progress ends, whether the node is failing now), and the
bound sends each request where it would finish first. It runs in the same invocation,
side by side with the real policies, on the same trace.

A run offers the whole trace, then waits at most `--drain` seconds for the backlog; a
request still unfinished then is cut off and counted (`unfinished`) with the time it had
waited so far, so a policy that falls behind shows a p99 that is a lower bound on its real
one (marked `>=`).

A second part measures one routing decision (filter + score + pick) at 10, 100 and 1000
nodes, without I/O: the median of several repeats of many decisions each.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import heapq
import json
import logging
import math
import multiprocessing
import random
import statistics
import sys
import time
from collections import OrderedDict
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

import attrs

from sollol.activity import Activity, LoadedModel, ModelInfo
from sollol.inference import ChatRequest, Request
from sollol.node import Node
from sollol.plugins import Plugins
from sollol.pool import AsyncPool
from sollol.routing import Choice, PoolNode, Router, needs_of
from sollol.testing.emulator import EmulatedModel, EmulatorConfig, EmuRequest, EmuResponse, Fault
from sollol.testing.servers import LoopbackServers
from sollol_ollama.emulator import OllamaEmulator

MODEL_A = "llama3.2:3b"
MODEL_B = "qwen2.5:7b"
TOKENS = 16  # tokens per answer
LOAD_TIME = 1.5  # seconds for a cold load
PREFILL = 0.03  # seconds of prefill for a conversation start the node has not cached
CACHED_PREFILL = 0.003
PREFIX_CACHE = 6  # conversation starts each node keeps
MODELS = (MODEL_A, MODEL_B)
FAILING = "flaky"
FAIL_WINDOW = (0.35, 0.55)  # as fractions of the trace's length


@attrs.frozen
class NodePlan:
    """One emulated node."""

    name: str
    token_delay: float
    parallel: int
    models: tuple[tuple[str, bool], ...]  # (model, loaded at start)
    latency: float = 0.01


CLUSTER = (
    NodePlan("fast-1", 0.004, 4, ((MODEL_A, True), (MODEL_B, False))),
    NodePlan("fast-2", 0.004, 4, ((MODEL_A, True), (MODEL_B, True))),
    NodePlan("mid", 0.008, 2, ((MODEL_A, True),)),
    NodePlan("slow-1", 0.02, 2, ((MODEL_A, True), (MODEL_B, False))),
    NodePlan("slow-2", 0.02, 1, ((MODEL_A, False),)),
    NodePlan("flaky", 0.005, 2, ((MODEL_A, True),)),
)


# -- the board: what the nodes tell the clairvoyant, through shared memory -----------------------

#: Phases of a request on the board.
UNSEEN, ARRIVED, RUNNING, DONE = 0.0, 1.0, 2.0, 3.0
_NODE_FIELDS = 2 + 2 * len(MODELS)  # failing, seconds per token, loaded per model, load ready at per model
_REQUEST_FIELDS = 3  # node index + 1, phase, expected finish (time.monotonic, shared by all processes)


class Board:
    """A flat array of doubles in shared memory: per node and per request, written only by the nodes.

    Each slot is one aligned 8-byte double with a single writer, so a reader in another
    process never sees a torn value. CLOCK_MONOTONIC is system-wide, so finish times
    written by the node process mean the same in the client process.
    """

    def __init__(self, array: Any, requests: int) -> None:
        self.array = array
        self.requests = requests
        self.base = len(CLUSTER) * _NODE_FIELDS

    @staticmethod
    def size(requests: int) -> int:
        return len(CLUSTER) * _NODE_FIELDS + requests * _REQUEST_FIELDS

    # nodes
    def failing(self, node: int) -> bool:
        return bool(self.array[node * _NODE_FIELDS])

    def set_failing(self, node: int, on: bool) -> None:
        self.array[node * _NODE_FIELDS] = 1.0 if on else 0.0

    def pace(self, node: int) -> float:
        return float(self.array[node * _NODE_FIELDS + 1])

    def set_pace(self, node: int, seconds: float) -> None:
        self.array[node * _NODE_FIELDS + 1] = seconds

    def loaded(self, node: int, model: int) -> bool:
        return bool(self.array[node * _NODE_FIELDS + 2 + model])

    def set_loaded(self, node: int, model: int, on: bool) -> None:
        self.array[node * _NODE_FIELDS + 2 + model] = 1.0 if on else 0.0

    def ready_at(self, node: int, model: int) -> float:
        return float(self.array[node * _NODE_FIELDS + 2 + len(MODELS) + model])

    def set_ready_at(self, node: int, model: int, at: float) -> None:
        self.array[node * _NODE_FIELDS + 2 + len(MODELS) + model] = at

    # requests
    def request(self, rid: int) -> tuple[int, float, float]:
        at = self.base + rid * _REQUEST_FIELDS
        array = self.array
        return int(array[at]) - 1, array[at + 1], array[at + 2]

    def set_request(self, rid: int, node: int, phase: float, finish: float) -> None:
        at = self.base + rid * _REQUEST_FIELDS
        array = self.array
        array[at + 2] = finish
        array[at] = node + 1
        array[at + 1] = phase  # last: a reader that sees the phase sees the rest


_prefill: contextvars.ContextVar[float] = contextvars.ContextVar("prefill", default=0.0)
_rid: contextvars.ContextVar[int] = contextvars.ContextVar("rid", default=-1)
_tokens_from: contextvars.ContextVar[float] = contextvars.ContextVar("tokens_from", default=0.0)


def request_id(messages: Sequence[Any]) -> int:
    """The trace index a chat carries in its last message ("question N")."""
    try:
        return int(str(messages[-1].get("content", "")).rsplit(" ", 1)[-1])
    except (ValueError, IndexError, AttributeError):
        return -1


class BenchEmulator(OllamaEmulator):
    """Ollama, emulated, with a per-node prefix cache, a count of cold loads, and its exact state on the board."""

    def __init__(self, plan: NodePlan, index: int, board: Board) -> None:
        models = [EmulatedModel(name=name, loaded=loaded, capabilities=("completion",)) for name, loaded in plan.models]
        super().__init__(
            EmulatorConfig(
                models=models,
                name=plan.name,
                token_delay=plan.token_delay,
                latency=plan.latency,
                load_time=LOAD_TIME,
                parallel=plan.parallel,
                max_tokens=TOKENS,
                reply="a " * TOKENS,
            )
        )
        self.plan = plan
        self.index = index
        self.board = board
        self.cache: OrderedDict[str, None] = OrderedDict()
        self.cold_loads = 0
        self.per_token = plan.token_delay  # measured: seconds per token as the node really runs
        self.left: dict[int, int] = {}  # tokens still to come, by request id
        board.set_pace(index, plan.token_delay)
        for name, loaded in plan.models:
            board.set_loaded(index, MODELS.index(name), loaded)

    def fail(self, on: bool) -> None:
        """Start or stop failing every generation (called from the node process's main thread)."""
        if on:
            self.inject(Fault.error(500, {"error": "CUDA error: an illegal memory access"}, times=None))
        else:
            self.clear_faults()
        self.board.set_failing(self.index, on)

    def prefill_for(self, key: str) -> float:
        if key in self.cache:
            self.cache.move_to_end(key)
            return CACHED_PREFILL
        self.cache[key] = None
        if len(self.cache) > PREFIX_CACHE:
            self.cache.popitem(last=False)
        return PREFILL

    async def chat(self, request: EmuRequest) -> EmuResponse:
        try:
            messages = json.loads(request.body).get("messages") or []
            key = str(messages[0].get("content")) if messages else ""
        except (ValueError, AttributeError):
            messages, key = [], ""
        rid = request_id(messages)
        _prefill.set(self.prefill_for(key))
        _rid.set(rid)
        if rid >= 0:
            self.board.set_request(rid, self.index, ARRIVED, 0.0)
        return await super().chat(request)

    async def work(self, model: EmulatedModel | None) -> float:
        # Called once the request holds a slot: publish when it will finish, then do the work.
        rid, prefill = _rid.get(), _prefill.get()
        now = time.monotonic()
        start = now + self.config.latency
        if model is not None and not model.loaded:
            slot = MODELS.index(model.name)
            ready = self.board.ready_at(self.index, slot)
            if not ready:
                ready = start + LOAD_TIME
                self.board.set_ready_at(self.index, slot, ready)
            start = max(start, ready)
        if rid >= 0:
            self.left[rid] = TOKENS
            self.board.set_request(rid, self.index, RUNNING, start + prefill + TOKENS * self.per_token)
        spent = await super().work(model)
        if spent:
            self.cold_loads += 1
        if model is not None:
            self.board.set_loaded(self.index, MODELS.index(model.name), True)
        if prefill:
            await asyncio.sleep(prefill)
        if rid >= 0:
            self.left[rid] = TOKENS
            self.board.set_request(rid, self.index, RUNNING, time.monotonic() + TOKENS * self.per_token)
            _tokens_from.set(time.monotonic())
        return spent

    async def pace(self) -> None:
        await super().pace()
        rid = _rid.get()
        left = self.left.get(rid)
        if left is not None:
            left -= 1
            self.left[rid] = left
            if left <= 0:
                # the measured seconds per token of this request, folded into the node's figure
                took = (time.monotonic() - _tokens_from.get()) / TOKENS
                self.per_token += 0.2 * (took - self.per_token)
                self.board.set_pace(self.index, self.per_token)
            self.board.set_request(rid, self.index, RUNNING, time.monotonic() + left * self.per_token)

    def leave(self) -> None:
        super().leave()
        rid = _rid.get()
        if rid >= 0 and self.left.pop(rid, None) is not None:
            self.board.set_request(rid, self.index, DONE, time.monotonic())


def serve_nodes(conn: Connection, array: Any, requests: int) -> None:
    """The node process: serve the cluster on loopback, run the failure schedule, report cold loads."""
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)  # requests cut off by the drain cap
    board = Board(array, requests)
    with LoopbackServers() as servers:
        emulators = [BenchEmulator(plan, index, board) for index, plan in enumerate(CLUSTER)]
        conn.send([servers.start(emu).port for emu in emulators])
        message = conn.recv()
        if message[0] == "go":
            _, began, length = message
            flaky = emulators[[p.name for p in CLUSTER].index(FAILING)]
            for at, on in ((FAIL_WINDOW[0], True), (FAIL_WINDOW[1], False)):
                time.sleep(max(0.0, began + at * length - time.monotonic()))
                flaky.fail(on)
            conn.recv()
        conn.send([emu.cold_loads for emu in emulators])


# -- the trace ----------------------------------------------------------------------------------


@attrs.frozen
class Arrival:
    at: float
    model: str
    conversation: str
    question: str
    stream: bool


def make_trace(count: int, rate: float, seed: int = 7) -> list[Arrival]:
    """Poisson arrivals at `rate`, with a burst of 30 every 4 s; 15% model B; 40% share 5 prefixes."""
    rng = random.Random(seed)
    trace: list[Arrival] = []
    now = 0.0
    next_burst = 2.0
    while len(trace) < count:
        now += rng.expovariate(rate)
        batch = 1
        if now >= next_burst:
            batch, next_burst = 30, next_burst + 4.0
        for _ in range(batch):
            index = len(trace)
            model = MODEL_B if rng.random() < 0.15 else MODEL_A
            shared = rng.random() < 0.4
            conversation = f"You are assistant #{rng.randrange(5)}. " * 8 if shared else f"Unique context {index}. " * 8
            trace.append(Arrival(now, model, conversation, f"question {index}", rng.random() < 0.2))
    return trace[:count]


# -- the clairvoyant bound --------------------------------------------------------------------------


class Clairvoyant:
    """Greedy with exact knowledge: each request to the node where it would finish first.

    It reads the nodes' own state from the board (which requests each node runs and when
    each will finish at the pace the node really runs, which are queued, which models are
    loaded and when a load in progress ends, whether the node is failing right now) and
    adds the requests it has sent that have not reached their node yet. For each
    candidate it replays that node's FIFO queue over its parallel slots, then places the
    new request (its prefill known from the node's prefix cache, mirrored) and takes the
    earliest finish.
    """

    name = "clairvoyant"

    def __init__(self, board: Board) -> None:
        self.board = board
        self.index = {plan.name: i for i, plan in enumerate(CLUSTER)}
        self.sent: list[dict[int, tuple[int, float]]] = [{} for _ in CLUSTER]  # rid -> (model, prefill)
        self.where: dict[int, int] = {}
        self.cache: list[OrderedDict[str, None]] = [OrderedDict() for _ in CLUSTER]

    def _prefill(self, node: int, key: str, commit: bool) -> float:
        cache = self.cache[node]
        if key in cache:
            if commit:
                cache.move_to_end(key)
            return CACHED_PREFILL
        if commit:
            cache[key] = None
            if len(cache) > PREFIX_CACHE:
                cache.popitem(last=False)
        return PREFILL

    def finish(self, node: int, model: int, prefill: float, now: float) -> float:
        """When a request sent to `node` now would finish there."""
        board = self.board
        plan = CLUSTER[node]
        pace = board.pace(node)
        slots: list[float] = []
        waiting: list[tuple[int, float]] = []
        sent = self.sent[node]
        for rid in list(sent):
            at, phase, finish = board.request(rid)
            if phase == DONE or (phase != UNSEEN and at != node):
                del sent[rid]
            elif phase == RUNNING:
                slots.append(finish if finish > now else now)
            else:
                waiting.append(sent[rid])  # in flight to the node, or queued for a slot there
        slots.extend([now] * (plan.parallel - len(slots)))
        heapq.heapify(slots)
        ready: dict[int, float] = {}

        def run(model: int, prefill: float, start: float) -> float:
            begin = start + plan.latency
            if not board.loaded(node, model):
                at = ready.get(model) or board.ready_at(node, model) or begin + LOAD_TIME
                ready[model] = at
                begin = max(begin, at)
            return begin + prefill + TOKENS * pace

        for m, p in waiting:
            heapq.heappush(slots, run(m, p, heapq.heappop(slots)))
        return run(model, prefill, heapq.heappop(slots))

    def choose(self, candidates: Sequence[PoolNode], request: Request, rng: random.Random) -> Choice:
        now = time.monotonic()
        assert isinstance(request, ChatRequest)
        key = str(request.messages[0].get("content"))
        rid = request_id(request.messages)
        model = MODELS.index(request.model)
        best: tuple[float, PoolNode, int] | None = None
        for pnode in candidates:
            node = self.index[pnode.id]
            if self.board.failing(node):
                continue
            finish = self.finish(node, model, self._prefill(node, key, commit=False), now)
            if best is None or finish < best[0] - 1e-9 or (abs(finish - best[0]) <= 1e-9 and rng.random() < 0.5):
                best = (finish, pnode, node)
        if best is None:  # only a failing node is left: it fails, and the pool fails over
            return Choice(node=candidates[0])
        finish, pnode, node = best
        previous = self.where.pop(rid, None)
        if previous is not None:
            self.sent[previous].pop(rid, None)
        self.where[rid] = node
        self.sent[node][rid] = (model, self._prefill(node, key, commit=True))
        return Choice(node=pnode, score=-(finish - now), parts=(("finish", finish - now),))


# -- one run ----------------------------------------------------------------------------------------


@attrs.frozen
class Outcome:
    policy: str
    p50: float
    p99: float
    throughput: float
    completed: int
    failed: int
    unfinished: int  # still running when the drain cap ended the run: their latency counts as a lower bound
    cold_loads: int
    retried: int
    seconds: float


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return ordered[index]


async def drive(policy_name: str, trace: Sequence[Arrival], plugins: Plugins, drain: float) -> Outcome:
    """One policy through the whole trace, against a fresh cluster in its own process."""
    wall = time.monotonic()
    context = multiprocessing.get_context("spawn")
    array = context.RawArray("d", Board.size(len(trace)))
    board = Board(array, len(trace))
    here, there = context.Pipe()
    process = context.Process(target=serve_nodes, args=(there, array, len(trace)), daemon=True)
    process.start()
    try:
        ports = here.recv()
        nodes = [
            Node(
                host="127.0.0.1",
                port=port,
                backend="ollama",
                name=plan.name,
                labels=(("parallel", str(plan.parallel)),),
            )
            for plan, port in zip(CLUSTER, ports)
        ]
        policy: Any = Clairvoyant(board) if policy_name == "clairvoyant" else policy_name
        pool = AsyncPool(
            nodes,
            plugins=plugins,
            policy=policy,
            health_interval=0.5,
            refresh_interval=2.0,
            latency_half_life=10.0,
            failure_threshold=3,
            max_attempts=3,
            seed=1,
        )
        latencies: list[float] = []
        failed = 0
        retried = 0
        length = trace[-1].at
        async with pool:
            began = time.monotonic() + 0.2
            here.send(("go", began, length))

            async def one(arrival: Arrival) -> None:
                nonlocal failed, retried
                messages = [
                    {"role": "system", "content": arrival.conversation},
                    {"role": "user", "content": arrival.question},
                ]
                try:
                    if arrival.stream:
                        route = None
                        async for chunk in await pool.chat(arrival.model, messages, stream=True):
                            route = chunk.route
                    else:
                        route = (await pool.chat(arrival.model, messages)).route
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # counted and reported: a benchmark must not stop on one
                    failed += 1
                    print(f"  failed: {type(exc).__name__}: {exc}"[:300], file=sys.stderr)
                    return
                if route is not None and len(route.tried) > 1:
                    retried += 1
                latencies.append(time.monotonic() - (began + arrival.at))

            tasks: dict[asyncio.Task[None], Arrival] = {}
            for arrival in trace:
                delay = began + arrival.at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks[asyncio.create_task(one(arrival))] = arrival
            _, pending = await asyncio.wait(tasks, timeout=drain)
            cutoff = time.monotonic()
            elapsed = (max(began + length, cutoff) if pending else cutoff) - began
            censored = [cutoff - (began + tasks[task].at) for task in pending]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        here.send(("stop",))
        cold = sum(here.recv())
    finally:
        process.join(timeout=10)
        if process.is_alive():
            process.terminate()
    done = len(latencies)
    return Outcome(
        policy=policy_name,
        p50=percentile(latencies + censored, 0.5),
        p99=percentile(latencies + censored, 0.99),
        throughput=done / elapsed,
        completed=done,
        failed=failed,
        unfinished=len(censored),
        cold_loads=cold,
        retried=retried,
        seconds=time.monotonic() - wall,
    )


# -- decision cost ----------------------------------------------------------------------------------


class _Ollamaish:
    name = "ollama"
    operations = frozenset({"chat", "generate", "embed"})


def decision_cost(count: int, policy: Any, repeat: int = 2000, rounds: int = 9) -> float:
    """Microseconds for one filter + score + pick among `count` nodes that all serve the model.

    The median over `rounds` timings of `repeat` decisions each (timeit-style), with the
    in-flight counts changing between decisions as they do under load.
    """
    rng = random.Random(3)
    nodes = []
    for index in range(count):
        pnode = PoolNode(
            Node(host="127.0.0.1", port=20000 + index, name=f"n{index}", labels=(("parallel", "4"),)),
            _Ollamaish(),  # type: ignore[arg-type]
        )
        pnode.models = {MODEL_A: ModelInfo(name=MODEL_A, capabilities=frozenset({"completion", "tools"}))}
        pnode.set_activity(Activity(loaded=(LoadedModel(name=MODEL_A),) if index % 3 else ()))
        pnode.in_flight = rng.randrange(6)
        nodes.append(pnode)
    router = Router(nodes, policy, rng)
    for pnode in nodes:
        pnode.stats_for(MODEL_A).observe(ttft=rng.uniform(0.05, 0.5), per_token=rng.uniform(0.005, 0.05))
    request = ChatRequest(
        model=MODEL_A, messages=[{"role": "system", "content": "shared"}, {"role": "user", "content": "hi"}]
    )
    needs = needs_of(request)
    tried: list[str] = []

    def once() -> None:
        targets = router.targets(request)
        eligible = router.eligible(targets, request, needs, tried)
        choice, _ = router.choose(eligible, request)
        pnode = choice.node  # the picked node gets the request, one other finishes one
        pnode.in_flight += 1
        other = nodes[rng.randrange(count)]
        if other.in_flight:
            other.in_flight -= 1

    for _ in range(500):
        once()
    timings = []
    for _ in range(rounds):
        began = time.perf_counter()
        for _ in range(repeat):
            once()
        timings.append((time.perf_counter() - began) / repeat)
    return statistics.median(timings) * 1e6


# -- report -----------------------------------------------------------------------------------------


def table(outcomes: Sequence[Outcome]) -> str:
    bound = next((o for o in outcomes if o.policy == "clairvoyant"), outcomes[0])
    lines = [
        "| policy | p50 (s) | p99 (s) | p50 / bound | p99 / bound | throughput (req/s) | tput / bound "
        "| completed | failed | unfinished | cold loads | retried | run (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        mark = ">=" if o.unfinished else ""
        lines.append(
            f"| {o.policy} | {mark}{o.p50:.3f} | {mark}{o.p99:.3f} | {mark}{o.p50 / bound.p50:.2f}x "
            f"| {mark}{o.p99 / bound.p99:.2f}x | {o.throughput:.1f} | {o.throughput / bound.throughput:.2f}x "
            f"| {o.completed} | {o.failed} | {o.unfinished} | {o.cold_loads} | {o.retried} | {o.seconds:.0f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=700, help="requests per policy")
    parser.add_argument("--rate", type=float, default=35.0, help="mean arrivals per second (bursts come on top)")
    parser.add_argument("--drain", type=float, default=6.0, help="seconds to wait for the backlog after the trace")
    parser.add_argument("--quick", action="store_true", help="200 requests per policy, for a smoke run")
    parser.add_argument("--policies", default="clairvoyant,sollol,least_loaded,latency,affinity,round_robin,random")
    parser.add_argument("--no-trace", action="store_true", help="only the decision-cost part")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()
    count = 200 if args.quick else args.requests
    plugins = Plugins.load()
    ok = True
    began = time.monotonic()
    if not args.no_trace:
        trace = make_trace(count, args.rate)
        print(
            f"trace: {len(trace)} requests per policy over {trace[-1].at:.1f}s, {sum(a.stream for a in trace)} "
            f"streamed, {sum(a.model == MODEL_B for a in trace)} for {MODEL_B}; nodes: "
            + ", ".join(f"{p.name} ({p.token_delay * 1000:g} ms/token, {p.parallel} slots)" for p in CLUSTER)
        )
        # One short unreported run first, so no policy pays for the process warming up.
        asyncio.run(drive("sollol", make_trace(60, args.rate, seed=1), plugins, 1.0))
        outcomes = []
        for name in args.policies.split(","):
            outcome = asyncio.run(drive(name, trace, plugins, args.drain))
            outcomes.append(outcome)
            print(
                f"  {name}: p50 {outcome.p50:.3f}s p99 {outcome.p99:.3f}s failed {outcome.failed} "
                f"unfinished {outcome.unfinished} ({outcome.seconds:.0f}s)",
                file=sys.stderr,
            )
        print()
        print(table(outcomes))
        by = {o.policy: o for o in outcomes}
        if {"clairvoyant", "sollol", "round_robin"} <= by.keys():
            bound, ours, rr = by["clairvoyant"], by["sollol"], by["round_robin"]
            rr_mark = ">=" if rr.unfinished else ""
            verdicts = [
                (f"sollol p99 within 1.3x of the bound ({ours.p99 / bound.p99:.2f}x)", ours.p99 <= 1.3 * bound.p99),
                (
                    f"sollol p99 at least 2x better than round_robin ({rr_mark}{rr.p99 / ours.p99:.2f}x)",
                    rr.p99 >= 2 * ours.p99,
                ),
                (
                    f"zero failed requests with sollol ({ours.failed}, unfinished {ours.unfinished})",
                    ours.failed == 0 and ours.unfinished == 0,
                ),
            ]
            print()
            for text, good in verdicts:
                print(f"- [{'x' if good else ' '}] {text}")
                ok = ok and good
    from sollol.policies import LeastLoaded, RoundRobin, Sollol

    print()
    print("| nodes | sollol (us) | least_loaded (us) | round_robin (us) |")
    print("|---|---|---|---|")
    for count_nodes in (10, 100, 1000):
        costs = [decision_cost(count_nodes, p) for p in (Sollol(), LeastLoaded(), RoundRobin())]
        print(f"| {count_nodes} | " + " | ".join(f"{c:.1f}" for c in costs) + " |")
        if count_nodes == 100:
            ok = ok and costs[0] < 20.0
    print(f"\n(total {time.monotonic() - began:.0f}s)")
    return 0 if ok or not args.check else 1


if __name__ == "__main__":
    raise SystemExit(main())
