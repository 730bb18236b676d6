"""`sollol nodes`: every node's backend, state, models, VRAM, load and latency, in the terminal.

sollol nodes                                   # ask the gateway on 127.0.0.1:11434
sollol nodes --url http://gpu-box:11434 --watch
sollol nodes http://10.0.0.5:11434 http://10.0.0.6:8000 --json   # no gateway: probe the nodes

It reads the same document the gateway serves at `/api/sollol/nodes` (with `--api-key` or
$SOLLOL_API_KEY when the gateway wants one), or builds a pool over the nodes given and
reads it the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import time
from collections.abc import Mapping
from typing import Any

import httpx
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from sollol.cli import command
from sollol.errors import ConfigError, SollolError

DEFAULT_URL = "http://127.0.0.1:11434"
URL_ENV = "SOLLOL_URL"
KEY_ENV = "SOLLOL_API_KEY"
NODES_PATH = "/api/sollol/nodes"

STATE_STYLE = {"up": "green", "unknown": "dim", "loading": "yellow", "down": "bold red", "auth_required": "red"}
CIRCUIT_STYLE = {"closed": "green", "half_open": "yellow", "open": "bold red"}


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("nodes", nargs="*", metavar="URL", help="probe these nodes directly instead of a gateway")
    parser.add_argument(
        "--url", default=None, help=f"the gateway to ask (default ${URL_ENV} or {DEFAULT_URL}; ignored with node URLs)"
    )
    parser.add_argument("--api-key", default=None, help=f"the gateway's API key (default ${KEY_ENV})")
    parser.add_argument("--backend", default=None, help="the backend of the given nodes (default: detect)")
    parser.add_argument("--watch", action="store_true", help="keep the table up to date until Ctrl-C")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between updates with --watch")
    parser.add_argument("--count", type=int, default=0, help="with --watch, stop after this many updates (0: never)")
    parser.add_argument("--json", action="store_true", help="print the status document as JSON")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the gateway")


class GatewaySource:
    """Reads the status document from a running gateway."""

    def __init__(self, url: str, api_key: str | None, timeout: float) -> None:
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self.url = url.rstrip("/")
        self._client = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=timeout, trust_env=False)

    async def read(self) -> dict[str, Any]:
        """The document, or a `SollolError` saying what went wrong."""
        try:
            response = await self._client.get(NODES_PATH)
        except httpx.HTTPError as exc:
            raise ConfigError(
                f"cannot reach a SOLLOL gateway at {self.url} ({type(exc).__name__}: {exc}); "
                "start one with `sollol serve`, pass --url, or list node URLs to probe them directly"
            ) from None
        if response.status_code == 401:
            raise ConfigError(f"the gateway at {self.url} wants an API key: pass --api-key or set ${KEY_ENV}")
        if response.status_code == 404:
            raise ConfigError(
                f"{self.url} answered 404 for {NODES_PATH}: is it a SOLLOL gateway with observability on?"
            )
        if response.status_code != 200:
            raise ConfigError(f"the gateway at {self.url} answered {response.status_code}: {response.text[:200]}")
        document: dict[str, Any] = response.json()
        return document

    async def aclose(self) -> None:
        """Close the connection."""
        await self._client.aclose()


class PoolSource:
    """Builds a pool over the given nodes and reads it (health and activity refreshed per read)."""

    def __init__(self, nodes: list[str], backend: str | None) -> None:
        from sollol.pool import AsyncPool

        self.pool = AsyncPool(nodes, backend=backend, health_interval=0, refresh_interval=0)
        self._fresh = False

    async def read(self) -> dict[str, Any]:
        """The document for the pool's nodes now."""
        from sollol.observe.status import status_document

        if self._fresh:
            await self.pool.refresh()
        else:
            await self.pool.start()
            self._fresh = True
        return status_document(self.pool)

    async def aclose(self) -> None:
        """Close the pool."""
        await self.pool.aclose()


def _bytes(value: Any) -> str:
    if value is None:
        return "?"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return "?"


def _ms(value: Any) -> str:
    return "-" if value is None else f"{value * 1000:.1f} ms"


def render(document: Mapping[str, Any]) -> Group:
    """The nodes table (and the last routing decisions) for a status document."""
    summary = document.get("summary") or {}
    title = (
        f"SOLLOL nodes: {summary.get('healthy', 0)} of {summary.get('nodes', 0)} healthy, "
        f"{summary.get('in_flight', 0)} in flight, {summary.get('queued', 0)} queued"
    )
    table = Table(title=title, title_justify="left", caption="* loaded in memory", caption_justify="left")
    for column, justify in (
        ("node", "left"),
        ("backend", "left"),
        ("state", "left"),
        ("circuit", "left"),
        ("models", "left"),
        ("VRAM", "right"),
        ("in flight", "right"),
        ("queued", "right"),
        ("first token", "right"),
        ("served/failed", "right"),
    ):
        table.add_column(column, justify=justify, no_wrap=column in ("node", "state"))  # type: ignore[arg-type]
    for node in document.get("nodes") or ():
        state = str(node.get("state"))
        circuit = str(node.get("circuit"))
        models = Text()
        for index, model in enumerate(node.get("models") or ()):
            if index:
                models.append(", ")
            models.append(
                model["name"] + ("*" if model.get("loaded") else ""), style="bold" if model.get("loaded") else ""
            )
        vram = node.get("vram") or {}
        if vram.get("total"):
            shown = f"{_bytes(vram.get('used'))} / {_bytes(vram['total'])}"
        elif vram.get("used") is not None:
            shown = _bytes(vram["used"])
        else:
            shown = "-"
        limit = node.get("max_concurrency")
        table.add_row(
            str(node.get("id")),
            str(node.get("backend") or "?"),
            Text(state, style=STATE_STYLE.get(state, "")),
            Text(circuit, style=CIRCUIT_STYLE.get(circuit, "")),
            models if models else Text("-", style="dim"),
            shown,
            f"{node.get('in_flight', 0)}" + (f"/{limit}" if limit else ""),
            str(node.get("queued", 0)),
            _ms((node.get("latency") or {}).get("ttft")),
            f"{node.get('served', 0)}/{node.get('failed', 0)}",
        )
    parts: list[Any] = [table]
    errors = [
        (n["id"], n["last_error"]) for n in document.get("nodes") or () if n.get("last_error") and not n.get("healthy")
    ]
    for ident, error in errors:
        parts.append(Text(f"{ident}: {error}", style="red"))
    decisions = list(document.get("decisions") or ())[:8]
    if decisions:
        recent = Table(title="last routing decisions", title_justify="left")
        for column in ("time", "model", "node", "why", "outcome"):
            recent.add_column(column)
        for item in decisions:
            outcome = str(item.get("outcome"))
            recent.add_row(
                time.strftime("%H:%M:%S", time.localtime(item.get("at") or 0)),
                str(item.get("model")),
                str(item.get("node")),
                str(item.get("reason")),
                Text(outcome, style={"ok": "green", "error": "red"}.get(outcome, "yellow")),
            )
        parts.append(recent)
    return Group(*parts)


async def _run(args: argparse.Namespace, console: Console) -> int:
    source: GatewaySource | PoolSource
    if args.nodes:
        source = PoolSource(list(args.nodes), args.backend)
    else:
        url = args.url or os.environ.get(URL_ENV) or DEFAULT_URL
        source = GatewaySource(url, args.api_key or os.environ.get(KEY_ENV), args.timeout)
    try:
        document = await source.read()
        if args.json:
            console.print_json(json.dumps(document))
        if not args.watch:
            if not args.json:
                console.print(render(document))
            return 0
        shown = 1
        with contextlib.ExitStack() as stack:
            live = (
                None if args.json else stack.enter_context(Live(render(document), console=console, auto_refresh=False))
            )
            while not args.count or shown < args.count:
                await asyncio.sleep(max(args.interval, 0.1))
                document = await source.read()
                if live is None:
                    console.print_json(json.dumps(document))
                else:
                    live.update(render(document), refresh=True)
                shown += 1
        return 0
    finally:
        await source.aclose()


@command("nodes", "show every node: backend, state, models, VRAM, load, latency (live with --watch)", _configure)
def nodes_command(args: argparse.Namespace) -> int:
    """`sollol nodes`."""
    console = Console(highlight=False)
    try:
        return asyncio.run(_run(args, console))
    except (SollolError, OSError) as exc:
        console.print(f"[red]sollol nodes:[/red] {exc}")
        return 2
