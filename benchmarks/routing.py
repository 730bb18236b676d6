"""Routing benchmark: one trace through emulated Ollama clusters, every policy against a clairvoyant bound.

    python benchmarks/routing.py            # the full run (about 2-3 minutes on 2 cores)
    python benchmarks/routing.py --quick    # a short smoke run
    nox -s bench_routing

The cluster (loopback only, `OllamaEmulator`s in this process): nodes of different token
speed and parallel slots, two models loaded on some nodes and only on disk on others (a
cold load costs LOAD_TIME seconds: scaled down from the 10-30 s of real models, like every
other figure here), a prefix cache per node (a prompt whose conversation start the node
has seen recently skips most of its prefill), a Poisson arrival stream with bursts, and
one node that fails every generation for a stretch in the middle of the run and then
recovers. Every node is declared with its parallel slots (a `parallel` label, what an
operator knows from OLLAMA_NUM_PARALLEL); no pool-side concurrency limit is set, so each
node queues what it cannot run at once, as Ollama does.

The clairvoyant bound is a greedy policy that knows each node's exact configuration, the
exact remaining work on each slot, which models are loaded, which prefixes are cached and
when the failing node fails: it sends each request where it would finish soonest.

A second part measures one routing decision (filter + score + pick) at 10, 100 and 1000
nodes, without I/O.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextvars
import json
import math
import random
import sys
import time
from collections import OrderedDict
from collections.abc import Sequence
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


@attrs.frozen
class NodePlan:
    """One emulated node."""

    name: str
    token_delay: float
    parallel: int
    models: tuple[tuple[str, bool], ...]  # (model, loaded at start)
    latency: float = 0.01

    def service(self, prefill: float) -> float:
        """Seconds one request takes once it runs (model loaded)."""
        return self.latency + prefill + TOKENS * self.token_delay


CLUSTER = (
    NodePlan("fast-1", 0.004, 4, ((MODEL_A, True), (MODEL_B, False))),
    NodePlan("fast-2", 0.004, 4, ((MODEL_A, True), (MODEL_B, True))),
    NodePlan("mid", 0.008, 2, ((MODEL_A, True),)),
    NodePlan("slow-1", 0.02, 2, ((MODEL_A, True), (MODEL_B, False))),
    NodePlan("slow-2", 0.02, 1, ((MODEL_A, False),)),
    NodePlan("flaky", 0.005, 2, ((MODEL_A, True),)),
)
FAILING = "flaky"
FAIL_WINDOW = (0.35, 0.55)  # as fractions of the trace's length

_prefill: contextvars.ContextVar[float] = contextvars.ContextVar("prefill", default=0.0)


class BenchEmulator(OllamaEmulator):
    """Ollama, emulated, with a per-node prefix cache and a count of cold loads."""

    def __init__(self, config: EmulatorConfig) -> None:
        super().__init__(config)
        self.cache: OrderedDict[str, None] = OrderedDict()
        self.cold_loads = 0

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
            key = ""
        _prefill.set(self.prefill_for(key))
        return await super().chat(request)

    async def work(self, model: EmulatedModel | None) -> float:
        spent = await super().work(model)
        if spent:
            self.cold_loads += 1
        prefill = _prefill.get()
        if prefill:
            await asyncio.sleep(prefill)
        return spent


def emulator(plan: NodePlan) -> BenchEmulator:
    models = [EmulatedModel(name=name, loaded=loaded, capabilities=("completion",)) for name, loaded in plan.models]
    config = EmulatorConfig(
        models=models,
        name=plan.name,
        token_delay=plan.token_delay,
        latency=plan.latency,
        load_time=LOAD_TIME,
        parallel=plan.parallel,
        max_tokens=TOKENS,
        reply="a " * TOKENS,
    )
    return BenchEmulator(config)


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
    index = 0
    while len(trace) < count:
        now += rng.expovariate(rate)
        batch = 1
        if now >= next_burst:
            batch, next_burst = 30, next_burst + 4.0
        for _ in range(batch):
            index += 1
            model = MODEL_B if rng.random() < 0.15 else MODEL_A
            shared = rng.random() < 0.4
            conversation = f"You are assistant #{rng.randrange(5)}. " * 8 if shared else f"Unique context {index}. " * 8
            trace.append(Arrival(now, model, conversation, f"question {index}", rng.random() < 0.2))
    return trace[:count]


# -- the clairvoyant bound --------------------------------------------------------------------------


class Clairvoyant:
    """Greedy with perfect knowledge: each request where it would finish first.

    It knows every node's exact service time, slots, loaded models, prefix cache and
    failure window, and the predicted finish of every request outstanding on each node
    (kept in step with reality: the pool's exact in-flight count drops the ones that
    finished early).
    """

    name = "clairvoyant"

    def __init__(self, plans: Sequence[NodePlan], run: Run) -> None:
        self.plans = {p.name: p for p in plans}
        self.run = run
        self.finishes: dict[str, list[float]] = {p.name: [] for p in plans}
        self.loaded = {p.name: {m for m, on in p.models if on} for p in plans}
        self.ready: dict[tuple[str, str], float] = {}
        self.cache: dict[str, OrderedDict[str, None]] = {p.name: OrderedDict() for p in plans}

    def _prefill(self, node: str, key: str, commit: bool) -> float:
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

    def _start(self, pnode: PoolNode, now: float) -> float:
        plan = self.plans[pnode.id]
        outstanding = self.finishes[pnode.id]
        del outstanding[: max(0, len(outstanding) - pnode.in_flight)]  # those finished already
        if outstanding and outstanding[0] < now:  # running late: expect them half a service from now
            late = now + 0.5 * plan.service(PREFILL)
            outstanding[:] = sorted(f if f >= now else late for f in outstanding)
        if len(outstanding) < plan.parallel:
            return now
        return max(now, outstanding[len(outstanding) - plan.parallel])

    def choose(self, candidates: Sequence[PoolNode], request: Request, rng: random.Random) -> Choice:
        now = time.monotonic()
        key = str(request.messages[0].get("content")) if isinstance(request, ChatRequest) and request.messages else ""
        best: tuple[float, PoolNode] | None = None
        for pnode in candidates:
            name = pnode.id
            if name == FAILING and self.run.failing(now):
                continue
            start = self._start(pnode, now)
            if request.model not in self.loaded[name]:
                ready = self.ready.get((name, request.model))
                start = start + LOAD_TIME if ready is None else max(start, ready)
            finish = start + self.plans[name].service(self._prefill(name, key, commit=False))
            if best is None or finish < best[0] - 1e-9 or (abs(finish - best[0]) <= 1e-9 and rng.random() < 0.5):
                best = (finish, pnode)
        if best is None:  # only the failing node is left: it fails, and the pool fails over
            return Choice(node=candidates[0])
        finish, pnode = best
        name = pnode.id
        if request.model not in self.loaded[name] and (name, request.model) not in self.ready:
            self.ready[(name, request.model)] = finish - self.plans[name].service(PREFILL)
        self._prefill(name, key, commit=True)
        bisect.insort(self.finishes[name], finish)
        return Choice(node=pnode, score=-(finish - now), parts=(("finish", finish - now),))


# -- one run ----------------------------------------------------------------------------------------


@attrs.define
class Run:
    started: float = 0.0
    length: float = 1.0

    def failing(self, now: float) -> bool:
        at = (now - self.started) / self.length
        return FAIL_WINDOW[0] <= at < FAIL_WINDOW[1]


@attrs.frozen
class Outcome:
    policy: str
    p50: float
    p99: float
    throughput: float
    failed: int
    cold_loads: int
    retried: int


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return ordered[index]


async def drive(policy_name: str, trace: Sequence[Arrival], plugins: Plugins) -> Outcome:
    run = Run(length=trace[-1].at)
    with LoopbackServers() as servers:
        emulators = [emulator(plan) for plan in CLUSTER]
        nodes = []
        for plan, emu in zip(CLUSTER, emulators):
            running = servers.start(emu)
            nodes.append(
                Node(
                    host=running.host,
                    port=running.port,
                    backend="ollama",
                    name=plan.name,
                    labels=(("parallel", str(plan.parallel)),),
                )
            )
        policy: Any = Clairvoyant(CLUSTER, run) if policy_name == "clairvoyant" else policy_name
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
        async with pool:
            flaky = emulators[[p.name for p in CLUSTER].index(FAILING)]
            run.started = time.monotonic()
            began = time.monotonic()

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
                except Exception as exc:  # counted and reported: a benchmark must not stop on one
                    failed += 1
                    print(f"  failed: {type(exc).__name__}: {exc}"[:300], file=sys.stderr)
                    return
                if route is not None and len(route.tried) > 1:
                    retried += 1
                latencies.append(time.monotonic() - (began + arrival.at))

            async def faults() -> None:
                await asyncio.sleep(FAIL_WINDOW[0] * run.length)
                flaky.inject(Fault.error(500, {"error": "CUDA error: an illegal memory access"}, times=None))
                await asyncio.sleep((FAIL_WINDOW[1] - FAIL_WINDOW[0]) * run.length)
                flaky.clear_faults()

            fault_task = asyncio.create_task(faults())
            tasks = []
            for arrival in trace:
                delay = began + arrival.at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(one(arrival)))
            await asyncio.gather(*tasks)
            elapsed = time.monotonic() - began
            fault_task.cancel()
        cold = sum(e.cold_loads for e in emulators)
    return Outcome(
        policy=policy_name,
        p50=percentile(latencies, 0.5),
        p99=percentile(latencies, 0.99),
        throughput=len(latencies) / elapsed,
        failed=failed,
        cold_loads=cold,
        retried=retried,
    )


# -- decision cost ----------------------------------------------------------------------------------


class _Ollamaish:
    name = "ollama"
    operations = frozenset({"chat", "generate", "embed"})


def decision_cost(count: int, policy: Any, repeat: int = 1000) -> float:
    """Microseconds for one filter + score + pick among `count` nodes that all serve the model."""
    rng = random.Random(3)
    nodes = []
    for index in range(count):
        pnode = PoolNode(
            Node(host="127.0.0.1", port=20000 + index, name=f"n{index}", labels=(("parallel", "4"),)), _Ollamaish()
        )  # type: ignore[arg-type]
        pnode.models = {f"{MODEL_A}": ModelInfo(name=MODEL_A, capabilities=frozenset({"completion", "tools"}))}
        pnode.set_activity(Activity(loaded=(LoadedModel(name=MODEL_A),) if index % 3 else ()))
        pnode.in_flight = rng.randrange(6)
        nodes.append(pnode)
    router = Router(nodes, policy, rng)
    for pnode in nodes:
        pnode.stats_for(MODEL_A).observe(ttft=rng.uniform(0.05, 0.5), per_token=rng.uniform(0.005, 0.05))
    request = ChatRequest(
        model="llama3.2:3b", messages=[{"role": "system", "content": "shared"}, {"role": "user", "content": "hi"}]
    )
    needs = needs_of(request)
    tried: list[str] = []

    def once() -> None:
        targets = router.targets(request)
        eligible = router.eligible(targets, request, needs, tried)
        router.choose(eligible, request)

    for _ in range(200):
        once()
    best = math.inf
    for _ in range(15):  # the best of 15: this machine is shared, the minimum is the cost
        began = time.perf_counter()
        for _ in range(repeat):
            once()
        best = min(best, (time.perf_counter() - began) / repeat)
    return best * 1e6


# -- report -----------------------------------------------------------------------------------------


def table(outcomes: Sequence[Outcome]) -> str:
    bound = next(o for o in outcomes if o.policy == "clairvoyant")
    lines = [
        "| policy | p50 (s) | p99 (s) | p50 / bound | p99 / bound | throughput (req/s) | tput / bound "
        "| failed | cold loads | retried |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        lines.append(
            f"| {o.policy} | {o.p50:.3f} | {o.p99:.3f} | {o.p50 / bound.p50:.2f}x | {o.p99 / bound.p99:.2f}x "
            f"| {o.throughput:.1f} | {o.throughput / bound.throughput:.2f}x "
            f"| {o.failed} | {o.cold_loads} | {o.retried} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=800)
    parser.add_argument("--rate", type=float, default=35.0, help="mean arrivals per second (bursts come on top)")
    parser.add_argument("--quick", action="store_true", help="300 requests, for a smoke run")
    parser.add_argument("--policies", default="clairvoyant,sollol,least_loaded,latency,affinity,round_robin,random")
    parser.add_argument("--no-trace", action="store_true", help="only the decision-cost part")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()
    count = 300 if args.quick else args.requests
    plugins = Plugins.load()
    ok = True
    if not args.no_trace:
        trace = make_trace(count, args.rate)
        print(
            f"trace: {len(trace)} requests over {trace[-1].at:.1f}s, {sum(a.stream for a in trace)} streamed, "
            f"{sum(a.model == MODEL_B for a in trace)} for {MODEL_B}; nodes: "
            + ", ".join(f"{p.name} ({p.token_delay * 1000:g} ms/token, {p.parallel} slots)" for p in CLUSTER)
        )
        outcomes = []
        for name in args.policies.split(","):
            began = time.monotonic()
            outcome = asyncio.run(drive(name, trace, plugins))
            outcomes.append(outcome)
            print(
                f"  {name}: p50 {outcome.p50:.3f}s p99 {outcome.p99:.3f}s failed {outcome.failed} "
                f"({time.monotonic() - began:.0f}s)",
                file=sys.stderr,
            )
        print()
        print(table(outcomes))
        by = {o.policy: o for o in outcomes}
        if {"clairvoyant", "sollol", "round_robin"} <= by.keys():
            bound, ours, rr = by["clairvoyant"], by["sollol"], by["round_robin"]
            verdicts = [
                (f"sollol p99 within 1.3x of the bound ({ours.p99 / bound.p99:.2f}x)", ours.p99 <= 1.3 * bound.p99),
                (f"sollol p99 at least 2x better than round_robin ({rr.p99 / ours.p99:.2f}x)", rr.p99 >= 2 * ours.p99),
                (f"zero failed requests with sollol ({ours.failed})", ours.failed == 0),
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
    return 0 if ok or not args.check else 1


if __name__ == "__main__":
    raise SystemExit(main())
