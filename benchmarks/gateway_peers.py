"""SOLLOL's gateway beside its peers: LiteLLM's proxy and SOLLOL 0.9.66's gateway, same node, same load.

Each peer is installed in a virtualenv of its own (created on first use, under `--venvs`):
LiteLLM's proxy (`litellm[proxy]==1.108.7`, one worker, routing the model to the node with its
`ollama_chat/` provider, clients on its OpenAI API) and SOLLOL 0.9.66's gateway (`sollol up`,
PyPI `sollol==0.9.66`, the node given with `--ollama-nodes`, its rate limits raised, clients on
its Ollama API). This SOLLOL's gateway (`sollol serve`) runs from the current environment.

Everything - the emulated Ollama node that answers at once, the three gateways and the load
generator - runs inside a private network namespace that has only loopback (`unshare -n`, then
`ip link set lo up`): SOLLOL 0.9.66 scans the local subnet when it finds no node and LiteLLM
fetches a price list at start-up (`LITELLM_LOCAL_MODEL_COST_MAP=True` tells it not to), and
nothing may leave this machine's loopback. Needs root (or unprivileged user namespaces).

For each system, streamed and not, at 1, 16 and 64 clients, runs through the system alternate
with runs against the node directly (`--rounds` pairs, medians), as in `benchmarks/gateway.py`.
CPU time and memory count every process the system started (SOLLOL 0.9.66 starts Ray and Dask).

    python benchmarks/gateway_peers.py [--seconds 2] [--rounds 1] [--only litellm,sollol-0.9.66,sollol]
    nox -s bench_gateway_peers
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from gateway import (
    HOST,
    MODEL,
    LoadGenerator,
    free_port,
    median,
    start_gateway,
    start_node,
    stop,
)

NETNS_FLAG = "SOLLOL_BENCH_PRIVATE_NET"
LITELLM = "litellm[proxy]==1.108.7"
OLD_SOLLOL = "sollol==0.9.66"
TICKS = os.sysconf("SC_CLK_TCK")


# -- virtualenvs (made before entering the namespace: installing needs the network) -------------------


def venv(root: str, name: str, requirement: str, entry: str) -> str:
    """The path of `entry` in a virtualenv holding `requirement`, creating it when missing."""
    where = os.path.join(root, name)
    exe = os.path.join(where, "bin", entry)
    if not os.path.exists(exe):
        print(f"creating {where} with {requirement} (once)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", where], check=True)
        subprocess.run([os.path.join(where, "bin", "pip"), "install", "-q", requirement], check=True)
    return exe


# -- process trees ---------------------------------------------------------------------------------------


def tree(pid: int) -> list[int]:
    """`pid` and every process descended from it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(children.get(current, ()))
    return out


def tree_cpu(pid: int) -> float:
    """CPU seconds of the whole tree (living processes, plus what exited children left to their parents)."""
    total = 0.0
    for member in tree(pid):
        try:
            with open(f"/proc/{member}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(f) for f in fields[11:15]) / TICKS  # utime, stime, cutime, cstime
    return total


def tree_rss(pid: int) -> tuple[float, int]:
    """(MB resident, processes) of the whole tree."""
    total, count = 0.0, 0
    for member in tree(pid):
        try:
            with open(f"/proc/{member}/status") as handle:
                for line in handle:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) / 1024
                        count += 1
        except OSError:
            continue
    return total, count


def stop_tree(proc: subprocess.Popen[bytes]) -> None:
    """Stop a system and everything it started (its own process group)."""
    try:
        os.killpg(proc.pid, 15)
    except ProcessLookupError:
        return
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)


# -- the systems -----------------------------------------------------------------------------------------


def wait_chat(
    loader: LoadGenerator, port: int, api: str, model: str, proc: subprocess.Popen[bytes], limit: float
) -> None:
    """Until one chat request through the system succeeds."""
    deadline = time.perf_counter() + limit
    last: dict[str, Any] = {}
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}")
        try:
            last = loader.run(port, 1, False, 0.2, api, model)
        except RuntimeError:
            raise
        if last.get("requests"):
            return
        time.sleep(0.5)
    raise TimeoutError(f"no chat answered on port {port}: {last.get('error_sample', '')}")


def start_litellm(exe: str, port: int, node_port: int, workdir: str) -> subprocess.Popen[bytes]:
    config = os.path.join(workdir, "litellm.yaml")
    with open(config, "w") as handle:
        handle.write(
            "model_list:\n"
            f"  - model_name: {json.dumps(MODEL)}\n"
            "    litellm_params:\n"
            f"      model: {json.dumps('ollama_chat/' + MODEL)}\n"
            f"      api_base: http://{HOST}:{node_port}\n"
            "litellm_settings:\n"
            "  set_verbose: false\n"
            "  json_logs: false\n"
        )
    # No master key, like the other two gateways (loopback only, in a private namespace).
    env = dict(
        os.environ,
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        LITELLM_LOG="ERROR",
        LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY="true",
    )
    return subprocess.Popen(
        [exe, "--config", config, "--host", HOST, "--port", str(port), "--num_workers", "1"],
        stdout=open(os.path.join(workdir, "litellm.log"), "wb"),
        stderr=subprocess.STDOUT,
        env=env,
        cwd=workdir,
        start_new_session=True,
    )


def start_old_sollol(exe: str, port: int, node_port: int, workdir: str) -> subprocess.Popen[bytes]:
    env = dict(
        os.environ,
        SOLLOL_GLOBAL_RATE_LIMIT="1000000",
        SOLLOL_PER_NODE_RATE_LIMIT="1000000",
        OLLAMA_NODES=f"{HOST}:{node_port}",
    )
    return subprocess.Popen(
        [exe, "up", "--port", str(port), "--ollama-nodes", f"{HOST}:{node_port}", "--no-setup-gpu-monitoring"],
        stdout=open(os.path.join(workdir, "sollol-0.9.66.log"), "wb"),
        stderr=subprocess.STDOUT,
        env=env,
        cwd=workdir,
        start_new_session=True,
    )


# -- the run ---------------------------------------------------------------------------------------------


def compare(
    loader: LoadGenerator,
    name: str,
    port: int,
    pid: int,
    api: str,
    model: str,
    node: tuple[int, int],
    concurrency: Sequence[int],
    seconds: float,
    rounds: int,
) -> list[dict[str, Any]]:
    rows = []
    for stream in (False, True):
        for clients in concurrency:
            directs, vias = [], []
            for round_ in range(rounds):
                for direct in (round_ % 2 == 0, round_ % 2 == 1):
                    if direct:
                        directs.append(loader.run(node[0], clients, stream, seconds))
                    else:
                        before = tree_cpu(pid)
                        result = loader.run(port, clients, stream, seconds, api, model)
                        served = result["all_requests"]
                        result["cpu"] = (tree_cpu(pid) - before) / served * 1000 if served else float("nan")
                        vias.append(result)
            row = {
                "system": name,
                "stream": stream,
                "clients": clients,
                "p50": median([v["p50_ms"] for v in vias]),
                "p99": median([v["p99_ms"] for v in vias]),
                "added_p50": median([v["p50_ms"] - d["p50_ms"] for d, v in zip(directs, vias)]),
                "rps": median([v["rps"] for v in vias]),
                "direct_rps": median([d["rps"] for d in directs]),
                "ratio": median([v["rps"] / d["rps"] for d, v in zip(directs, vias) if d["rps"]]),
                "cpu": median([v["cpu"] for v in vias]),
                "ttft": median([v["ttft_p50_ms"] for v in vias]) if stream else None,
                "direct_ttft": median([d["ttft_p50_ms"] for d in directs]) if stream else None,
                "errors": sum(v["errors"] for v in vias),
                "error_sample": next((v["error_sample"] for v in vias if v["error_sample"]), ""),
            }
            rows.append(row)
            print(
                f"{name:<14} {'stream' if stream else 'plain '} c={clients:<3} p50 {row['p50']:.2f} ms "
                f"(+{row['added_p50']:.2f}) p99 {row['p99']:.2f} rps {row['rps']:.0f} ({row['ratio']:.2f}x) "
                f"cpu {row['cpu']:.2f} ms/req errors {row['errors']} {row['error_sample'][:120]}",
                flush=True,
            )
    return rows


def inside(args: argparse.Namespace) -> int:
    """The measurement, run inside the private namespace."""
    concurrency = [int(c) for c in args.clients.split(",")]
    only = set(args.only.split(","))
    workdir = tempfile.mkdtemp(prefix="sollol-peers-")
    node_port = free_port()
    node = start_node(node_port)
    loader = LoadGenerator()
    systems: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    try:
        plan = [
            ("sollol", "ollama", MODEL),
            ("litellm", "openai", MODEL),
            ("sollol-0.9.66", "ollama", MODEL),
        ]
        for name, api, model in plan:
            if name not in only:
                continue
            port = free_port()
            started = time.perf_counter()
            if name == "sollol":
                proc, _, _ = start_gateway(port, node_port)
            elif name == "litellm":
                proc = start_litellm(args.litellm, port, node_port, workdir)
            else:
                proc = start_old_sollol(args.old_sollol, port, node_port, workdir)
            try:
                wait_chat(loader, port, api, model, proc, 180)
                ready = time.perf_counter() - started
                time.sleep(1.0)
                idle, processes = tree_rss(proc.pid)
                print(f"{name}: answering after {ready:.1f} s, {processes} processes, {idle:.0f} MB", flush=True)
                found = compare(
                    loader,
                    name,
                    port,
                    proc.pid,
                    api,
                    model,
                    (node_port, node.pid),
                    concurrency,
                    args.seconds,
                    args.rounds,
                )
                peak, _ = tree_rss(proc.pid)
                systems.append({"system": name, "ready_s": ready, "processes": processes, "rss_mb": max(idle, peak)})
                rows.extend(found)
            except (RuntimeError, TimeoutError) as exc:
                print(f"{name}: could not be measured: {exc}", flush=True)
                systems.append({"system": name, "error": str(exc)})
            finally:
                if name == "sollol":
                    stop(proc)
                else:
                    stop_tree(proc)
    finally:
        loader.close()
        stop(node)
    result = {"systems": systems, "rows": rows, "seconds": args.seconds, "rounds": args.rounds}
    print()
    print(markdown(result))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "| system | mode | clients | p50 / p99 (ms) | added p50 (ms) | req/s | ratio to direct "
        "| CPU/req (ms) | TTFT (ms) | errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        ttft = f"{r['ttft']:.2f}" if r["stream"] else "-"
        lines.append(
            f"| {r['system']} | {'stream' if r['stream'] else 'non-stream'} | {r['clients']} "
            f"| {r['p50']:.2f} / {r['p99']:.2f} | {r['added_p50']:+.2f} | {r['rps']:.0f} | {r['ratio']:.2f}x "
            f"| {r['cpu']:.2f} | {ttft} | {r['errors']} |"
        )
    lines += ["", "| system | first answer after (s) | processes | RSS (MB) |", "|---|---|---|---|"]
    for s in result["systems"]:
        if "error" in s:
            lines.append(f"| {s['system']} | not measured: {s['error']} | | |")
        else:
            lines.append(f"| {s['system']} | {s['ready_s']:.1f} | {s['processes']} | {s['rss_mb']:.0f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=2.0, help="measured seconds per run")
    parser.add_argument("--rounds", type=int, default=1, help="pairs of runs (direct, system) per scenario")
    parser.add_argument("--clients", default="1,16,64", help="concurrency levels, comma separated")
    parser.add_argument("--only", default="sollol,litellm,sollol-0.9.66", help="systems to run, comma separated")
    parser.add_argument("--venvs", default=os.path.expanduser("~/.cache/sollol-bench-peers"), help="where the venvs go")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--litellm", help=argparse.SUPPRESS)
    parser.add_argument("--old-sollol", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if os.environ.get(NETNS_FLAG) == "1":
        return inside(args)
    only = set(args.only.split(","))
    os.makedirs(args.venvs, exist_ok=True)
    extra = []
    if "litellm" in only:
        extra += ["--litellm", venv(args.venvs, "litellm-1.108.7", LITELLM, "litellm")]
    if "sollol-0.9.66" in only:
        extra += ["--old-sollol", venv(args.venvs, "sollol-0.9.66", OLD_SOLLOL, "sollol")]
    if shutil.which("unshare") is None:
        print("needs `unshare` (util-linux) to run the peers in a private network namespace", file=sys.stderr)
        return 2
    script = 'ip link set lo up && exec "$@"'
    command = ["unshare", "-n", "sh", "-c", script, "sh", sys.executable, os.path.abspath(__file__)]
    command += [a for a in (argv if argv is not None else sys.argv[1:])] + extra
    return subprocess.call(command, env=dict(os.environ, **{NETNS_FLAG: "1"}))


if __name__ == "__main__":
    sys.exit(main())
