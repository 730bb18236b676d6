"""`sollol detect URL...` and `sollol discover`: what runs where, as a table or as JSON."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Sequence

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from sollol.cli import command
from sollol.detect import DetectedNode, detect_async
from sollol.detection import NodeState
from sollol.discovery import DiscoveryContext, discover_async
from sollol.errors import ConfigError
from sollol.scan import DEFAULT_CONNECT_TIMEOUT

STATE_STYLE = {
    NodeState.UP: "green",
    NodeState.LOADING: "yellow",
    NodeState.AUTH_REQUIRED: "magenta",
    NodeState.DOWN: "red",
    NodeState.UNKNOWN: "dim",
}
MAX_MODELS_SHOWN = 4


def _ports(text: str) -> tuple[int, ...]:
    ports: list[int] = []
    for part in text.replace(",", " ").split():
        try:
            port = int(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r} is not a port number") from None
        if not 0 < port < 65536:
            raise argparse.ArgumentTypeError(f"port {port} is out of range")
        ports.append(port)
    return tuple(ports)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    parser.add_argument("--timeout", type=float, default=None, help="seconds each probe may take (default 2.5)")
    parser.add_argument("--no-models", action="store_true", help="do not list the models of up nodes")


def _configure_detect(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "urls", nargs="+", metavar="URL", help="base URLs (http://host:port, host:port; a pasted /v1 is fine)"
    )
    parser.add_argument(
        "--backend", default=None, help="name the kind instead of detecting it (ollama, vllm, tgi, llamacpp, localai)"
    )
    _common(parser)


def _configure_discover(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "nodes", nargs="*", metavar="URL", help="nodes to include besides SOLLOL_NODES, OLLAMA_HOST and the config"
    )
    parser.add_argument(
        "--scan",
        action="append",
        default=[],
        metavar="CIDR",
        help="scan this network (repeatable); nothing is scanned otherwise",
    )
    parser.add_argument(
        "--ports",
        type=_ports,
        default=(),
        help="ports to try on localhost and scanned hosts, e.g. 11434,8000 (default: every backend's default ports)",
    )
    parser.add_argument("--config", default=None, metavar="FILE", help="a TOML config file (default: $SOLLOL_CONFIG)")
    parser.add_argument("--no-localhost", action="store_true", help="do not try 127.0.0.1 on the default ports")
    parser.add_argument("--force-scan", action="store_true", help="allow scanning a network larger than a /16")
    parser.add_argument(
        "--connect-timeout",
        type=float,
        default=DEFAULT_CONNECT_TIMEOUT,
        help="seconds a scan waits for each TCP connection",
    )
    parser.add_argument("--concurrency", type=int, default=512, help="connection attempts open at once while scanning")
    _common(parser)


def render_table(found: Sequence[DetectedNode], title: str) -> Table:
    """A rich table of detected nodes."""
    table = Table(title=title)
    for column in ("url", "backend", "version", "models", "state", "latency", "source"):
        table.add_column(column, justify="right" if column == "latency" else "left")
    for node in found:
        models = ", ".join(node.models[:MAX_MODELS_SHOWN])
        if len(node.models) > MAX_MODELS_SHOWN:
            models += f" (+{len(node.models) - MAX_MODELS_SHOWN})"
        style = STATE_STYLE.get(node.state, "")
        state = f"[{style}]{node.state.value}[/{style}]" if style else node.state.value
        table.add_row(
            node.url,
            node.backend or "-",
            node.version or "-",
            models or "-",
            state,
            "-" if node.latency is None else f"{node.latency * 1000:.0f} ms",
            node.source or "-",
        )
    return table


def _print(found: Sequence[DetectedNode], args: argparse.Namespace, title: str) -> None:
    if args.json:
        print(json.dumps([node.to_json() for node in found], indent=2))
        return
    console = Console()
    console.print(render_table(found, title))
    for node in found:
        if node.state in (NodeState.DOWN, NodeState.UNKNOWN) and node.reason:
            console.print(f"[dim]{node.url}: {node.reason}[/dim]")


@command("detect", "identify the server behind each URL (backend, version, models, state)", _configure_detect)
def detect_command(args: argparse.Namespace) -> int:
    """`sollol detect URL...`: exit status 1 when any node is down or unrecognised."""
    found = asyncio.run(
        detect_async(list(args.urls), backend=args.backend, timeout=args.timeout, models=not args.no_models)
    )
    _print(found, args, "SOLLOL detect")
    bad = [n for n in found if n.backend is None or n.state in (NodeState.DOWN, NodeState.UNKNOWN)]
    return 1 if bad else 0


@command(
    "discover",
    "find nodes: listed, from the environment and config, on localhost, and in networks you name",
    _configure_discover,
)
def discover_command(args: argparse.Namespace) -> int:
    """`sollol discover [--scan CIDR] [--ports ...] [--json]`."""
    context = DiscoveryContext(
        nodes=tuple(args.nodes),
        config_file=args.config,
        scan=tuple(args.scan),
        ports=tuple(args.ports),
        include_localhost=not args.no_localhost,
        force_scan=args.force_scan,
    )
    errors = Console(stderr=True)
    show = not args.json or errors.is_terminal
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=errors,
        transient=True,
        disable=not show,
    ) as bar:
        tasks: dict[str, TaskID] = {}

        def progress(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                label = "scanning" if phase == "scan" else "detecting"
                tasks[phase] = bar.add_task(label, total=total)
            bar.update(tasks[phase], completed=done, total=total)

        try:
            found = asyncio.run(
                discover_async(
                    context,
                    timeout=args.timeout,
                    connect_timeout=args.connect_timeout,
                    concurrency=args.concurrency,
                    models=not args.no_models,
                    progress=progress,
                )
            )
        except ConfigError as exc:
            errors.print(f"[red]error:[/red] {exc}")
            return 2
    _print(found, args, "SOLLOL discover")
    if not found and not args.json:
        Console().print(
            "no nodes found: list some (sollol discover URL), set SOLLOL_NODES, "
            "or scan a network (--scan 192.168.1.0/24)"
        )
    return 0
