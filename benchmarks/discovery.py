"""Benchmark: scan 127.0.0.0/24 on the five backends' default ports with ten emulated nodes.

    python benchmarks/discovery.py [--rounds 5] [--json]      (or: nox -s bench_discovery)

The emulators run in child processes, one each (as real servers are), on 127.0.0.x
addresses other than 127.0.0.1, on the default ports 11434 (Ollama), 8000 (vLLM), 3000 and
80 (TGI), 8080 (llama.cpp, LocalAI). Each round runs the whole of discovery: the connect scan
of 254 hosts x 5 ports, then detection (and the model lists) of what answered. The target is
under 2 s per round with no false positive and no false negative; the exit status is 1 when
a round misses it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

TARGET_SECONDS = 2.0
NETWORK = "127.0.0.0/24"
DEFAULT_PORTS = (11434, 8000, 3000, 80, 8080)

#: (last octet, plugin module, emulator class, default port, settings)
NODES: list[tuple[int, str, str, int, dict[str, Any]]] = [
    (2, "sollol_ollama", "OllamaEmulator", 11434, {}),
    (3, "sollol_ollama", "OllamaEmulator", 11434, {}),
    (10, "sollol_vllm", "VLLMEmulator", 8000, {}),
    (20, "sollol_vllm", "VLLMEmulator", 8000, {"api_key": "bench"}),
    (30, "sollol_tgi", "TGIEmulator", 3000, {}),
    (40, "sollol_tgi", "TGIEmulator", 80, {"tgi_version": "2.0.2"}),
    (50, "sollol_llamacpp", "LlamaCppEmulator", 8080, {}),
    (100, "sollol_llamacpp", "LlamaCppEmulator", 8080, {"api_2025": True}),
    (150, "sollol_localai", "LocalAIEmulator", 8080, {"ollama_api": True, "ollama_root": True}),
    (254, "sollol_localai", "LocalAIEmulator", 8080, {"version": "3.7.0"}),
]
KIND = {
    "sollol_ollama": "ollama",
    "sollol_vllm": "vllm",
    "sollol_tgi": "tgi",
    "sollol_llamacpp": "llamacpp",
    "sollol_localai": "localai",
}


def _bindable(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def serve(index: int) -> None:
    """Child process: run one emulator, print {url: backend} as one JSON line, wait for stdin to close."""
    import importlib

    from sollol.testing.servers import LoopbackServers

    expected: dict[str, str] = {}
    with LoopbackServers() as servers:
        for octet, module, cls, port, settings in NODES[index : index + 1]:
            host = f"127.0.0.{octet}"
            if not _bindable(host, port):
                print(json.dumps({"error": f"{host}:{port} is in use; free it to run the benchmark"}), flush=True)
                return
            emulator = getattr(importlib.import_module(f"{module}.emulator"), cls)(**settings)
            running = servers.start(emulator, host=host, port=port)
            expected[running.url] = KIND[module]
        print(json.dumps(expected), flush=True)
        sys.stdin.read()


async def one_round(plugins: Any) -> tuple[float, float, list[Any]]:
    """One full discovery of the network; (seconds, CPU seconds of this process, what was found)."""
    from sollol.discovery import DiscoveryContext, discover_async

    context = DiscoveryContext(environ={}, scan=(NETWORK,), ports=DEFAULT_PORTS)
    started, cpu = time.perf_counter(), time.process_time()
    found = await discover_async(context, plugins=plugins, sources=["scan"])
    return time.perf_counter() - started, time.process_time() - cpu, found


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--serve", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve is not None:
        serve(args.serve)
        return 0

    from sollol.plugins import Plugins

    # One process per emulated server, as real servers are.
    children = [
        subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--serve", str(index)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for index in range(len(NODES))
    ]
    try:
        expected: dict[str, Any] = {}
        for child in children:
            assert child.stdout is not None
            line = child.stdout.readline()
            if not line:
                print("an emulator process exited before it was ready", file=sys.stderr)
                return 2
            ready = json.loads(line)
            if "error" in ready:
                print(ready["error"], file=sys.stderr)
                return 2
            expected.update(ready)
        plugins = Plugins.load()
        rounds: list[dict[str, Any]] = []
        for _ in range(args.rounds):
            seconds, cpu, found = asyncio.run(one_round(plugins))
            got = {f.url: f.backend for f in found}
            false_positives = sorted(u for u, b in got.items() if expected.get(u) != b)
            false_negatives = sorted(u for u in expected if u not in got)
            rounds.append(
                {
                    "seconds": round(seconds, 3),
                    "cpu_seconds": round(cpu, 3),
                    "found": len(got),
                    "false_positives": false_positives,
                    "false_negatives": false_negatives,
                    "states": sorted(f"{f.url} {f.backend} {f.state.value}" for f in found),
                }
            )
    finally:
        for child in children:
            if child.stdin is not None:
                child.stdin.close()
        for child in children:
            child.wait(timeout=30)

    times = [r["seconds"] for r in rounds]
    clean = all(not r["false_positives"] and not r["false_negatives"] for r in rounds)
    summary = {
        "network": NETWORK,
        "ports": list(DEFAULT_PORTS),
        "attempts_per_round": 254 * len(DEFAULT_PORTS),
        "live_nodes": len(expected),
        "rounds": len(rounds),
        "best_s": min(times),
        "median_s": round(statistics.median(times), 3),
        "worst_s": max(times),
        "median_cpu_s": round(statistics.median(r["cpu_seconds"] for r in rounds), 3),
        "load_average": round(os.getloadavg()[0], 1),
        "target_s": TARGET_SECONDS,
        "no_false_positives_or_negatives": clean,
    }
    if args.json:
        print(json.dumps({"summary": summary, "rounds": rounds}, indent=2))
    else:
        for state in rounds[0]["states"]:
            print(f"  {state}")
        print(
            f"scan of {NETWORK} x {len(DEFAULT_PORTS)} ports, {len(expected)} live nodes: "
            f"median {summary['median_s']} s, best {summary['best_s']} s, worst {summary['worst_s']} s "
            f"over {len(rounds)} rounds (target < {TARGET_SECONDS} s; client CPU {summary['median_cpu_s']} s, "
            f"load average {summary['load_average']}); "
            f"false positives/negatives: {'none' if clean else 'SOME'}"
        )
        for r in rounds:
            if r["false_positives"] or r["false_negatives"]:
                print(f"  round: +{r['false_positives']} -{r['false_negatives']}")
    return 0 if clean and summary["worst_s"] < TARGET_SECONDS else 1


if __name__ == "__main__":
    sys.exit(main())
