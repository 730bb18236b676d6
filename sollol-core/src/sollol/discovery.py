"""Discovery: where nodes may be. Sources are plugins (`sollol_register_discovery_sources`).

A source returns candidate node specs and never touches the network; the core probes what
sources return (`discover_async`). A source whose `connect_first` is true names places that
may well be empty (localhost's default ports, every address of a scanned network): the core
first tries a TCP connection to each, concurrently and with a short timeout, and detects
only what accepted. Nothing is ever scanned unless the user names a network.

The built-in sources, registered by `sollol.builtins` like any plugin's:

- `explicit`: the nodes the caller listed;
- `environment`: `SOLLOL_NODES` (comma or space separated) and `OLLAMA_HOST`;
- `config`: the `nodes` of a TOML config file (`--config`, or `SOLLOL_CONFIG`);
- `localhost`: 127.0.0.1 on every installed backend's default ports, when asked;
- `scan`: every host of the networks the user names, on the given (or default) ports.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import attrs

from sollol.detect import DEFAULT_CONCURRENCY, DetectedNode, detect_one, detection_transport, read_node, run_sync
from sollol.errors import ConfigError, SollolError
from sollol.node import Node, NodeSpec
from sollol.plugins import Plugins, default_plugins
from sollol.scan import DEFAULT_CONNECT_TIMEOUT, connect_scan, parse_network, scan_targets
from sollol.transport import Transport

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 reads config files only with tomli installed
    try:
        import tomli as tomllib
    except ImportError:
        tomllib = None

log = logging.getLogger(__name__)

CONFIG_ENV = "SOLLOL_CONFIG"

#: Called as discovery goes: (phase, done, total); phase is "scan" or "detect".
Progress = Callable[[str, int, int], None]


@attrs.frozen(kw_only=True)
class DiscoveryContext:
    """What the user asked for: explicit nodes, a config, networks to scan, ports."""

    nodes: tuple[NodeSpec, ...] = ()
    environ: Mapping[str, str] = attrs.field(factory=lambda: dict(os.environ))
    config: Mapping[str, Any] = attrs.field(factory=dict)
    config_file: str | None = None
    scan: tuple[str, ...] = ()
    ports: tuple[int, ...] = ()
    include_localhost: bool = False
    force_scan: bool = False
    #: Each installed backend's default ports; the core fills this in from the plugins.
    default_ports: Mapping[str, tuple[int, ...]] = attrs.field(factory=dict)

    def all_default_ports(self) -> tuple[int, ...]:
        """Every installed backend's default ports, each once, in order."""
        return tuple(dict.fromkeys(p for ports in self.default_ports.values() for p in ports))

    def scan_ports(self) -> tuple[int, ...]:
        """The ports localhost and scans try: the ones named, else the config's, else every default port."""
        return self.ports or _config_ints(self.config, "ports") or self.all_default_ports()


class DiscoverySource(Protocol):
    """A place candidate nodes come from.

    `candidates` is pure: it may read files and the environment, never the network. A source
    may also set `connect_first = True` so that the core tries a TCP connection to each
    candidate and only detects those that accept one.
    """

    name: str

    def candidates(self, context: DiscoveryContext) -> Iterable[NodeSpec]:
        """Node specs to probe."""


class ExplicitNodes:
    """The nodes the user listed."""

    name = "explicit"

    def candidates(self, context: DiscoveryContext) -> Iterable[NodeSpec]:
        """The nodes given in the context."""
        return context.nodes


class EnvironmentNodes:
    """`SOLLOL_NODES` (comma or space separated) and `OLLAMA_HOST`."""

    name = "environment"

    def candidates(self, context: DiscoveryContext) -> Iterable[NodeSpec]:
        """Nodes named by the environment."""
        found: list[NodeSpec] = []
        listed = context.environ.get("SOLLOL_NODES", "")
        found.extend(s for s in listed.replace(",", " ").split() if s)
        ollama = context.environ.get("OLLAMA_HOST", "").strip()
        if ollama:
            host = ollama.split("://", 1)[-1].rstrip("/")
            if host.startswith("0.0.0.0"):
                host = "127.0.0.1" + host[len("0.0.0.0") :]
            if ":" not in host.rsplit("]", 1)[-1]:
                host = f"{host}:11434"
            scheme = ollama.split("://", 1)[0] if "://" in ollama else "http"
            found.append({"url": f"{scheme}://{host}", "backend": "ollama"})
        return found


class ConfigFileNodes:
    """The `nodes` of a TOML config file.

    ```toml
    nodes = ["http://10.0.0.5:11434", { url = "http://10.0.0.6:8000", backend = "vllm" }]

    [discovery]            # optional: what `sollol discover` does without flags
    localhost = true
    scan = ["10.0.0.0/24"]
    ports = [11434, 8000]
    ```
    """

    name = "config"

    def candidates(self, context: DiscoveryContext) -> Iterable[NodeSpec]:
        """The nodes listed in the config."""
        listed = context.config.get("nodes", ())
        if isinstance(listed, (str, Mapping)):
            listed = [listed]
        if not isinstance(listed, Sequence):
            raise ConfigError(f"config 'nodes' must be a list of URLs or tables, not {type(listed).__name__}")
        return list(listed)


class LocalhostNodes:
    """127.0.0.1 on every installed backend's default ports (only when asked)."""

    name = "localhost"
    connect_first = True

    def candidates(self, context: DiscoveryContext) -> Iterable[NodeSpec]:
        """One candidate per default port; detection says which kind answers."""
        wanted = context.include_localhost or bool(_discovery_table(context.config).get("localhost"))
        if not wanted:
            return []
        return [f"http://127.0.0.1:{port}" for port in context.scan_ports()]


class SubnetScan:
    """Every host of the networks the user named, on the named ports (default: all default ports).

    Refuses a network larger than a /16 unless `force_scan`.
    """

    name = "scan"
    connect_first = True

    def candidates(self, context: DiscoveryContext) -> Iterable[NodeSpec]:
        """Lazily, every (host, port) of the named networks."""
        cidrs = (*context.scan, *_config_strs(context.config, "scan"))
        if not cidrs:
            return []
        networks = [parse_network(cidr, force=context.force_scan) for cidr in dict.fromkeys(cidrs)]
        ports = context.scan_ports()
        if not ports:
            raise ConfigError("nothing to scan: no ports given and no installed backend has default ports")
        return (Node(host=host, port=port) for host, port in scan_targets(networks, ports))


def _discovery_table(config: Mapping[str, Any]) -> Mapping[str, Any]:
    table = config.get("discovery", {})
    return table if isinstance(table, Mapping) else {}


def _config_strs(config: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = _discovery_table(config).get(key, ())
    return (value,) if isinstance(value, str) else tuple(str(v) for v in value)


def _config_ints(config: Mapping[str, Any], key: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in _discovery_table(config).get(key, ()))
    except (TypeError, ValueError):
        raise ConfigError(f"config [discovery] {key} must be a list of port numbers") from None


def load_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a TOML config file."""
    if tomllib is None:  # pragma: no cover - Python 3.10 without tomli
        raise ConfigError(f"reading {path} needs Python 3.11, or `pip install tomli` on 3.10")
    file = Path(path)
    try:
        with file.open("rb") as handle:
            data: dict[str, Any] = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {file} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {file} is not valid TOML: {exc}") from None
    return data


def prepare_context(context: DiscoveryContext, plugins: Plugins) -> DiscoveryContext:
    """The context with the config file read and the installed backends' default ports filled in."""
    config = dict(context.config)
    path = context.config_file or context.environ.get(CONFIG_ENV)
    if path:
        config = {**load_config(path), **config}
    ports = {name: tuple(getattr(backend, "default_ports", ())) for name, backend in plugins.backends.items()}
    return attrs.evolve(context, config=config, default_ports={**ports, **context.default_ports})


@attrs.frozen(kw_only=True)
class Candidate:
    """A node a source named."""

    spec: NodeSpec
    source: str


def _candidates(
    context: DiscoveryContext, plugins: Plugins, only: Sequence[str] | None
) -> tuple[list[Candidate], list[Candidate]]:
    """(candidates to detect, candidates to try connecting to first), from every source."""
    direct: list[Candidate] = []
    connect: list[Candidate] = []
    for name, source in plugins.sources.items():
        if only is not None and name not in only:
            continue
        try:
            specs = source.candidates(context)
            into = connect if getattr(source, "connect_first", False) else direct
            into.extend(Candidate(spec=spec, source=name) for spec in specs)
        except SollolError:
            raise
        except Exception:  # a broken third-party source must not hide the others
            log.exception("discovery source %r failed", name)
    return direct, connect


def _address(spec: NodeSpec) -> tuple[str, int] | None:
    try:
        node = read_node(spec)
    except ConfigError:
        return None
    return node.host, node.port


async def discover_async(
    context: DiscoveryContext | None = None,
    *,
    plugins: Plugins | None = None,
    transport: Transport | None = None,
    sources: Sequence[str] | None = None,
    timeout: float | None = None,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    concurrency: int = 512,
    models: bool = True,
    progress: Progress | None = None,
) -> list[DetectedNode]:
    """Ask every discovery source (or only `sources`) for candidates, and detect them.

    Candidates named directly (explicit, environment, config) are all reported, down or not.
    Candidates of `connect_first` sources (localhost, scan) are reported only when they
    accept a TCP connection. Each URL is reported once, in source order.
    """
    plugins = plugins or default_plugins()
    context = prepare_context(context or DiscoveryContext(), plugins)
    direct, connect = _candidates(context, plugins, sources)
    # Building a client takes a while the first time (TLS context): do it while the scan runs.
    making = None if transport is not None else asyncio.ensure_future(asyncio.to_thread(detection_transport))
    try:
        if connect:
            by_address: dict[tuple[str, int], Candidate] = {}
            for candidate in connect:
                address = _address(candidate.spec)
                if address is not None:
                    by_address.setdefault(address, candidate)
            total = len(by_address)

            def scanned(done: int, _total: int) -> None:
                if progress is not None:
                    progress("scan", done, total)

            if progress is not None:
                progress("scan", 0, total)
            listening = await connect_scan(
                by_address, concurrency=concurrency, timeout=connect_timeout, total=total, progress=scanned
            )
            direct.extend(by_address[address] for address in listening)
        chosen = _dedupe(direct)
        if making is not None:
            transport = await making
        assert transport is not None
        probing = transport
        gate = asyncio.Semaphore(DEFAULT_CONCURRENCY)
        done = 0
        if progress is not None:
            progress("detect", 0, len(chosen))

        async def one(candidate: Candidate) -> DetectedNode:
            nonlocal done
            async with gate:
                found = await detect_one(
                    candidate.spec,
                    plugins=plugins,
                    transport=probing,
                    timeout=timeout,
                    models=models,
                    source=candidate.source,
                )
            done += 1
            if progress is not None:
                progress("detect", done, len(chosen))
            return found

        return list(await asyncio.gather(*(one(c) for c in chosen)))
    finally:
        if making is not None:
            await (await making).aclose()


def _dedupe(candidates: Iterable[Candidate]) -> list[Candidate]:
    """One candidate per URL, the first source's; a later one that names the backend adds it."""
    chosen: dict[str, Candidate] = {}
    for candidate in candidates:
        try:
            node = read_node(candidate.spec)
        except ConfigError:
            chosen.setdefault(f"invalid:{candidate.spec!r}", candidate)
            continue
        first = chosen.get(node.url)
        if first is None:
            chosen[node.url] = candidate
        elif node.backend and not read_node(first.spec).backend:
            chosen[node.url] = Candidate(spec=node, source=first.source)
    return list(chosen.values())


def discover(context: DiscoveryContext | None = None, **kw: Any) -> list[DetectedNode]:
    """`discover_async`, synchronously."""
    found: list[DetectedNode] = run_sync(discover_async(context, **kw))
    return found
