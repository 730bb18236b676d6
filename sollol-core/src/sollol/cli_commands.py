"""Imports the modules that add subcommands to `sollol` (detect, discover, serve, nodes).

Each feature module registers its commands with `sollol.cli.command`; list them here.
"""

from __future__ import annotations

from sollol import (
    cli_discovery,  # noqa: F401  (sollol detect, sollol discover)
    cli_nodes,  # noqa: F401  (sollol nodes)
    cli_serve,  # noqa: F401  (sollol serve)
)
