"""SOLLOL's own plugin: the default policies and discovery sources.

Registered through the `sollol.plugins` entry point like any third-party plugin, so the
built-ins have no private path a plugin lacks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sollol.discovery import (
    ConfigFileNodes,
    DiscoverySource,
    EnvironmentNodes,
    ExplicitNodes,
    LocalhostNodes,
    SubnetScan,
)
from sollol.plugins import hookimpl
from sollol.policies import Affinity, Latency, LeastLoaded, Random, RoundRobin, Sollol


@hookimpl
def sollol_register_policies(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """The built-in routing policies."""
    register("sollol", Sollol)
    register("least_loaded", LeastLoaded)
    register("round_robin", RoundRobin)
    register("random", Random)
    register("latency", Latency)
    register("affinity", Affinity)


@hookimpl
def sollol_register_discovery_sources(register: Callable[[DiscoverySource], None]) -> None:
    """The built-in discovery sources."""
    register(ExplicitNodes())
    register(EnvironmentNodes())
    register(ConfigFileNodes())
    register(LocalhostNodes())
    register(SubnetScan())
