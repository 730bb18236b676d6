"""What observability costs the gateway: the same gateway with and without its observers.

Two gateway processes (on the server `sollol serve` runs) over one emulated Ollama node that
answers at once: one built with `Gateway(pool, observe=False)` (no observers, no /metrics or
dashboard), one with everything on (`observe=True`: Prometheus metrics, the dashboard's feed,
the event log) AND, while it is measured, a live dashboard client on `/api/sollol/events` plus
a Prometheus scraper pulling `/metrics` every second (a busier scrape than Prometheus' default
15 s). Each round starts a fresh pair and warms both up; then, per scenario (streamed and not,
at each concurrency), the gateway benchmark's own load generator loads one and the other in
turn, in `--slices` short runs each (A B, B A, A B, ...), so a machine whose speed drifts over
seconds slows both alike. The result is the median over the rounds of the throughput ratio
(target: at least 0.95, i.e. under 5% cost) and of the CPU time per request of each. `--aa`
pits two gateways without observability against each other: the same figures when there is
nothing to find, i.e. how far this machine's noise reaches. It also measures in process what
the observers add per request, a figure a busy machine cannot blur.

    python benchmarks/observe_overhead.py [--seconds 4] [--rounds 6] [--slices 8] [--clients 16,64] [--aa]
    nox -s bench_observe
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from gateway import HOST, MODEL, LoadGenerator, cpu_seconds, free_port, start_node, stop, wait_http

GATEWAY = """
import asyncio, sys
from sollol.cli_serve import bind, settle_heap
from sollol.gateway import Gateway
from sollol.gateway.fastserver import serve_gateway
from sollol.gateway.http1 import LeanTransport
from sollol.plugins import hookimpl
from sollol.pool import AsyncPool
import sollol.transport
sollol.transport.TRANSPORT_CLASS = LeanTransport  # as `sollol serve` runs it
variant = sys.argv[1]  # off, on, or a control (CONTROLS)
app = Gateway(AsyncPool([{{"url": "http://{host}:{node}", "backend": "ollama"}}]), observe=variant != "off")
if variant in ("mounted", "batch-noop", "noop"):
    for observer in app.observe.observers:
        app.pool.plugins.remove_observer(observer)
if variant == "batch-noop":
    class BatchNoOp:
        @hookimpl
        def sollol_activity_batch(self, batch):
            pass
    app.pool.plugins.add_observer(BatchNoOp(), name="batch-noop")
if variant == "noop":
    class NoOp:
        @hookimpl
        def sollol_activity_event(self, event):
            pass
    app.pool.plugins.add_observer(NoOp(), name="noop")
try:
    import uvloop
    runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
except ImportError:
    runner = asyncio.Runner()
with runner:  # the server `sollol serve` runs by default
    runner.run(serve_gateway(app, bind("{host}", {port}), stop=asyncio.Event(), started=settle_heap))
"""

#: The control variants of `--controls`: where the cost of observability sits.
CONTROLS = {
    "off": "observe=False",
    "mounted": "observability mounted, its observers unsubscribed (routes, protocol label, modules)",
    "batch-noop": "only a no-op batch observer: the pool notes its records and delivers them, nobody counts",
    "noop": "only a no-op per-event observer: the records are also turned into events",
    "on": "everything on (no dashboard client, no scraper)",
}

WATCHER = """
import sys, threading, time, httpx
base = "http://{host}:{port}"
def dashboard():
    with httpx.Client(base_url=base, timeout=None) as client:
        with client.stream("GET", "/api/sollol/events") as stream:
            for line in stream.iter_lines():
                if line.startswith("event: status"):
                    print("ready", flush=True)
threading.Thread(target=dashboard, daemon=True).start()
with httpx.Client(base_url=base, timeout=10) as client:
    while True:
        assert client.get("/metrics").status_code == 200
        time.sleep(1.0)
"""


def start_gateway(port: int, node_port: int, observe: bool | str) -> subprocess.Popen[bytes]:
    """A gateway with (`True`), without (`False`) observability, or a `CONTROLS` variant by name."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SOLLOL_", "OLLAMA_"))}
    code = GATEWAY.format(host=HOST, node=node_port, port=port)
    variant = observe if isinstance(observe, str) else "on" if observe else "off"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, variant],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    wait_http(port, "/api/tags", time.perf_counter() + 30, proc, MODEL.encode())
    return proc


def start_watcher(port: int) -> subprocess.Popen[bytes]:
    """A dashboard on the event stream and a once-a-second /metrics scraper; returns once the stream is live."""
    proc = subprocess.Popen([sys.executable, "-c", WATCHER.format(host=HOST, port=port)], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != b"ready":
        raise RuntimeError("the dashboard client did not get the event stream")
    return proc


def alternate(
    sides: Sequence[tuple[int, int]],
    clients: int,
    stream: bool,
    seconds: float,
    slices: int,
    generator: LoadGenerator,
    flip: bool = False,
) -> list[dict[str, Any]]:
    """Load each (port, pid) side `seconds` in all, in `slices` short runs taken in turn (A B, B A,
    A B, ...; B A first when `flip`): a machine whose speed drifts over seconds slows every side
    alike. Per side: requests, errors, CPU time per request (ms), the median of the runs' p50s."""
    totals = [{"all_requests": 0, "errors": 0, "cpu": 0.0, "p50s": []} for _ in sides]
    for index in range(slices):
        order = list(range(len(sides)))
        if (index % 2 == 1) != flip:
            order.reverse()
        for side in order:
            port, pid = sides[side]
            before = cpu_seconds(pid)
            result = generator.run(port, clients, stream, seconds / slices)
            total = totals[side]
            total["cpu"] += cpu_seconds(pid) - before
            total["all_requests"] += result["all_requests"]
            total["errors"] += result["errors"]
            total["p50s"].append(result["p50_ms"])
    return [
        {
            "all_requests": total["all_requests"],
            "rps": total["all_requests"] / seconds,
            "errors": total["errors"],
            "cpu_ms_per_request": total["cpu"] / max(total["all_requests"], 1) * 1000,
            "p50_ms": statistics.median(total["p50s"]),
        }
        for total in totals
    ]


def run(
    seconds: float, rounds: int, concurrency: Sequence[int], slices: int = 8, aa: bool = False
) -> list[dict[str, Any]]:
    """Round after round, a fresh pair of gateways measured in every scenario; one row per scenario.

    Fresh processes every round: two processes of the same code differ by a few per cent in CPU
    per request (hash seed, memory layout), so a pair kept for the whole run would carry one such
    bias into every round. With `aa`, both gateways are without observability: what the same
    benchmark reports when there is nothing to find.
    """
    node_port = free_port()
    node = start_node(node_port)
    generator = LoadGenerator()  # the gateway benchmark's own: a process of its own, on uvloop
    scenarios = [(stream, clients) for stream in (False, True) for clients in concurrency]
    offs: dict[tuple[bool, int], list[dict[str, Any]]] = {key: [] for key in scenarios}
    ons: dict[tuple[bool, int], list[dict[str, Any]]] = {key: [] for key in scenarios}
    try:
        for index in range(rounds):
            off_port, on_port = free_port(), free_port()
            procs = [start_gateway(off_port, node_port, observe=False)]
            try:
                procs.append(start_gateway(on_port, node_port, observe=not aa))
                off, on = procs
                for port in (off_port, on_port):  # a fresh gateway's first requests are not measured
                    for stream in (False, True):
                        generator.run(port, 16, stream, 0.4)
                if not aa:
                    procs.append(start_watcher(on_port))
                for stream, clients in scenarios:
                    plain, observed = alternate(
                        [(off_port, off.pid), (on_port, on.pid)],
                        clients,
                        stream,
                        seconds,
                        slices,
                        generator,
                        index % 2 == 1,
                    )
                    offs[stream, clients].append(plain)
                    ons[stream, clients].append(observed)
            finally:
                for proc in reversed(procs):
                    stop(proc)
            print(f"round {index + 1}/{rounds} done", flush=True)
    finally:
        generator.close()
        stop(node)
    rows = []
    for stream, clients in scenarios:
        pairs = [
            (plain, observed)
            for plain, observed in zip(offs[stream, clients], ons[stream, clients], strict=True)
            if plain["all_requests"] and observed["all_requests"]  # a run starved by a busy machine says nothing
        ]
        ratios = [observed["rps"] / plain["rps"] for plain, observed in pairs]
        row = {
            "stream": stream,
            "clients": clients,
            "rps_off": statistics.median(p["rps"] for p, _ in pairs),
            "rps_on": statistics.median(o["rps"] for _, o in pairs),
            "ratio": statistics.median(ratios) if ratios else float("nan"),
            "ratios": ratios,
            # Throughput a CPU-bound gateway can reach is 1 / CPU per request: this ratio is
            # what the observers cost it, and a busy machine blurs it far less than req/s.
            "cpu_ratio": statistics.median(p["cpu_ms_per_request"] / o["cpu_ms_per_request"] for p, o in pairs),
            "cpu_off": statistics.median(p["cpu_ms_per_request"] for p, _ in pairs),
            "cpu_on": statistics.median(o["cpu_ms_per_request"] for _, o in pairs),
            "p50_off": statistics.median(p["p50_ms"] for p, _ in pairs),
            "p50_on": statistics.median(o["p50_ms"] for _, o in pairs),
            "errors": sum(p["errors"] + o["errors"] for p, o in zip(offs[stream, clients], ons[stream, clients])),
        }
        rows.append(row)
        print(describe(row), flush=True)
    return rows


def micro(requests: int = 20000, repeats: int = 5) -> dict[str, float]:
    """In-process cost, immune to a busy machine: what the observers add per request, per scrape, per push.

    Per request: the two records the pool notes for a stream (routed, finished) and what the
    gateway's observers do with them, delivered in batches as the pool delivers them.
    """
    from sollol.activity import PROTOCOL, Activity, LoadedModel, ModelInfo, RequestRecord
    from sollol.inference import Route
    from sollol.node import Node
    from sollol.observe import Observability, status_document
    from sollol.plugins import Plugins
    from sollol.routing import PoolNode

    class Pool:
        """Five nodes as the pool describes them; the observers' own pool is never started."""

        def __init__(self) -> None:
            self.plugins = Plugins.load()
            self._nodes = []
            for index in range(5):
                pnode = PoolNode(Node(host="127.0.0.1", port=11434 + index, name=f"node-{index}", backend="ollama"))
                pnode.models = {f"m{k}:latest": ModelInfo(name=f"m{k}:latest") for k in range(4)}
                pnode.set_activity(Activity(loaded=(LoadedModel(name="m0:latest"),), vram_used=3, vram_total=8))
                self._nodes.append(pnode)

        def nodes(self) -> list[dict[str, Any]]:
            return [p.snapshot() for p in self._nodes]

        def queued(self) -> int:
            return 0

    pool = Pool()
    plugins = pool.plugins
    route = Route(node="node-1", tried=("node-1",), policy="sollol", score=0.1, parts=(("load", 0.0), ("cold", 0.0)))
    journal: list[Any] = []
    new = tuple.__new__  # how the pool builds a record (see sollol.pool._record)
    batch = 100  # about what the gateway holds for DELIVERY_DELAY at 10,000 requests/s

    def one_request() -> None:
        # What the pool and the gateway do per streamed request (AsyncPool._dispatching and
        # _succeeded): with no observer, only the checks; with observers, two records noted
        # and delivered in batches.
        token = PROTOCOL.set("ollama")
        if plugins.observers:
            journal.append(
                new(RequestRecord, ("request.routed", "node-1", "m0", "chat", PROTOCOL.get(), time.time(), route,
                                    True, 1, None, None, 0, 0.0, None, None, None))
            )  # fmt: skip
        if plugins.observers:
            journal.append(
                new(RequestRecord, ("request.finished", "node-1", "m0", "chat", PROTOCOL.get(), time.time(), route,
                                    False, 1, 0.004, 0.001, 5, 0.0, None, None, None))
            )  # fmt: skip
            if len(journal) >= 2 * batch:
                deliver()
        PROTOCOL.reset(token)

    def deliver() -> None:
        if journal:
            plugins.deliver(journal.copy())
            journal.clear()

    def per_call(fn: Any, count: int, then: Any = None) -> float:
        started = time.process_time()
        for _ in range(count):
            fn()
        if then is not None:
            then()
        return (time.process_time() - started) / count * 1e6

    observe = Observability(pool)
    without, with_observers = [], []
    for _ in range(repeats):  # alternating; the least of each (what a busy machine did not inflate)
        for observer in observe.observers:
            plugins.remove_observer(observer)
        without.append(per_call(one_request, requests))
        for observer in observe.observers:
            plugins.add_observer(observer)
        with_observers.append(per_call(one_request, requests, deliver))  # the last delivery counts too
    scrape = min(per_call(observe.metrics.render, 100) for _ in range(repeats))
    push = min(per_call(lambda: status_document(pool, observe.feed), 100) for _ in range(repeats))
    observe.close()
    return {
        "request_us_without": min(without),
        "request_us_with": min(with_observers),
        "scrape_us": scrape,
        "push_us": push,
    }


def describe(row: dict[str, Any]) -> str:
    return (
        f"{'stream' if row['stream'] else 'plain '} c={row['clients']:<3} "
        f"req/s {row['rps_off']:.0f} -> {row['rps_on']:.0f} (ratio {row['ratio']:.3f}; rounds "
        f"{', '.join(f'{r:.3f}' for r in row['ratios'])}) "
        f"cpu {row['cpu_off']:.3f} -> {row['cpu_on']:.3f} ms/req (ratio {row['cpu_ratio']:.3f}) "
        f"p50 {row['p50_off']:.2f} -> {row['p50_on']:.2f} ms "
        f"errors {row['errors']}"
    )


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| mode | clients | req/s without | req/s with observability | ratio (median) | cost "
        "| gateway CPU/req without / with (ms) | CPU ratio (median) | p50 without / with (ms) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {'stream' if row['stream'] else 'non-stream'} | {row['clients']} | {row['rps_off']:.0f} "
            f"| {row['rps_on']:.0f} | {row['ratio']:.3f} | {(1 - row['ratio']) * 100:+.1f}% "
            f"| {row['cpu_off']:.3f} / {row['cpu_on']:.3f} | {row['cpu_ratio']:.3f} "
            f"| {row['p50_off']:.2f} / {row['p50_on']:.2f} |"
        )
    return "\n".join(lines)


def controls(seconds: float, rounds: int, clients: int, slices: int = 8, stream: bool = False) -> dict[str, float]:
    """Gateway CPU per request (ms) of each `CONTROLS` variant (streamed or not): every round a fresh
    gateway of each, loaded one at a time in alternating short slices (as `run`); medians."""
    node_port = free_port()
    node = start_node(node_port)
    generator = LoadGenerator()
    cpu: dict[str, list[float]] = {name: [] for name in CONTROLS}
    try:
        for index in range(rounds):
            procs, sides = [], []
            try:
                for name in CONTROLS:
                    port = free_port()
                    procs.append(start_gateway(port, node_port, name))
                    sides.append((port, procs[-1].pid))
                    generator.run(port, 16, stream, 0.4)  # not measured: a fresh gateway's first requests
                results = alternate(sides, clients, stream, seconds, slices, generator, index % 2 == 1)
            finally:
                for proc in reversed(procs):
                    stop(proc)
            for name, result in zip(CONTROLS, results, strict=True):
                cpu[name].append(result["cpu_ms_per_request"])
    finally:
        generator.close()
        stop(node)
    return {name: statistics.median(values) for name, values in cpu.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0, help="measured seconds per side per scenario and round")
    parser.add_argument(
        "--rounds", type=int, default=6, help="fresh pairs of gateways, each measured in every scenario"
    )
    parser.add_argument("--clients", default="16,64", help="concurrency levels, comma separated")
    parser.add_argument("--micro-only", action="store_true", help="only the in-process measurement")
    parser.add_argument(
        "--controls",
        action="store_true",
        help="instead: where the cost sits, CPU per request of each control variant (first --clients)",
    )
    parser.add_argument("--stream", action="store_true", help="with --controls: streamed requests")
    parser.add_argument(
        "--slices", type=int, default=8, help="short runs per side that each scenario's seconds are cut into"
    )
    parser.add_argument(
        "--aa",
        action="store_true",
        help="both gateways without observability: the benchmark's noise floor",
    )
    args = parser.parse_args(argv)
    if args.controls:
        clients = int(args.clients.split(",")[0])
        medians = controls(args.seconds, args.rounds, clients, args.slices, args.stream)
        kind = "streamed" if args.stream else "non-streamed"
        print(f"gateway CPU per request, {clients} clients {kind}, medians of {args.rounds} rounds:")
        for name, value in medians.items():
            print(f"  {name:8} {value:.4f} ms ({(value - medians['off']) * 1000:+.1f} us)  {CONTROLS[name]}")
        return 0
    costs = micro()
    added = costs["request_us_with"] - costs["request_us_without"]
    print(
        f"in-process: observers add {added:.1f} us of CPU per request "
        f"({costs['request_us_without']:.1f} -> {costs['request_us_with']:.1f} us); "
        f"a /metrics scrape costs {costs['scrape_us'] / 1000:.2f} ms, a dashboard push "
        f"{costs['push_us'] / 1000:.2f} ms (5 nodes, each once a second per client)"
    )
    if args.micro_only:
        return 0
    rows = run(args.seconds, args.rounds, [int(c) for c in args.clients.split(",")], args.slices, args.aa)
    print()
    if args.aa:
        print("A/A: both gateways WITHOUT observability; every ratio below is this machine's noise\n")
    print(markdown(rows))
    worst = min(row["ratio"] for row in rows)
    cpu = statistics.median(row["cpu_off"] for row in rows)
    print(f"\nworst median throughput ratio {worst:.3f}: {(1 - worst) * 100:.1f}% of throughput (target < 5%)")
    worst_cpu = min(row["cpu_ratio"] for row in rows)
    print(f"worst median CPU ratio {worst_cpu:.3f}: {(1 - worst_cpu) * 100:.1f}% of a CPU-bound gateway's throughput")
    print(
        f"per request, the observers' {added:.1f} us are {added / (cpu * 1000) * 100:.1f}% of the gateway's "
        f"{cpu:.3f} ms of CPU (median, without observability)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
