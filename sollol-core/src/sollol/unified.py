"""Mixed pools built from discovery: `UnifiedPool.auto_discover()` and `discover_<kind>_nodes()`.

Every function here is one call of `discover_nodes_async` (the discovery sources, then
detection), filtered by backend kind: `discover_vllm_nodes()` is
`discover_nodes(backends=["vllm"])`. Only what the user asks for is scanned: the
environment, the config file, listed nodes and localhost's default ports by default, a
network only when `scan=` names one.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from sollol.detect import DetectedNode, run_sync
from sollol.detection import NodeState
from sollol.discovery import DiscoveryContext, discover_async
from sollol.errors import ConfigError
from sollol.node import Node, NodeSpec
from sollol.plugins import Plugins
from sollol.pool import AsyncPool
from sollol.scan import DEFAULT_CONNECT_TIMEOUT
from sollol.sync import Pool

log = logging.getLogger(__name__)

A = TypeVar("A", bound="AsyncUnifiedPool")
S = TypeVar("S", bound="UnifiedPool")

#: States in which a node joins a discovered pool (a loading node is about to serve).
USABLE = (NodeState.UP, NodeState.LOADING)


async def discover_nodes_async(
    nodes: Iterable[NodeSpec] = (),
    *,
    backends: Iterable[str] | None = None,
    scan: Iterable[str] | str = (),
    ports: Iterable[int] = (),
    localhost: bool = True,
    config_file: str | None = None,
    environ: Mapping[str, str] | None = None,
    force_scan: bool = False,
    plugins: Plugins | None = None,
    timeout: float | None = None,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    usable_only: bool = True,
) -> list[DetectedNode]:
    """Discover nodes of the given kinds (all kinds when `backends` is None).

    With `usable_only` (the default), only nodes that are up or loading are returned.
    """
    context = DiscoveryContext(
        nodes=tuple(nodes),
        environ=dict(os.environ if environ is None else environ),
        config_file=config_file,
        scan=(scan,) if isinstance(scan, str) else tuple(scan),
        ports=tuple(ports),
        include_localhost=localhost,
        force_scan=force_scan,
    )
    found = await discover_async(context, plugins=plugins, timeout=timeout, connect_timeout=connect_timeout)
    kinds = None if backends is None else {b.lower() for b in backends}
    chosen: list[DetectedNode] = []
    for node in found:
        if kinds is not None and node.backend not in kinds:
            continue
        if usable_only and (node.backend is None or node.state not in USABLE):
            log.info("discovery leaves out %s (%s, %s): %s", node.url, node.backend, node.state.value, node.reason)
            continue
        chosen.append(node)
    return chosen


def discover_nodes(nodes: Iterable[NodeSpec] = (), **kw: Any) -> list[DetectedNode]:
    """`discover_nodes_async`, synchronously."""
    found: list[DetectedNode] = run_sync(discover_nodes_async(nodes, **kw))
    return found


def _pool_nodes(found: Sequence[DetectedNode]) -> list[Node]:
    """The discovered nodes with their kinds filled in, so the pool need not detect them again."""
    return [d.node.with_backend(d.backend) for d in found if d.node is not None and d.backend is not None]


class AsyncUnifiedPool(AsyncPool):
    """An `AsyncPool` across every kind of node; `auto_discover` builds one from discovery."""

    #: What discovery found when the pool was built by `auto_discover`.
    discovered: tuple[DetectedNode, ...] = ()

    @classmethod
    async def auto_discover(
        cls: type[A],
        nodes: Iterable[NodeSpec] = (),
        *,
        backends: Iterable[str] | None = None,
        scan: Iterable[str] | str = (),
        ports: Iterable[int] = (),
        localhost: bool = True,
        config_file: str | None = None,
        environ: Mapping[str, str] | None = None,
        force_scan: bool = False,
        plugins: Plugins | None = None,
        timeout: float | None = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        **settings: Any,
    ) -> A:
        """Discover nodes (see `discover_nodes_async`) and build a pool of the usable ones."""
        found = await discover_nodes_async(
            nodes,
            backends=backends,
            scan=scan,
            ports=ports,
            localhost=localhost,
            config_file=config_file,
            environ=environ,
            force_scan=force_scan,
            plugins=plugins,
            timeout=timeout,
            connect_timeout=connect_timeout,
        )
        pool = cls(_pool_nodes(found) or _nothing_found(backends), plugins=plugins, **settings)
        pool.discovered = tuple(found)
        return pool


class UnifiedPool(Pool):
    """A `Pool` across every kind of node; `auto_discover` builds one from discovery."""

    async_pool_class = AsyncUnifiedPool

    @property
    def discovered(self) -> tuple[DetectedNode, ...]:
        """What discovery found when the pool was built by `auto_discover`."""
        pool = self.async_pool
        return pool.discovered if isinstance(pool, AsyncUnifiedPool) else ()

    @classmethod
    def auto_discover(cls: type[S], nodes: Iterable[NodeSpec] = (), *, plugins: Plugins | None = None, **kw: Any) -> S:
        """Discover nodes (see `discover_nodes_async` for the options) and build a pool of them.

        Options that are not discovery's go to the pool (`policy=`, `timeouts=`...).
        """
        wanted = set(_DISCOVERY_OPTIONS)
        options = {k: v for k, v in kw.items() if k in wanted}
        settings = {k: v for k, v in kw.items() if k not in wanted}
        found = discover_nodes(nodes, plugins=plugins, **options)
        pool = cls(_pool_nodes(found) or _nothing_found(options.get("backends")), plugins=plugins, **settings)
        assert isinstance(pool.async_pool, AsyncUnifiedPool)
        pool.async_pool.discovered = tuple(found)
        return pool


_DISCOVERY_OPTIONS = (
    "backends",
    "scan",
    "ports",
    "localhost",
    "config_file",
    "environ",
    "force_scan",
    "timeout",
    "connect_timeout",
)


async def auto_discover_async(nodes: Iterable[NodeSpec] = (), **kw: Any) -> AsyncUnifiedPool:
    """`AsyncUnifiedPool.auto_discover`."""
    return await AsyncUnifiedPool.auto_discover(nodes, **kw)


def _nothing_found(backends: Iterable[str] | None) -> list[Node]:
    kinds = "" if backends is None else " of kind " + "/".join(backends)
    raise ConfigError(
        f"discovery found no usable node{kinds}: list nodes, set SOLLOL_NODES or OLLAMA_HOST, "
        "or scan a network you name (scan='192.168.1.0/24'); `sollol discover` shows what was tried"
    )


def _kind_discovery(backend: str) -> Callable[..., list[Node]]:
    def discover_kind(nodes: Iterable[NodeSpec] = (), **kw: Any) -> list[Node]:
        return _pool_nodes(discover_nodes(nodes, backends=[backend], **kw))

    discover_kind.__name__ = discover_kind.__qualname__ = f"discover_{backend}_nodes"
    discover_kind.__doc__ = (
        f"The {backend} nodes discovery finds (usable ones, kind set): `discover_nodes(backends=['{backend}'])`."
    )
    return discover_kind


discover_ollama_nodes = _kind_discovery("ollama")
discover_vllm_nodes = _kind_discovery("vllm")
discover_tgi_nodes = _kind_discovery("tgi")
discover_llamacpp_nodes = _kind_discovery("llamacpp")
discover_localai_nodes = _kind_discovery("localai")

__all__ = [
    "AsyncUnifiedPool",
    "UnifiedPool",
    "auto_discover_async",
    "discover_llamacpp_nodes",
    "discover_localai_nodes",
    "discover_nodes",
    "discover_nodes_async",
    "discover_ollama_nodes",
    "discover_tgi_nodes",
    "discover_vllm_nodes",
]
