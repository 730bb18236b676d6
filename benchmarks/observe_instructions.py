"""Machine instructions per request of the gateway, with and without observability, under callgrind.

Throughput on a shared VM moves by several per cent from one second to the next, so the side by
side benchmark (`observe_overhead.py`) resolves 2-3%. Counted instructions do not drift: each
gateway variant runs under valgrind's callgrind (its own process, started fresh), the gateway
benchmark's load generator sends it requests for `--seconds` after a warm-up, and callgrind's
counters are zeroed before and dumped after that load, so start-up and warm-up are not counted.
At one client every request takes the same path, and two runs of one variant agree to about
0.1%; with more clients the way requests share the event loop's passes moves the figure by up
to about 0.5%.

Under callgrind the gateway runs some 50 times slower, so the pool's batches of activity (one
every `DELIVERY_DELAY`) would hold 50 times fewer requests than at full speed; `--delay`
(default 0.5 s) stretches the delay by as much, so each batch holds about as many requests as
in the serving gateway.

Variants: those of `observe_overhead.py --controls` (`off`, `mounted`, `batch-noop`, `noop`,
`on`), and `feed`, `metrics`, `log`: one of the gateway's observers alone.

    python benchmarks/observe_instructions.py [--variants off,on] [--clients 1] [--seconds 6]
    nox -s bench_observe_instructions -- --clients 64    (needs valgrind: apt-get install valgrind)
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from gateway import HOST, MODEL, LoadGenerator, free_port, start_node, stop, wait_http
from observe_overhead import GATEWAY

#: Put in front of the gateway script's runner: the delivery delay, and the one-observer variants.
VARIANTS = """
import sollol.pool
sollol.pool.DELIVERY_DELAY = {delay}
if variant in ("feed", "metrics", "log"):
    for observer in app.observe.observers:
        app.pool.plugins.remove_observer(observer)
    chosen = {{
        "feed": app.observe.feed,
        "metrics": app.observe.metrics,
        "log": app.observe.event_log,
    }}[variant]
    app.pool.plugins.add_observer(chosen, name="chosen")
"""


def script(delay: float) -> str:
    """The observability benchmark's gateway, with the variants above."""
    marker = "try:\n    import uvloop"
    return GATEWAY.replace(marker, VARIANTS.format(delay=delay).replace("{", "{{").replace("}", "}}") + marker)


def totals(path: str) -> dict[str, int]:
    """Event totals of one callgrind dump."""
    with open(path, encoding="utf-8", errors="replace") as dump:
        text = dump.read()
    events = re.search(r"^events:\s*(.*)$", text, re.M)
    summary = re.search(r"^(?:summary|totals):\s*(.*)$", text, re.M)
    if events is None or summary is None:
        raise RuntimeError(f"{path} is not a callgrind dump")
    return dict(zip(events.group(1).split(), map(int, summary.group(1).split()), strict=False))


def measure(variant: str, node_port: int, clients: int, stream: bool, seconds: float, delay: float) -> dict[str, float]:
    """Instructions per request of one fresh gateway of `variant`."""
    out = tempfile.mkdtemp(prefix="sollol-callgrind-")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SOLLOL_", "OLLAMA_"))}
    code = script(delay).format(host=HOST, node=node_port, port=port)
    proc = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/cg.%p", sys.executable, "-c", code, variant],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    generator = LoadGenerator()
    try:
        wait_http(port, "/api/tags", time.perf_counter() + 300, proc, MODEL.encode())
        generator.run(port, clients, stream, 3.0)  # warm-up, not counted
        subprocess.run(["callgrind_control", "--zero", str(proc.pid)], check=True, capture_output=True)
        result = generator.run(port, clients, stream, seconds)
        subprocess.run(["callgrind_control", "--dump=measured", str(proc.pid)], check=True, capture_output=True)
        deadline = time.monotonic() + 10
        while not glob.glob(f"{out}/cg.*.1") and time.monotonic() < deadline:
            time.sleep(0.1)
        (dump,) = glob.glob(f"{out}/cg.*.1")
        counted = totals(dump)
    finally:
        generator.close()
        stop(proc)
        shutil.rmtree(out, ignore_errors=True)
    requests = max(result["all_requests"], 1)
    return {"requests": requests, "errors": result["errors"], "instructions": counted["Ir"] / requests}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default="off,mounted,batch-noop,feed,metrics,log,on")
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--delay", type=float, default=0.5, help="the pool's DELIVERY_DELAY under callgrind")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    node_port = free_port()
    node = start_node(node_port)
    rows = []
    try:
        for variant in args.variants.split(","):
            row = measure(variant, node_port, args.clients, args.stream, args.seconds, args.delay)
            rows.append((variant, row))
            print(f"{variant:11} {row['instructions']:,.0f} instructions per request ({row['requests']} requests)")
    finally:
        stop(node)
    base = dict(rows).get("off")
    if base is not None:
        print()
        print(
            f"| variant | instructions per request | added to `off` | share of `off` |  ({args.clients} clients, "
            f"{'streamed' if args.stream else 'not streamed'})"
        )
        print("|---|---|---|---|")
        for variant, row in rows:
            added = row["instructions"] - base["instructions"]
            print(f"| {variant} | {row['instructions']:,.0f} | {added:+,.0f} | {added / base['instructions']:+.1%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
