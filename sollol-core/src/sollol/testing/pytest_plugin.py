"""SOLLOL's pytest plugin: fixtures for loopback servers, and the backend contract suite.

Loaded automatically when sollol-core is installed (entry point `pytest11`).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sollol.testing.servers import LoopbackServers


@pytest.fixture
def loopback_servers() -> Iterator[LoopbackServers]:
    """Serve ASGI apps on loopback ports for the length of a test."""
    servers = LoopbackServers()
    try:
        yield servers
    finally:
        servers.close()
