"""Python bytecodes per request of the gateway, per function: where its own work goes.

CPU time on a shared VM moves by 10-20% between runs; a count of the bytecodes the interpreter
runs does not depend on the machine's speed. The gateway (`sollol serve`'s app on its fast server,
from the source tree given) runs with a `sys.settrace` opcode counter that SIGUSR1 switches on and
SIGUSR2 off, in front of one emulated Ollama node; one client sends streamed (or plain) chats
meanwhile. Tracing slows the gateway about twentyfold, so the node's answer is always whole when
the gateway reads it: the count is of the request path, not of how often a node's trickle wakes
the gateway (which `gateway.py` and `gateway_ab.py` measure in CPU time).

    python benchmarks/gateway_opcodes.py [TREE] [--plain] [--seconds 4] [--top 30]
    nox -s bench_gateway_opcodes -- /tmp/before
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from gateway import HOST, MODEL, LoadGenerator, free_port, start_node, stop, wait_http

#: The gateway with its opcode counter (formatted with the output path, host, node port and port).
TRACED = """
import asyncio, collections, signal, sys
from sollol.cli_serve import bind, settle_heap
from sollol.gateway import Gateway
from sollol.gateway.fastserver import serve_gateway
from sollol.gateway.http1 import LeanTransport
from sollol.pool import AsyncPool
import sollol.transport
sollol.transport.TRANSPORT_CLASS = LeanTransport  # as `sollol serve` runs it
app = Gateway(AsyncPool([{{"url": "http://{host}:{node}", "backend": "ollama"}}]))
counts = collections.Counter()

def tracer(frame, event, arg):
    frame.f_trace_opcodes = True
    frame.f_trace_lines = False
    code = frame.f_code
    key = code.co_filename.split("site-packages/")[-1].split("src/")[-1] + ":" + code.co_name

    def local(frame, event, arg):
        if event == "opcode":
            counts[key] += 1
        return local

    return local

def start(*_):
    sys.settrace(tracer)

def dump(*_):
    sys.settrace(None)
    with open({out!r}, "w") as handle:
        for key, count in counts.most_common():
            handle.write(f"{{count}}\\t{{key}}\\n")

signal.signal(signal.SIGUSR1, start)
signal.signal(signal.SIGUSR2, dump)
try:
    import uvloop
    runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
except ImportError:
    runner = asyncio.Runner()
with runner:
    runner.run(serve_gateway(app, bind("{host}", {port}), stop=asyncio.Event(), started=settle_heap))
"""


def count(tree: str, stream: bool, seconds: float) -> tuple[int, list[tuple[int, str]]]:
    """(requests, [(opcodes, function), ...] most first) for the gateway of `tree`."""
    tree = os.path.abspath(tree)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SOLLOL_", "OLLAMA_"))}
    paths = [os.path.join(tree, "sollol-core", "src"), os.path.join(tree, "plugins", "sollol-ollama", "src")]
    env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    node_port, port = free_port(), free_port()
    node = start_node(node_port)
    generator = LoadGenerator()
    with tempfile.TemporaryDirectory() as scratch:
        out = os.path.join(scratch, "opcodes.tsv")
        code = TRACED.format(out=out, host=HOST, node=node_port, port=port)
        gateway = subprocess.Popen([sys.executable, "-c", code], env=env)
        try:
            wait_http(port, "/api/tags", time.perf_counter() + 30, gateway, MODEL.encode())
            generator.run(port, 1, stream, 1.0)  # warm up: connections, caches, learned figures
            gateway.send_signal(signal.SIGUSR1)
            time.sleep(0.2)
            result = generator.run(port, 1, stream, seconds)
            gateway.send_signal(signal.SIGUSR2)
            deadline = time.monotonic() + 10
            while not os.path.exists(out) and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.2)
            with open(out) as handle:
                rows = [(int(n), name.strip()) for n, name in (line.split("\t", 1) for line in handle)]
        finally:
            stop(gateway)
            generator.close()
            stop(node)
    if result["errors"]:
        raise RuntimeError(f"{result['errors']} errors: {result['error_sample']}")
    return int(result["all_requests"]), rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tree", nargs="?", default=".", help="the source tree whose gateway is counted")
    parser.add_argument("--plain", action="store_true", help="non-streamed chats instead of streamed ones")
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds of traced load")
    parser.add_argument("--top", type=int, default=30, help="functions listed")
    args = parser.parse_args(argv)
    requests, rows = count(args.tree, not args.plain, args.seconds)
    total = sum(n for n, _ in rows)
    kind = "plain" if args.plain else "streamed"
    print(f"{args.tree}: {requests} {kind} requests, {total / requests:,.0f} bytecodes per request")
    print("| bytecodes per request | share | function |")
    print("|---|---|---|")
    for n, name in rows[: args.top]:
        print(f"| {n / requests:,.1f} | {100 * n / total:.1f}% | `{name}` |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
