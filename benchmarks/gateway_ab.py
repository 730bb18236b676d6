"""Two versions of the gateway side by side: CPU per request of `sollol serve` from two source trees.

Each tree's `sollol-core/src` and `plugins/sollol-ollama/src` go first on `PYTHONPATH` of its own
`sollol serve` process; both stand in front of one emulated Ollama node that answers at once, and
one load generator drives them in alternating runs (A, B, then B, A, ...), so whatever else the
machine does slows both alike. Each figure is the median over the rounds of the CPU time per
request read from /proc/<pid>/stat; the ratio is the median of the per-round ratios B / A.

    git worktree add /tmp/before <commit>
    python benchmarks/gateway_ab.py /tmp/before . [--clients 1,16] [--rounds 3] [--seconds 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections.abc import Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from gateway import LoadGenerator, free_port, start_gateway, start_node, stop


def gateway_of(tree: str, node_port: int) -> tuple[int, int, object]:
    """`sollol serve` running the code of `tree`: (port, pid, process)."""
    tree = os.path.abspath(tree)
    paths = [os.path.join(tree, "sollol-core", "src"), os.path.join(tree, "plugins", "sollol-ollama", "src")]
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(paths + ([saved] if saved else []))
    try:
        port = free_port()
        proc, _, _ = start_gateway(port, node_port)
    finally:
        if saved is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = saved
    return port, proc.pid, proc


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", help="the first source tree (before)")
    parser.add_argument("b", help="the second source tree (after)")
    parser.add_argument("--seconds", type=float, default=2.0, help="measured seconds per run")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each side per scenario (alternating)")
    parser.add_argument("--clients", default="1,16", help="concurrency levels, comma separated")
    args = parser.parse_args(argv)
    node_port = free_port()
    procs = [start_node(node_port)]
    generator = LoadGenerator()
    try:
        sides = []
        for tree in (args.a, args.b):
            port, pid, proc = gateway_of(tree, node_port)
            procs.append(proc)  # type: ignore[arg-type]
            sides.append((port, pid))
        print("| mode | clients | A CPU/req (ms) | B CPU/req (ms) | B / A |")
        print("|---|---|---|---|---|")
        for stream in (False, True):
            for clients in (int(c) for c in args.clients.split(",")):
                cpu: list[list[float]] = [[], []]
                for index in range(args.rounds):
                    for side in (0, 1) if index % 2 == 0 else (1, 0):
                        port, pid = sides[side]
                        cpu[side].append(generator.cpu_per_request(port, pid, clients, stream, args.seconds))
                ratio = statistics.median(b / a for a, b in zip(cpu[0], cpu[1], strict=True))
                print(
                    f"| {'stream' if stream else 'non-stream'} | {clients} | {statistics.median(cpu[0]):.3f} "
                    f"| {statistics.median(cpu[1]):.3f} | {ratio:.2f} |",
                    flush=True,
                )
    finally:
        generator.close()
        for proc in reversed(procs):
            stop(proc)  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    sys.exit(main())
