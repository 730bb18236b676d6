"""What observability costs the gateway: the same gateway with and without its observers.

Two gateway processes (on the server `sollol serve` runs) over one emulated Ollama node that
answers at once: one built with
`Gateway(pool, observe=False)` (no observers, no /metrics or dashboard), one with everything
on (`observe=True`: Prometheus metrics, the dashboard's feed, the event log) AND, while it is
measured, a live dashboard client on `/api/sollol/events` plus a Prometheus scraper pulling
`/metrics` every second (a busier scrape than Prometheus' default 15 s). The load goes to
both at once (the same clients against each, so whatever else the machine runs slows both
alike; `--one-at-a-time` alternates instead), round after round, streamed and not; the result is
the median throughput ratio (target: at least 0.95, i.e. under 5% cost) and the CPU time per
request of each. It also measures in-process what the observers add per request, a figure a
busy machine cannot blur.

    python benchmarks/observe_overhead.py [--seconds 3] [--rounds 3] [--clients 16,64]
    nox -s bench_observe
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from gateway import HOST, MODEL, LoadGenerator, cpu_seconds, free_port, load, start_node, stop, wait_http

GATEWAY = """
import asyncio, sys
from sollol.cli_serve import bind
from sollol.gateway import Gateway
from sollol.gateway.fastserver import serve_gateway
from sollol.gateway.http1 import LeanTransport
from sollol.plugins import hookimpl
from sollol.pool import AsyncPool
import sollol.transport
sollol.transport.TRANSPORT_CLASS = LeanTransport  # as `sollol serve` runs it
variant = sys.argv[1]  # off, on, or a control: mounted (observers unsubscribed), noop (a no-op observer only)
app = Gateway(AsyncPool([{{"url": "http://{host}:{node}", "backend": "ollama"}}]), observe=variant != "off")
if variant in ("mounted", "noop"):
    for observer in app.observe.observers:
        app.pool.plugins.remove_observer(observer)
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
    runner.run(serve_gateway(app, bind("{host}", {port}), stop=asyncio.Event()))
"""

#: The control variants of `--controls`: where the cost of observability sits.
CONTROLS = {
    "off": "observe=False",
    "mounted": "observability mounted, its observers unsubscribed (routes, protocol label, modules)",
    "noop": "only a no-op observer: the pool builds and emits its events, nobody keeps them",
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


def measure(
    port: int, pid: int, clients: int, stream: bool, seconds: float, generator: LoadGenerator | None = None
) -> dict[str, Any]:
    """One run against one gateway: in this process, or in `generator`'s (the gateway benchmark's own)."""
    before = cpu_seconds(pid)
    if generator is not None:
        result = generator.run(port, clients, stream, seconds)
    else:
        result = asyncio.run(load(port, clients, stream, seconds))
    result["cpu_ms_per_request"] = (cpu_seconds(pid) - before) / max(result["all_requests"], 1) * 1000
    return result


def measure_both(
    off: tuple[int, int], on: tuple[int, int], clients: int, stream: bool, seconds: float
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Both gateways under the same load at the same time: whatever else runs on the machine slows both alike."""
    before = (cpu_seconds(off[1]), cpu_seconds(on[1]))

    async def both() -> list[dict[str, Any]]:
        return list(await asyncio.gather(load(off[0], clients, stream, seconds), load(on[0], clients, stream, seconds)))

    plain, observed = asyncio.run(both())
    plain["cpu_ms_per_request"] = (cpu_seconds(off[1]) - before[0]) / max(plain["all_requests"], 1) * 1000
    observed["cpu_ms_per_request"] = (cpu_seconds(on[1]) - before[1]) / max(observed["all_requests"], 1) * 1000
    return plain, observed


def run(seconds: float, rounds: int, concurrency: Sequence[int], together: bool = True) -> list[dict[str, Any]]:
    node_port, off_port, on_port = free_port(), free_port(), free_port()
    node = start_node(node_port)
    procs: list[subprocess.Popen[bytes]] = [node]
    rows = []
    # One at a time, the load comes from the gateway benchmark's own generator (its own process,
    # uvloop); both at once, from this process (one loop drives both gateways alike).
    generator = None if together else LoadGenerator()
    try:
        off = start_gateway(off_port, node_port, observe=False)
        procs.append(off)
        on = start_gateway(on_port, node_port, observe=True)
        procs.append(on)
        for stream in (False, True):
            for clients in concurrency:
                ratios, offs, ons = [], [], []
                for index in range(rounds):
                    watcher = start_watcher(on_port)
                    try:
                        if together:
                            plain, observed = measure_both(
                                (off_port, off.pid), (on_port, on.pid), clients, stream, seconds
                            )
                        elif index % 2 == 0:  # one at a time, in alternating order
                            plain = measure(off_port, off.pid, clients, stream, seconds, generator)
                            observed = measure(on_port, on.pid, clients, stream, seconds, generator)
                        else:
                            observed = measure(on_port, on.pid, clients, stream, seconds, generator)
                            plain = measure(off_port, off.pid, clients, stream, seconds, generator)
                    finally:
                        stop(watcher)
                    offs.append(plain)
                    ons.append(observed)
                    if plain["rps"] and observed["rps"]:  # a run starved by a busy machine says nothing
                        ratios.append(observed["rps"] / plain["rps"])
                row = {
                    "stream": stream,
                    "clients": clients,
                    "rps_off": statistics.median(r["rps"] for r in offs),
                    "rps_on": statistics.median(r["rps"] for r in ons),
                    "ratio": statistics.median(ratios) if ratios else float("nan"),
                    "ratios": ratios,
                    # Throughput a CPU-bound gateway can reach is 1 / CPU per request: this ratio is
                    # what the observers cost it, and a busy machine blurs it far less than req/s.
                    "cpu_ratio": statistics.median(
                        p["cpu_ms_per_request"] / o["cpu_ms_per_request"]
                        for p, o in zip(offs, ons, strict=True)
                        if p["all_requests"] and o["all_requests"]
                    ),
                    "cpu_off": statistics.median(r["cpu_ms_per_request"] for r in offs),
                    "cpu_on": statistics.median(r["cpu_ms_per_request"] for r in ons),
                    "p50_off": statistics.median(r["p50_ms"] for r in offs),
                    "p50_on": statistics.median(r["p50_ms"] for r in ons),
                    "errors": sum(r["errors"] for r in offs + ons),
                }
                rows.append(row)
                print(describe(row), flush=True)
        return rows
    finally:
        if generator is not None:
            generator.close()
        for proc in reversed(procs):
            stop(proc)


def micro(requests: int = 20000, repeats: int = 5) -> dict[str, float]:
    """In-process cost, immune to a busy machine: what the observers add per request, per scrape, per push.

    Per request: the two events the pool builds and emits (routed, finished) and what the
    gateway's observers do with them, including folding them into the metrics and series.
    """
    from sollol.activity import Activity, LoadedModel, ModelInfo
    from sollol.activity import ActivityEvent as Event
    from sollol.node import Node
    from sollol.observe import Observability, status_document
    from sollol.observe.context import PROTOCOL
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
    hooks = plugins.pm.hook.sollol_activity_event

    def one_request() -> None:
        # What the pool and the gateway do per request (AsyncPool._dispatching and _succeeded):
        # with no observer, only the checks.
        token = PROTOCOL.set("ollama")
        if hooks.get_hookimpls():
            routed = {
                "operation": "chat",
                "policy": "sollol",
                "score": 0.1,
                "parts": {"load": 0.0, "cold": 0.0},
                "attempt": 1,
                "tried": ["node-1"],
                "queued": 0.0,
            }
            plugins.emit(Event(kind="request.routed", node="node-1", model="m0", data=routed))
        if hooks.get_hookimpls():
            finished = {
                "operation": "chat",
                "latency": 0.004,
                "ttft": None,
                "chunks": 0,
                "attempts": 1,
                "queued": 0.0,
                "cold_load": 0.0,
            }
            plugins.emit(Event(kind="request.finished", node="node-1", model="m0", data=finished))
        PROTOCOL.reset(token)

    def per_call(fn: Any, count: int, then: Any = None) -> float:
        started = time.process_time()
        for _ in range(count):
            fn()
        if then is not None:
            then()
        return (time.process_time() - started) / count * 1e6

    observe = Observability(pool)
    fold = getattr(getattr(observe, "fanout", None), "fold", None)  # older versions counted per event
    without, with_observers = [], []
    for _ in range(repeats):  # alternating; the least of each (what a busy machine did not inflate)
        for observer in observe.observers:
            plugins.remove_observer(observer)
        without.append(per_call(one_request, requests))
        for observer in observe.observers:
            plugins.add_observer(observer)
        with_observers.append(per_call(one_request, requests, fold))  # the folding counts too
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


def controls(seconds: float, rounds: int, clients: int) -> dict[str, float]:
    """Gateway CPU per request (ms) of each `CONTROLS` variant, one gateway at a time (so none
    shares the cores with another), alternating round after round; medians."""

    node_port = free_port()
    procs = [start_node(node_port)]
    generator = LoadGenerator()
    cpu: dict[str, list[float]] = {name: [] for name in CONTROLS}
    try:
        gateways = {}
        for name in CONTROLS:
            port = free_port()
            proc = start_gateway(port, node_port, name)
            procs.append(proc)
            gateways[name] = (port, proc.pid)
        for index in range(rounds):
            order = list(gateways.items())
            for name, (port, pid) in order if index % 2 == 0 else order[::-1]:
                cpu[name].append(generator.cpu_per_request(port, pid, clients, False, seconds))
    finally:
        generator.close()
        for proc in reversed(procs):
            stop(proc)
    return {name: statistics.median(values) for name, values in cpu.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per run")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each side per scenario (alternating)")
    parser.add_argument("--clients", default="16,64", help="concurrency levels, comma separated")
    parser.add_argument("--micro-only", action="store_true", help="only the in-process measurement")
    parser.add_argument(
        "--controls",
        action="store_true",
        help="instead: where the cost sits, CPU per request of each control variant (non-streamed, first --clients)",
    )
    parser.add_argument(
        "--one-at-a-time",
        action="store_true",
        help="load one gateway, then the other (default: both at once, so a busy machine slows both alike)",
    )
    args = parser.parse_args(argv)
    if args.controls:
        clients = int(args.clients.split(",")[0])
        medians = controls(args.seconds, args.rounds, clients)
        print(f"gateway CPU per request, {clients} clients non-streamed, medians of {args.rounds} rounds:")
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
    rows = run(args.seconds, args.rounds, [int(c) for c in args.clients.split(",")], not args.one_at_a_time)
    print()
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
