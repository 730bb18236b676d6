"""`sollol serve`: run the gateway (the Ollama and OpenAI APIs) over the cluster's nodes.

sollol serve http://10.0.0.5:11434 http://10.0.0.6:8000      # nodes by flag
SOLLOL_NODES=10.0.0.5:11434 sollol serve --port 8080          # or by environment
sollol serve --local-llamacpp 2                                # two local llama-server nodes
sollol serve --emulate ollama --emulate vllm --smoke           # emulated nodes, a self-test
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import gc
import importlib
import logging
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from rich.console import Console

from sollol.cli import command
from sollol.errors import ConfigError, SollolError
from sollol.gateway.config import GatewayConfig
from sollol.node import is_loopback

log = logging.getLogger(__name__)

EMULATOR_KINDS = ("ollama", "vllm", "tgi", "llamacpp", "localai")


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "nodes", nargs="*", metavar="URL", help="nodes to serve from (default: $SOLLOL_NODES or the config's nodes)"
    )
    parser.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1; $SOLLOL_HOST)")
    parser.add_argument("--port", type=int, default=None, help="port to listen on (default 11434; $SOLLOL_PORT)")
    parser.add_argument(
        "--node", action="append", default=[], metavar="URL", help="a node (repeatable; same as the positional URLs)"
    )
    parser.add_argument(
        "--api-key",
        action="append",
        default=[],
        metavar="KEY",
        help="require this key from clients (repeatable; $SOLLOL_API_KEYS, comma separated)",
    )
    parser.add_argument(
        "--max-body", type=int, default=None, metavar="BYTES", help="largest request body accepted (default 32 MiB)"
    )
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="a request not whole this long after its first byte gets 408 (default 30; $SOLLOL_REQUEST_TIMEOUT)",
    )
    parser.add_argument(
        "--keep-alive",
        type=float,
        default=None,
        metavar="SECONDS",
        help="close a client's idle keep-alive connection after this long (default 5; $SOLLOL_KEEP_ALIVE)",
    )
    parser.add_argument("--policy", default=None, help="routing policy (default least_loaded; $SOLLOL_POLICY)")
    parser.add_argument("--config", default=None, metavar="FILE", help="a TOML config file (default: $SOLLOL_CONFIG)")
    parser.add_argument(
        "--access-log", action="store_true", default=None, help="log every request (paths only, never credentials)"
    )
    parser.add_argument(
        "--local-llamacpp",
        type=int,
        default=0,
        metavar="N",
        help="start N local llama-server nodes: N-1 for chat and one for embeddings (1: chat only)",
    )
    parser.add_argument(
        "--llamacpp-model", default=None, metavar="GGUF", help="model file for --local-llamacpp (default: Gemma 3 270M)"
    )
    parser.add_argument(
        "--emulate",
        action="append",
        default=[],
        metavar="KIND",
        help=f"also serve from an emulated node of this kind, on loopback (repeatable; {', '.join(EMULATOR_KINDS)})",
    )
    parser.add_argument(
        "--server",
        choices=("fast", "uvicorn"),
        default="fast",
        help="HTTP server: the built-in httptools one (default) or uvicorn",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="start, send chat/generate/embed requests through the clients, print, exit 0/1",
    )


@command("serve", "run the gateway: the Ollama and OpenAI APIs for the whole cluster", _configure)
def serve_command(args: argparse.Namespace) -> int:
    """`sollol serve`."""
    console = Console(highlight=False, soft_wrap=True)
    try:
        config = GatewayConfig.resolve(
            host=args.host,
            port=args.port,
            nodes=[*args.nodes, *args.node],
            api_keys=args.api_key,
            max_body=args.max_body,
            policy=args.policy,
            access_log=args.access_log,
            request_timeout=args.request_timeout,
            keep_alive=args.keep_alive,
            config_file=args.config,
        )
    except ConfigError as exc:
        console.print(f"[red]sollol serve:[/red] {exc}")
        return 2
    runner = _runner()
    try:
        with runner:
            return runner.run(_serve(config, args, console))
    except PortTaken as exc:
        console.print(f"[red]sollol serve:[/red] {exc}")
        return 3
    except (SollolError, OSError) as exc:
        console.print(f"[red]sollol serve:[/red] {exc}")
        return 2


def _runner() -> asyncio.Runner:
    """An event loop runner, on uvloop when it is installed."""
    try:
        import uvloop
    except ImportError:
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


class PortTaken(SollolError):
    """The address the gateway should listen on is in use."""


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to host:port, or `PortTaken` saying what to do."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            hint = " (Ollama itself uses 11434: is `ollama serve` running?)" if port == 11434 else ""
            raise PortTaken(
                f"port {port} on {host} is already in use{hint}; choose another with --port or SOLLOL_PORT"
            ) from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise PortTaken(
                f"cannot listen on {host}: this machine has no such address; check --host or SOLLOL_HOST"
            ) from None
        raise
    sock.set_inheritable(True)
    return sock


def client_base(host: str, port: int) -> str:
    """The URL clients on this machine use (a wildcard address becomes loopback)."""
    if host in ("0.0.0.0", "", "::"):
        host = "127.0.0.1"
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


# -- extra nodes: emulated and managed local ones ---------------------------------------------------


def emulator_class(kind: str) -> Callable[..., Any]:
    """The emulator a backend plugin ships (`sollol_<kind>.emulator`)."""
    from sollol.testing.emulator import Emulator

    try:
        module = importlib.import_module(f"sollol_{kind}.emulator")
    except ImportError:
        raise ConfigError(f"no emulator for {kind!r}: install the plugin (pip install sollol-{kind})") from None
    for value in vars(module).values():
        if (
            isinstance(value, type)
            and issubclass(value, Emulator)
            and value is not Emulator
            and value.__module__ == module.__name__
        ):
            return value
    raise ConfigError(f"sollol_{kind}.emulator has no emulator class")


@contextlib.contextmanager
def emulated_nodes(kinds: Sequence[str]) -> Iterator[list[dict[str, Any]]]:
    """Start one emulated node per kind on loopback; yields node specs."""
    if not kinds:
        yield []
        return
    from sollol.testing.emulator import EmulatedModel, EmulatorConfig
    from sollol.testing.servers import LoopbackServers

    with LoopbackServers() as servers:
        specs: list[dict[str, Any]] = []
        for index, kind in enumerate(k.strip().lower() for spec in kinds for k in spec.split(",") if k.strip()):
            cls = emulator_class(kind)
            models = [EmulatedModel(name="llama3.2:latest")]
            if kind in ("ollama", "localai", "vllm"):
                models.append(EmulatedModel(name="all-minilm:latest", embedding=True))
            app = cls(EmulatorConfig(models=models, name=f"{kind}-emulator"))
            running = servers.start(app, host=f"127.0.0.{10 + index}")
            specs.append({"url": running.url, "backend": kind, "name": f"{kind}-emulator-{index}"})
        yield specs


@contextlib.contextmanager
def local_llamacpp(count: int, model: str | None, console: Console) -> Iterator[list[dict[str, Any]]]:
    """Start `count` local llama-servers, one of them for embeddings when count > 1 (sollol-llamacpp[server])."""
    if count <= 0:
        yield []
        return
    try:
        managed = importlib.import_module("sollol_llamacpp.managed")
    except ImportError:
        raise ConfigError(
            "--local-llamacpp needs managed llama.cpp nodes: pip install 'sollol-llamacpp[server]'"
        ) from None
    chat, embed = (count - 1, 1) if count > 1 else (1, 0)
    console.print(f"starting {chat} local llama-server chat node(s) and {embed} embeddings node(s) ...")
    started = time.perf_counter()
    settings: dict[str, Any] = {"ctx_size": 2048, "parallel": 2}
    if model:
        settings["model"] = model
    with managed.ManagedCluster(chat=chat, embed=embed, **settings) as cluster:
        console.print(
            f"llama.cpp nodes ready in {time.perf_counter() - started:.1f}s: chat model {cluster.chat_model!r} "
            f"on {', '.join(s.url for s in cluster.chat_servers)}; embeddings model {cluster.embed_model!r} "
            f"on {', '.join(s.url for s in cluster.embed_servers)}"
        )
        yield list(cluster.nodes)


# -- serving ----------------------------------------------------------------------------------------


def use_lean_http_client() -> None:
    """Make new pools send node requests through `LeanTransport` (see sollol.gateway.http1)."""
    import sollol.transport
    from sollol.gateway.http1 import LeanTransport

    sollol.transport.TRANSPORT_CLASS = LeanTransport


async def _serve_fast(
    app: Any,
    sock: socket.socket,
    config: GatewayConfig,
    args: argparse.Namespace,
    console: Console,
    pool: Any,
    started: float,
) -> int:
    """Run the gateway on `sollol.gateway.fastserver` until SIGINT/SIGTERM (or the smoke test ends)."""
    import signal

    from sollol.gateway.fastserver import serve_gateway

    if config.access_log:
        logging.getLogger("sollol.gateway.access").setLevel(logging.INFO)
        if not logging.getLogger().handlers:
            logging.basicConfig(level=logging.WARNING, format="%(message)s")
    stop = asyncio.Event()
    ready = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, stop.set)
    task = asyncio.create_task(
        serve_gateway(
            app,
            sock,
            stop=stop,
            started=ready.set,
            access_log=config.access_log,
            keep_alive_timeout=config.keep_alive,
            request_timeout=config.request_timeout,
        )
    )
    waiter = asyncio.create_task(ready.wait())
    await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
    if not ready.is_set():
        waiter.cancel()
        task.result()
        raise ConfigError("the gateway stopped while starting (see the log above)")
    port = sock.getsockname()[1]
    base = client_base(config.host, port)
    _banner(console, config, base, pool, time.perf_counter() - started)
    settle_heap()
    try:
        if args.smoke:
            from sollol.gateway.smoke import run_smoke

            ok = await asyncio.to_thread(
                run_smoke, base, config.api_keys[0] if config.api_keys else None, console, pool
            )
            stop.set()
            await task
            return 0 if ok else 1
        await task
        return 0
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(signum)


async def _serve(config: GatewayConfig, args: argparse.Namespace, console: Console) -> int:
    from sollol.gateway import Gateway
    from sollol.pool import AsyncPool

    with contextlib.ExitStack() as stack:
        extra = stack.enter_context(emulated_nodes(args.emulate))
        extra += stack.enter_context(local_llamacpp(args.local_llamacpp, args.llamacpp_model, console))
        nodes = [*config.nodes, *extra]
        if not nodes:
            raise ConfigError(
                "no nodes to serve from: list node URLs, set SOLLOL_NODES, add `nodes` to a config file, "
                "or start local ones with --local-llamacpp 2 (or --emulate ollama to try it out)"
            )
        sock = bind(config.host, config.port)
        started = time.perf_counter()
        use_lean_http_client()
        pool = AsyncPool(nodes, policy=config.policy)
        app = Gateway(pool, api_keys=config.api_keys, max_body=config.max_body)
        if getattr(args, "server", "fast") == "fast":
            return await _serve_fast(app, sock, config, args, console, pool, started)
        import uvicorn

        from sollol.gateway.server import http_protocol

        server = uvicorn.Server(
            uvicorn.Config(
                app,
                http=http_protocol(),
                lifespan="on",
                log_level="warning",
                access_log=config.access_log,
                server_header=False,
                date_header=False,
                timeout_graceful_shutdown=3,
                timeout_keep_alive=max(1, round(config.keep_alive)),  # uvicorn has no request timeout
                backlog=2048,
            )
        )
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            if task.done():
                task.result()
                raise ConfigError("the gateway stopped while starting (see the log above)")
            await asyncio.sleep(0.005)
        port = sock.getsockname()[1]
        base = client_base(config.host, port)
        _banner(console, config, base, pool, time.perf_counter() - started)
        settle_heap()
        if args.smoke:
            from sollol.gateway.smoke import run_smoke

            ok = await asyncio.to_thread(
                run_smoke, base, config.api_keys[0] if config.api_keys else None, console, pool
            )
            server.should_exit = True
            await task
            return 0 if ok else 1
        await task
        return 0


def settle_heap() -> None:
    """Keep what start-up built (modules, plugins, the pool, the app) out of the garbage
    collector's full passes (`gc.freeze`). A serving gateway's heap is mostly that: under load a
    full pass stalled every request in flight for up to 17 ms before, 1.6 ms after."""
    gc.collect()
    gc.freeze()


def _banner(console: Console, config: GatewayConfig, base: str, pool: Any, took: float) -> None:
    nodes = pool.nodes()
    up = sum(1 for n in nodes if n.get("state") == "up")
    console.print(
        f"[bold green]SOLLOL gateway[/bold green] listening on [bold]{base}[/bold] (ready in {took * 1000:.0f} ms)"
    )
    for node in nodes:
        models = ", ".join(node.get("models") or []) or "-"
        console.print(f"  node {node['id']}: {node.get('backend') or '?'}, {node.get('state')}, models: {models}")
    console.print(f"  {up} of {len(nodes)} nodes up; models: {', '.join(pool.models()) or 'none yet'}")
    key_hint = "<one of your API keys>" if config.api_keys else "anything"
    console.print("Point clients at it:")
    console.print(f"  ollama:  export OLLAMA_HOST={base}        (Python: ollama.Client(host='{base}'))")
    console.print(f"  openai:  export OPENAI_BASE_URL={base}/v1 OPENAI_API_KEY={key_hint}")
    console.print(f"           (Python: openai.OpenAI(base_url='{base}/v1', api_key=...))")
    if config.api_keys:
        console.print("  API keys are required (Authorization: Bearer KEY, or X-Api-Key: KEY); GET / stays open.")
        console.print(f"  ollama with a key: ollama.Client(host='{base}', headers={{'Authorization': 'Bearer KEY'}})")
    elif not is_loopback(config.host):
        console.print(
            f"[yellow]warning:[/yellow] listening on {config.host} without API keys: "
            "anyone who can reach it can use the cluster"
        )


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m sollol.cli_serve ...` (same as `sollol serve ...`)."""
    from sollol.cli import main as cli_main

    return cli_main(["serve", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
