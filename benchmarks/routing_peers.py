"""The routing trace through SOLLOL's peers: SOLLOL 0.9.66's OllamaPool and LiteLLM's Router, side by side.

    python benchmarks/routing_peers.py [--requests 700] [--only ...] [--venvs DIR]
    nox -s bench_routing_peers

The same trace, cluster and failing node as `benchmarks/routing.py` (imported from it), a
fresh cluster per system in its own process, and the same bounded run (`--drain`). Each peer
runs as a client process from a virtualenv of its own (created on first use under `--venvs`,
the same ones `benchmarks/gateway_peers.py` uses):

- `sollol-0.9.66`: PyPI `sollol==0.9.66`, `OllamaPool` given the six nodes explicitly (its
  default routing, Dask, Redis, the dashboard and the response cache off), blocking calls
  on a thread pool of 256;
- `litellm-least-busy` and `litellm-latency`: `litellm.Router` (PyPI `litellm==1.108.7`) with
  `routing_strategy="least-busy"` / `"latency-based-routing"`, one deployment per node and
  model the node has (on disk or loaded, as an operator would list them), `ollama_chat/`
  provider, two retries;
- `clairvoyant` and `sollol` (this SOLLOL's default policy) from `benchmarks/routing.py`, in
  the same invocation, so every ratio is to a bound measured in the same run.

Everything - the emulated nodes, every client - runs inside a private network namespace that
has only loopback (`unshare -n`, then `ip link set lo up`): SOLLOL 0.9.66 scans the local
subnet when it finds no node, LiteLLM fetches a price list at start-up
(`LITELLM_LOCAL_MODEL_COST_MAP=True` tells it not to), and nothing may leave this machine's
loopback. Needs root (or unprivileged user namespaces).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import routing  # benchmarks/routing.py: the trace, the cluster, the bound

LITELLM = "litellm==1.108.7"
OLD_SOLLOL = "sollol==0.9.66"
PEERS = ("sollol-0.9.66", "litellm-least-busy", "litellm-latency")
NETNS_FLAG = "SOLLOL_BENCH_PRIVATE_NET"
CLIENT_CPU: dict[str, float] = {}  # the peer client's CPU seconds per request of the trace

# The client each peer runs, from its own virtualenv (stdlib and the peer's library only).
CLIENT = r"""
import asyncio, json, sys, time, concurrent.futures
spec = json.load(open(sys.argv[1]))
system, trace, drain = spec["system"], spec["trace"], spec["drain"]
latencies, errors, censored = [], [], []

def messages(a):
    return [{"role": "system", "content": a[2]}, {"role": "user", "content": a[3]}]

if system == "sollol-0.9.66":
    from sollol import OllamaPool
    pool = OllamaPool(
        nodes=[{"host": "127.0.0.1", "port": str(n["port"])} for n in spec["nodes"]],
        enable_dask=False, enable_ray=False, enable_gpu_redis=False, register_with_dashboard=False, enable_cache=False,
    )
    threads = concurrent.futures.ThreadPoolExecutor(256)

    def blocking(a):
        if a[4]:
            for _ in pool.chat(a[1], messages(a), stream=True):
                pass
        else:
            pool.chat(a[1], messages(a))

    async def call(a):
        await asyncio.get_running_loop().run_in_executor(threads, blocking, a)
else:
    from litellm import Router
    strategy = {"litellm-least-busy": "least-busy", "litellm-latency": "latency-based-routing"}[system]
    model_list = [
        {"model_name": m,
         "litellm_params": {"model": "ollama_chat/" + m, "api_base": "http://127.0.0.1:%d" % n["port"]},
         "model_info": {"id": n["name"] + "/" + m}}
        for n in spec["nodes"] for m in n["models"]
    ]
    router = Router(model_list=model_list, routing_strategy=strategy, num_retries=2, timeout=120)

    async def call(a):
        if a[4]:
            response = await router.acompletion(model=a[1], messages=messages(a), stream=True)
            async for _ in response:
                pass
        else:
            await router.acompletion(model=a[1], messages=messages(a))

async def main():
    print("ready", flush=True)
    began = float(sys.stdin.readline())

    async def one(a):
        try:
            await call(a)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            errors.append(type(exc).__name__ + ": " + str(exc)[:200])
            return
        latencies.append(time.monotonic() - (began + a[0]))

    tasks = {}
    for a in trace:
        delay = began + a[0] - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks[asyncio.ensure_future(one(a))] = a
    done, pending = await asyncio.wait(list(tasks), timeout=drain)
    cutoff = time.monotonic()
    for task in pending:
        censored.append(cutoff - (began + tasks[task][0]))
        task.cancel()
    elapsed = (max(began + trace[-1][0], cutoff) if pending else cutoff) - began
    out = {"latencies": latencies, "errors": errors, "censored": censored, "elapsed": elapsed,
           "cpu": time.process_time()}
    json.dump(out, open(sys.argv[2], "w"))

asyncio.run(main())
import os
os._exit(0)  # leave the peers' background threads behind
"""


def venv(root: str, name: str, requirement: str) -> str:
    """The python of a virtualenv holding `requirement`, created when missing (needs the network)."""
    where = os.path.join(root, name)
    python = os.path.join(where, "bin", "python")
    # find_spec, not import: importing a peer outside the namespace could reach the network
    probe = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({name.split('-')[0]!r}) is None)"
    if not os.path.exists(python) or subprocess.run([python, "-c", probe]).returncode:
        print(f"creating {where} with {requirement} (once)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", where], check=True)
        subprocess.run([os.path.join(where, "bin", "pip"), "install", "-q", requirement], check=True)
    return python


def drive_peer(system: str, python: str, trace: list[routing.Arrival], drain: float, workdir: str) -> routing.Outcome:
    """One peer through the trace: a fresh cluster in its own process, the peer's client in another."""
    wall = time.monotonic()
    context = multiprocessing.get_context("spawn")
    array = context.RawArray("d", routing.Board.size(len(trace)))
    here, there = context.Pipe()
    nodes_proc = context.Process(target=routing.serve_nodes, args=(there, array, len(trace)), daemon=True)
    nodes_proc.start()
    client: subprocess.Popen[str] | None = None
    try:
        ports = here.recv()
        spec = {
            "system": system,
            "drain": drain,
            "trace": [[a.at, a.model, a.conversation, a.question, a.stream] for a in trace],
            "nodes": [
                {"name": plan.name, "port": port, "models": [m for m, _ in plan.models]}
                for plan, port in zip(routing.CLUSTER, ports)
            ],
        }
        paths = [os.path.join(workdir, f"{system}.{part}") for part in ("spec.json", "out.json", "client.py", "log")]
        with open(paths[0], "w") as handle:
            json.dump(spec, handle)
        with open(paths[2], "w") as handle:
            handle.write(CLIENT)
        env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_LOG="ERROR", PYTHONUNBUFFERED="1")
        with open(paths[3], "w") as log:
            client = subprocess.Popen(
                [python, paths[2], paths[0], paths[1]],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env=env,
                cwd=workdir,
            )
            assert client.stdout is not None
            assert client.stdin is not None
            line = client.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"{system}'s client did not start (see {paths[3]})")
            began = time.monotonic() + 0.5
            here.send(("go", began, trace[-1].at))
            client.stdin.write(f"{began}\n")
            client.stdin.flush()
            client.wait(timeout=trace[-1].at + drain + 120)
        with open(paths[1]) as handle:
            result = json.load(handle)
        here.send(("stop",))
        cold = sum(here.recv())
    finally:
        if client is not None and client.poll() is None:
            client.kill()
        nodes_proc.join(timeout=10)
        if nodes_proc.is_alive():
            nodes_proc.terminate()
    latencies, censored = result["latencies"], result["censored"]
    for error in result["errors"][:3]:
        print(f"  {system} failed: {error}", file=sys.stderr)
    CLIENT_CPU[system] = result["cpu"] / max(len(trace), 1)
    return routing.Outcome(
        policy=system,
        p50=routing.percentile(latencies + censored, 0.5),
        p99=routing.percentile(latencies + censored, 0.99),
        throughput=len(latencies) / result["elapsed"],
        completed=len(latencies),
        failed=len(result["errors"]),
        unfinished=len(censored),
        cold_loads=cold,
        retried=-1,
        seconds=time.monotonic() - wall,
    )


def inside(args: argparse.Namespace) -> int:
    """Inside the private namespace: every system through the trace, then the table."""
    if os.environ.get(NETNS_FLAG) != "1":
        print("refusing to run outside the private network namespace", file=sys.stderr)
        return 2
    from sollol.plugins import Plugins

    trace = routing.make_trace(args.requests, args.rate)
    print(
        f"trace: {len(trace)} requests per system over {trace[-1].at:.1f}s, {sum(a.stream for a in trace)} streamed; "
        "the cluster of benchmarks/routing.py, one node failing for a fifth of the run"
    )
    plugins = Plugins.load()
    asyncio.run(routing.drive("sollol", routing.make_trace(60, args.rate, seed=1), plugins, 1.0))  # warm-up
    outcomes = []
    pythons = json.loads(args.pythons)
    with tempfile.TemporaryDirectory() as workdir:
        for system in args.only.split(","):
            if system in pythons:
                outcome = drive_peer(system, pythons[system], trace, args.drain, workdir)
            else:
                outcome = asyncio.run(routing.drive(system, trace, plugins, args.drain))
            outcomes.append(outcome)
            print(
                f"  {system}: p50 {outcome.p50:.3f}s p99 {outcome.p99:.3f}s failed {outcome.failed} "
                f"unfinished {outcome.unfinished} ({outcome.seconds:.0f}s)",
                file=sys.stderr,
            )
    print()
    print(routing.table(outcomes).replace("| -1 |", "| n/a |"))
    if CLIENT_CPU:
        print()
        print(
            "peer client CPU per request (the whole client process, routing library included): "
            + ", ".join(f"{name} {seconds * 1000:.1f} ms" for name, seconds in CLIENT_CPU.items())
        )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=700, help="requests per system")
    parser.add_argument("--rate", type=float, default=35.0)
    parser.add_argument("--drain", type=float, default=6.0)
    parser.add_argument("--only", default="clairvoyant,sollol," + ",".join(PEERS))
    parser.add_argument("--venvs", default=os.path.expanduser("~/.cache/sollol-bench-peers"))
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--pythons", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        return inside(args)
    wanted = args.only.split(",")
    pythons: dict[str, str] = {}
    os.makedirs(args.venvs, exist_ok=True)
    if "sollol-0.9.66" in wanted:
        pythons["sollol-0.9.66"] = venv(args.venvs, "sollol-0.9.66", OLD_SOLLOL)
    for system in ("litellm-least-busy", "litellm-latency"):
        if system in wanted:
            pythons[system] = venv(args.venvs, "litellm-1.108.7", LITELLM)
    if shutil.which("unshare") is None:
        print("needs `unshare` (util-linux) to run the peers in a private network namespace", file=sys.stderr)
        return 2
    script = f'ip link set lo up && {NETNS_FLAG}=1 exec "$@"'
    command = ["unshare", "-n", "sh", "-c", script, "sh", sys.executable, os.path.abspath(__file__), "--inside"]
    command += ["--requests", str(args.requests), "--rate", str(args.rate), "--drain", str(args.drain)]
    command += ["--only", args.only, "--pythons", json.dumps(pythons)]
    return subprocess.run(command).returncode


if __name__ == "__main__":
    raise SystemExit(main())
