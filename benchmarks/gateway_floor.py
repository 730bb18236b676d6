"""What any Python gateway must spend: `sollol serve` beside a minimal relay, CPU per request.

The relay (`RELAY` below, uvloop, its own process) does the least a gateway in Python can do: it
reads the client's request by its Content-Length, writes it unchanged to the node on a kept
connection, and copies the node's answer back (by Content-Length, or chunk by chunk), with no
JSON, no routing, no failover, no metrics. Both stand in front of the same emulated Ollama node
that answers at once (`benchmarks/gateway.py`'s), the same load generator drives them in
alternating runs, and each figure is the median over the rounds of the CPU time per request read
from /proc/<pid>/stat. The relay's figure is the floor of the event loop and the system calls on
this machine; the difference is SOLLOL's own work per request.

    python benchmarks/gateway_floor.py [--seconds 2] [--rounds 3] [--clients 1,16,64]
    nox -s bench_gateway_floor
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from gateway import HOST, LoadGenerator, free_port, start_gateway, start_node, stop

RELAY = """
import asyncio, sys
host, node, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

def length(head):
    lower = head.lower()
    start = lower.index(b"content-length:") + 15
    return int(lower[start : lower.index(b"\\r\\n", start)])

async def relay(reader, writer):
    node_reader, node_writer = await asyncio.open_connection(host, node)
    try:
        while True:
            head = await reader.readuntil(b"\\r\\n\\r\\n")
            node_writer.write(head + await reader.readexactly(length(head)))
            answer = await node_reader.readuntil(b"\\r\\n\\r\\n")
            if b"transfer-encoding: chunked" in answer.lower():
                writer.write(answer)
                while True:
                    line = await node_reader.readuntil(b"\\r\\n")
                    size = int(line, 16)
                    writer.write(line + await node_reader.readexactly(size + 2))
                    if not size:
                        break
            else:
                writer.write(answer + await node_reader.readexactly(length(answer)))
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()
        node_writer.close()

async def main():
    server = await asyncio.start_server(relay, host, port, backlog=2048)
    print("ready", flush=True)
    await server.serve_forever()

try:
    import uvloop
    uvloop.run(main())
except ImportError:
    asyncio.run(main())
"""


def start_relay(port: int, node_port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-c", RELAY, HOST, str(node_port), str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != b"ready":
        raise RuntimeError("the relay did not start")
    return proc


def run(seconds: float, rounds: int, concurrency: Sequence[int]) -> list[dict[str, object]]:
    node_port = free_port()
    node = start_node(node_port)
    procs = [node]
    generator = LoadGenerator()
    try:
        relay_port = free_port()
        relay = start_relay(relay_port, node_port)
        procs.append(relay)
        gateway_port = free_port()
        gateway, _, _ = start_gateway(gateway_port, node_port)
        procs.append(gateway)
        sides = [("relay", relay_port, relay.pid), ("sollol serve", gateway_port, gateway.pid)]
        rows = []
        for stream in (False, True):
            for clients in concurrency:
                cpu: dict[str, list[float]] = {"relay": [], "sollol serve": []}
                for index in range(rounds):
                    for name, port, pid in sides if index % 2 == 0 else sides[::-1]:
                        cpu[name].append(generator.cpu_per_request(port, pid, clients, stream, seconds))
                row = {
                    "stream": stream,
                    "clients": clients,
                    "relay": statistics.median(cpu["relay"]),
                    "sollol": statistics.median(cpu["sollol serve"]),
                }
                rows.append(row)
                print(
                    f"{'stream' if stream else 'plain '} c={clients:<3} relay {row['relay']:.3f} ms/req, "
                    f"sollol serve {row['sollol']:.3f} ms/req",
                    flush=True,
                )
        return rows
    finally:
        generator.close()
        for proc in reversed(procs):
            stop(proc)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=2.0, help="measured seconds per run")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each side per scenario (alternating)")
    parser.add_argument("--clients", default="1,16,64", help="concurrency levels, comma separated")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    rows = run(args.seconds, args.rounds, [int(c) for c in args.clients.split(",")])
    print()
    print("| mode | clients | minimal relay CPU/req (ms) | `sollol serve` CPU/req (ms) | SOLLOL's own work (ms) |")
    print("|---|---|---|---|---|")
    for row in rows:
        relay, sollol = float(row["relay"]), float(row["sollol"])  # type: ignore[arg-type]
        print(
            f"| {'stream' if row['stream'] else 'non-stream'} | {row['clients']} | {relay:.3f} | {sollol:.3f} "
            f"| {sollol - relay:+.3f} |"
        )
    print(
        f"\nMedians of {args.rounds} alternating rounds of {args.seconds:g} s ({time.perf_counter() - started:.0f} s)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
