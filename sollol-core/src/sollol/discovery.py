"""Discovery: where nodes may be. Sources are plugins (`sollol_register_discovery_sources`).

A source returns candidate node specs and never touches the network; the core probes
what sources return. Nothing is ever scanned unless the user names a network.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import attrs

from sollol.node import NodeSpec


@attrs.frozen(kw_only=True)
class DiscoveryContext:
    """What the user asked for: explicit nodes, a config, networks to scan, ports."""

    nodes: tuple[NodeSpec, ...] = ()
    environ: Mapping[str, str] = attrs.field(factory=lambda: dict(os.environ))
    config: Mapping[str, Any] = attrs.field(factory=dict)
    scan: tuple[str, ...] = ()
    ports: tuple[int, ...] = ()
    include_localhost: bool = False


class DiscoverySource(Protocol):
    """A place candidate nodes come from."""

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
            host = ollama.split("://", 1)[-1]
            if host.startswith("0.0.0.0"):
                host = "127.0.0.1" + host[len("0.0.0.0"):]
            if ":" not in host.rsplit("]", 1)[-1]:
                host = f"{host}:11434"
            scheme = ollama.split("://", 1)[0] if "://" in ollama else "http"
            found.append({"url": f"{scheme}://{host}", "backend": "ollama"})
        return found
