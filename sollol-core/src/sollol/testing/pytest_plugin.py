"""SOLLOL's pytest plugin: fixtures for loopback servers and canned probes, and the contract suite.

Loaded automatically when sollol-core is installed (entry point `pytest11`). It registers the
`contract_override` marker and lists every overridden contract test, with its reason, in the
terminal summary (and in each report's `user_properties`, so JUnit XML carries it too).
The suite itself is `sollol.testing.contract.BackendContract`.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator, Mapping
from typing import Any

import pytest

from sollol.detection import ProbeSet
from sollol.testing.servers import LoopbackServers

OVERRIDE_PROPERTY = "contract_override"


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker `@contract_override` puts on a replaced contract test."""
    config.addinivalue_line(
        "markers",
        "contract_override(reason): this test replaces a test of sollol's BackendContract, for the reason given",
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    """Attach the override reason of a replaced contract test to its report."""
    outcome = yield
    marker = item.get_closest_marker("contract_override")
    if marker is not None and call.when == "call":
        report = outcome.get_result()
        report.user_properties.append((OVERRIDE_PROPERTY, str(marker.kwargs.get("reason", ""))))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """List the overridden contract tests and why, so a reviewer sees every deviation."""
    lines = []
    for reports in terminalreporter.stats.values():
        for report in reports:
            for key, value in getattr(report, "user_properties", ()):
                if key == OVERRIDE_PROPERTY and getattr(report, "when", None) == "call":
                    lines.append(f"{report.nodeid}: {value}")
    if lines:
        terminalreporter.write_sep("-", "sollol contract overrides")
        for line in sorted(set(lines)):
            terminalreporter.write_line(line)


@pytest.fixture
def loopback_servers() -> Iterator[LoopbackServers]:
    """Serve ASGI apps on loopback ports for the length of a test."""
    servers = LoopbackServers()
    try:
        yield servers
    finally:
        servers.close()


@pytest.fixture
def canonical_probe_sets() -> Mapping[str, ProbeSet]:
    """Canned probe answers of Ollama, vLLM, TGI, llama.cpp and LocalAI, by kind."""
    from sollol.testing.canonical import CANONICAL_PROBE_SETS

    return CANONICAL_PROBE_SETS
