"""The gateway's own cost: `sollol serve` against calling the node directly, side by side.

One emulated Ollama node that answers at once (its own process), the gateway (`sollol serve`,
its own process) in front of it, and a load generator (its own process: a small HTTP/1.1
keep-alive client per simulated user, so the load generator itself stays cheap). For 1, 16
and 64 concurrent clients, streamed and not, the same load goes to the node directly and
through the gateway in alternating runs (direct, gateway, then gateway, direct, ... for
`--rounds` rounds), so a machine busy with other work slows both sides alike; each figure is
the median over the rounds, the throughput ratio the median of the per-round ratios. It
reports latency p50/p99 (and what the gateway adds), throughput and its ratio to direct,
time to first token, and the gateway's CPU time per request read from /proc/<pid>/stat of
the gateway process. Then the gateway's start-up time and resident memory.

    python benchmarks/gateway.py [--seconds 2] [--rounds 3] [--clients 1,16,64] [--json results.json]
    nox -s bench_gateway
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
from collections.abc import Sequence
from typing import Any

HOST = "127.0.0.1"
MODEL = "llama3.2:latest"
TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


# -- a minimal HTTP/1.1 client ---------------------------------------------------------------------------


class Connection:
    """One keep-alive connection; `call` sends a prepared request and reads the whole answer."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(HOST, self.port)

    async def call(self, raw: bytes) -> tuple[int, float, float, bytes]:
        """(status, seconds to the first body byte, seconds to the end, body)."""
        assert self.reader is not None
        assert self.writer is not None
        reader = self.reader
        started = time.perf_counter()
        self.writer.write(raw)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        lower = head.lower()
        body = bytearray()
        first = 0.0
        if b"transfer-encoding: chunked" in lower:
            while True:
                size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    break
                data = await reader.readexactly(size + 2)
                if not first:
                    first = time.perf_counter() - started
                body += data[:-2]
        else:
            start = lower.index(b"content-length:") + 15
            length = int(lower[start : lower.index(b"\r\n", start)])
            body += await reader.readexactly(length)
            first = time.perf_counter() - started
        return status, first, time.perf_counter() - started, bytes(body)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def prepared(port: int, stream: bool, api: str = "ollama", model: str = MODEL) -> bytes:
    """A whole chat request: Ollama's /api/chat, or OpenAI's /v1/chat/completions (`api="openai"`)."""
    message = [{"role": "user", "content": "Why is the sky blue?"}]
    if api == "openai":
        path = "/v1/chat/completions"
        payload: dict[str, Any] = {"model": model, "messages": message, "stream": stream, "temperature": 0}
    else:
        path = "/api/chat"
        payload = {"model": model, "messages": message, "stream": stream, "options": {"temperature": 0}}
    body = json.dumps(payload).encode()
    head = f"POST {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/json\r\n"
    head += f"Content-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def complete(body: bytes, stream: bool, api: str) -> bool:
    """Whether an answer is a whole, successful one."""
    if api == "openai":
        return b"[DONE]" in body if stream else b'"choices"' in body and b'"error"' not in body
    return b'"done":true' in body or b'"done": true' in body


async def load(
    port: int, clients: int, stream: bool, seconds: float, api: str = "ollama", model: str = MODEL
) -> dict[str, Any]:
    """Run `clients` users for `seconds` (after a short warm-up); latencies of completed requests."""
    raw = prepared(port, stream, api, model)
    latencies: list[float] = []
    firsts: list[float] = []
    errors = 0
    everything = 0
    measuring = False
    stop = False
    sample = b""

    async def user() -> None:
        nonlocal errors, everything, sample
        conn = Connection(port)
        await conn.open()
        try:
            while not stop:
                status, first, total, body = await conn.call(raw)
                everything += 1
                if status != 200 or not complete(body, stream, api):
                    errors += 1
                    sample = sample or body[:300]
                elif measuring:
                    latencies.append(total)
                    firsts.append(first)
        finally:
            conn.close()

    tasks = [asyncio.create_task(user()) for _ in range(clients)]
    await asyncio.sleep(min(0.5, seconds / 4))  # warm-up
    measuring = True
    started = time.perf_counter()
    await asyncio.sleep(seconds)
    measuring = False
    elapsed = time.perf_counter() - started
    stop = True
    await asyncio.gather(*tasks, return_exceptions=True)
    latencies.sort()
    firsts.sort()

    def pct(values: list[float], q: float) -> float:
        return values[min(len(values) - 1, int(q * len(values)))] * 1000 if values else float("nan")

    return {
        "requests": len(latencies),
        "all_requests": everything,
        "errors": errors,
        "rps": len(latencies) / elapsed,
        "p50_ms": pct(latencies, 0.50),
        "p99_ms": pct(latencies, 0.99),
        "ttft_p50_ms": pct(firsts, 0.50) if stream else None,
        "mean_ms": statistics.fmean(latencies) * 1000 if latencies else float("nan"),
        "error_sample": sample.decode(errors="replace"),
    }


# -- the load generator's own process -----------------------------------------------------------------


class LoadGenerator:
    """`load` in a process of its own (so its CPU is not the measuring process's); one run at a time."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )

    def run(
        self, port: int, clients: int, stream: bool, seconds: float, api: str = "ollama", model: str = MODEL
    ) -> dict[str, Any]:
        """One run; the result of `load`."""
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        order = {"port": port, "clients": clients, "stream": stream, "seconds": seconds, "api": api, "model": model}
        self.proc.stdin.write(json.dumps(order).encode() + b"\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the load generator exited")
        result: dict[str, Any] = json.loads(line)
        return result

    def cpu_per_request(self, port: int, pid: int, clients: int, stream: bool, seconds: float) -> float:
        """A warm-up, then one run; the CPU time process `pid` spent per request (ms). Errors raise."""
        self.run(port, clients, stream, min(0.5, seconds / 4))
        before = cpu_seconds(pid)
        result = self.run(port, clients, stream, seconds)
        if result["errors"]:
            raise RuntimeError(f"{result['errors']} errors on port {port}: {result['error_sample']}")
        return (cpu_seconds(pid) - before) / max(result["all_requests"], 1) * 1000

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def worker() -> int:
    """The load generator's loop: one JSON order per line in, one JSON result per line out."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    for line in sys.stdin:
        order = json.loads(line)
        result = asyncio.run(
            load(order["port"], order["clients"], order["stream"], order["seconds"], order["api"], order["model"])
        )
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()
    return 0


# -- processes -------------------------------------------------------------------------------------------


def wait_http(port: int, path: str, deadline: float, proc: subprocess.Popen[bytes], want: bytes = b"") -> float:
    """Poll until GET path answers 200 (containing `want`); returns when, by perf_counter."""
    request = f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode()
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            output = proc.stdout.read().decode() if proc.stdout else ""
            raise RuntimeError(f"process exited with {proc.returncode}: {output}")
        try:
            with socket.create_connection((HOST, port), timeout=1) as sock:
                sock.sendall(request)
                data = b""
                while chunk := sock.recv(65536):
                    data += chunk
            if data.startswith(b"HTTP/1.1 200") and want in data:
                return time.perf_counter()
        except OSError:
            pass
        time.sleep(0.002)
    raise TimeoutError(f"nothing answered on port {port}{path}")


def start_node(port: int) -> subprocess.Popen[bytes]:
    code = (
        "import asyncio, uvicorn\n"
        "from sollol.testing.emulator import EmulatorConfig, EmulatedModel\n"
        "from sollol_ollama.emulator import OllamaEmulator\n"
        f"app = OllamaEmulator(EmulatorConfig(models=[EmulatedModel(name={MODEL!r})], name='node'))\n"
        f"asyncio.run(uvicorn.Server(uvicorn.Config(app, host={HOST!r}, port={port}, log_level='warning',"
        " access_log=False, server_header=False, date_header=False, backlog=2048)).serve())\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    wait_http(port, "/", time.perf_counter() + 30, proc)
    return proc


def start_gateway(port: int, node_port: int, server: str = "fast") -> tuple[subprocess.Popen[bytes], float, float]:
    """The gateway; (process, seconds until GET / answers, seconds until /api/tags lists the model)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SOLLOL_", "OLLAMA_"))}
    entry = "import sys; from sollol.cli import main; sys.exit(main(sys.argv[1:]))"
    started = time.perf_counter()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            entry,
            "serve",
            f"http://{HOST}:{node_port}",
            "--port",
            str(port),
            "--host",
            HOST,
            "--server",
            server,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    live = wait_http(port, "/", started + 30, proc) - started
    ready = wait_http(port, "/api/tags", started + 30, proc, MODEL.encode()) - started
    return proc, live, ready


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()


# -- the run ---------------------------------------------------------------------------------------------


def median(values: Sequence[float | None]) -> float:
    clean = [v for v in values if v is not None and v == v]
    return statistics.median(clean) if clean else float("nan")


def measure(
    loader: LoadGenerator, port: int, pid: int | None, clients: int, stream: bool, seconds: float
) -> dict[str, Any]:
    """One run against `port`; with `pid`, that process's CPU time per request (warm-up included)."""
    before = cpu_seconds(pid) if pid else 0.0
    result = loader.run(port, clients, stream, seconds)
    if pid:
        served = result["all_requests"]
        result["cpu_ms_per_request"] = (cpu_seconds(pid) - before) / served * 1000 if served else float("nan")
    return result


def side_by_side(
    loader: LoadGenerator,
    node: tuple[int, int],
    gateway: tuple[int, int],
    clients: int,
    stream: bool,
    seconds: float,
    rounds: int,
) -> dict[str, Any]:
    """`rounds` pairs of runs, direct and through the gateway, the order alternating (AB BA AB ...)."""
    directs: list[dict[str, Any]] = []
    vias: list[dict[str, Any]] = []
    for round_ in range(rounds):
        first_direct = round_ % 2 == 0
        for direct in (first_direct, not first_direct):
            if direct:
                directs.append(measure(loader, node[0], node[1], clients, stream, seconds))
            else:
                vias.append(measure(loader, gateway[0], gateway[1], clients, stream, seconds))
    ratios = [v["rps"] / d["rps"] for d, v in zip(directs, vias) if d["rps"] and v["rps"]]

    def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "rps": median([r["rps"] for r in runs]),
            "p50_ms": median([r["p50_ms"] for r in runs]),
            "p99_ms": median([r["p99_ms"] for r in runs]),
            "ttft_p50_ms": median([r["ttft_p50_ms"] for r in runs]) if stream else None,
            "cpu_ms_per_request": median([r.get("cpu_ms_per_request") for r in runs]),
            "errors": sum(r["errors"] for r in runs),
            "error_sample": next((r["error_sample"] for r in runs if r["error_sample"]), ""),
            "runs": runs,
        }

    d, g = summary(directs), summary(vias)
    return {
        "stream": stream,
        "clients": clients,
        "direct": d,
        "gateway": g,
        "added_p50_ms": median([v["p50_ms"] - x["p50_ms"] for x, v in zip(directs, vias)]),
        "added_p99_ms": median([v["p99_ms"] - x["p99_ms"] for x, v in zip(directs, vias)]),
        "throughput_ratio": median(ratios),
        "ratios": ratios,
        "gateway_cpu_ms_per_request": g["cpu_ms_per_request"],
        "node_cpu_ms_per_request": d["cpu_ms_per_request"],
        "added_ttft_ms": median([v["ttft_p50_ms"] - x["ttft_p50_ms"] for x, v in zip(directs, vias)])
        if stream
        else None,
    }


def run(seconds: float, concurrency: Sequence[int], rounds: int = 3, server: str = "fast") -> dict[str, Any]:
    node_port, gateway_port = free_port(), free_port()
    node = start_node(node_port)
    gateway = None
    loader = LoadGenerator()
    try:
        gateway, live, ready = start_gateway(gateway_port, node_port, server)
        time.sleep(0.5)
        idle_rss = rss_mb(gateway.pid)
        rows = []
        for stream in (False, True):
            for clients in concurrency:
                row = side_by_side(
                    loader, (node_port, node.pid), (gateway_port, gateway.pid), clients, stream, seconds, rounds
                )
                row["server"] = server
                rows.append(row)
                print(describe(row), flush=True)
        return {
            "server": server,
            "startup_live_s": live,
            "startup_ready_s": ready,
            "idle_rss_mb": idle_rss,
            "peak_rss_mb": rss_mb(gateway.pid, "VmHWM"),
            "rows": rows,
            "rounds": rounds,
            "seconds": seconds,
            "loadavg": os.getloadavg(),
            "python": sys.version.split()[0],
            "cpus": os.cpu_count(),
        }
    finally:
        loader.close()
        if gateway is not None:
            stop(gateway)
        stop(node)


def describe(row: dict[str, Any]) -> str:
    d, g = row["direct"], row["gateway"]
    ttft = f" ttft {d['ttft_p50_ms']:.2f}->{g['ttft_p50_ms']:.2f} ms" if row["stream"] else ""
    return (
        f"{row.get('server', '')} {'stream' if row['stream'] else 'plain '} c={row['clients']:<3} "
        f"p50 {d['p50_ms']:.2f}->{g['p50_ms']:.2f} ms (+{row['added_p50_ms']:.2f}) "
        f"p99 {d['p99_ms']:.2f}->{g['p99_ms']:.2f} ms (+{row['added_p99_ms']:.2f}) "
        f"rps {d['rps']:.0f}->{g['rps']:.0f} ({row['throughput_ratio']:.2f}x) "
        f"cpu {row['gateway_cpu_ms_per_request']:.3f} ms/req{ttft} errors {d['errors']}/{g['errors']} "
        f"(ratios {', '.join(f'{r:.2f}' for r in row['ratios'])}){' ' + g['error_sample'] if g['errors'] else ''}"
    )


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"`sollol serve --server {result.get('server', 'fast')}`:",
        "",
        "| mode | clients | direct p50 / p99 (ms) | gateway p50 / p99 (ms) | added p50 / p99 (ms) "
        "| direct req/s | gateway req/s | ratio | gateway CPU/req (ms) | node CPU/req (ms) "
        "| TTFT direct / gateway (ms) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        d, g = row["direct"], row["gateway"]
        ttft = f"{d['ttft_p50_ms']:.2f} / {g['ttft_p50_ms']:.2f}" if row["stream"] else "-"
        lines.append(
            f"| {'stream' if row['stream'] else 'non-stream'} | {row['clients']} "
            f"| {d['p50_ms']:.2f} / {d['p99_ms']:.2f} "
            f"| {g['p50_ms']:.2f} / {g['p99_ms']:.2f} | {row['added_p50_ms']:+.2f} / {row['added_p99_ms']:+.2f} "
            f"| {d['rps']:.0f} | {g['rps']:.0f} | {row['throughput_ratio']:.2f}x "
            f"| {row['gateway_cpu_ms_per_request']:.3f} | {row['node_cpu_ms_per_request']:.3f} | {ttft} |"
        )
    lines.append("")
    lines.append(
        f"Start-up: answering `GET /` after {result['startup_live_s'] * 1000:.0f} ms, models listed after "
        f"{result['startup_ready_s'] * 1000:.0f} ms. "
        f"RSS: {result['idle_rss_mb']:.1f} MB idle, {result['peak_rss_mb']:.1f} MB peak. "
        f"Medians of {result['rounds']} alternating rounds of {result['seconds']:g} s; "
        f"load average at the end {result['loadavg'][0]:.1f}."
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=2.0, help="measured seconds per run")
    parser.add_argument("--rounds", type=int, default=3, help="pairs of runs (direct, gateway) per scenario")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--clients", default="1,16,64", help="concurrency levels, comma separated")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument(
        "--server",
        default="fast,uvicorn",
        help="gateway HTTP servers to measure, comma separated (sollol serve --server: fast, uvicorn)",
    )
    args = parser.parse_args(argv)
    if args.worker:
        return worker()
    results = []
    for server in [s.strip() for s in args.server.split(",") if s.strip()]:
        results.append(run(args.seconds, [int(c) for c in args.clients.split(",")], args.rounds, server))
    for result in results:
        print()
        print(markdown(result))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results[0] if len(results) == 1 else results, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
