"""Detection: which kind of server answers at a URL.

Every plugin names the GET probes it needs (`sollol_detection_probes`); they are sent once
each, in parallel, with a short timeout, and every plugin's `sollol_detect` reads the
answers. The most confident claim wins. Nothing here ever raises for a bad node.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import attrs

from sollol.detection import Detection, NodeState, ProbeSet, probe_key
from sollol.node import Node, NodeSpec, parse_node
from sollol.plugins import Plugins, default_plugins
from sollol.transport import Timeouts, Transport


@attrs.frozen(kw_only=True)
class DetectedNode:
    """A URL and what was found there."""

    node: Node
    backend: str | None
    state: NodeState
    version: str | None = None
    models: tuple[str, ...] = ()
    latency: float | None = None  # seconds, fastest probe answer
    reason: str = ""

    @property
    def url(self) -> str:
        """The node's base URL."""
        return self.node.url

    def to_json(self) -> dict[str, Any]:
        """A JSON object (no credentials)."""
        return {
            "url": self.url,
            "backend": self.backend,
            "state": self.state.value,
            "version": self.version,
            "models": list(self.models),
            "latency_ms": None if self.latency is None else round(self.latency * 1000, 2),
            "reason": self.reason,
        }


async def probe_node(transport: Transport, plugins: Plugins, node: Node, timeout: float | None = None) -> ProbeSet:
    """Send every plugin's probes to `node` at once and collect the answers."""
    probes = plugins.detection_probes()
    answers = await asyncio.gather(*(transport.probe(node, p, timeout=timeout) for p in probes))
    return ProbeSet({probe_key(p): a for p, a in zip(probes, answers)})


def decide(node: Node, probes: ProbeSet, plugins: Plugins) -> DetectedNode:
    """Read the probe answers into a `DetectedNode`."""
    reached = [r for r in probes.responses.values() if r.reached]
    latency = min((r.elapsed for r in reached), default=None)
    claims: Sequence[Detection] = plugins.detect(probes)
    if node.backend:
        named = [c for c in claims if c.backend == node.backend]
        claim = named[0] if named else None
        if claim is None:
            state = NodeState.UP if reached else NodeState.DOWN
            return DetectedNode(
                node=node, backend=node.backend, state=state, latency=latency,
                reason="backend named by the user" + ("" if reached else "; no answer"),
            )
    else:
        claim = claims[0] if claims else None
    if claim is None:
        if not reached:
            errors = {r.error for r in probes.responses.values() if r.error}
            return DetectedNode(node=node, backend=None, state=NodeState.DOWN, reason="; ".join(sorted(errors))[:300])
        return DetectedNode(node=node, backend=None, state=NodeState.UNKNOWN, latency=latency,
                            reason="answered, but no installed plugin recognises it")
    return DetectedNode(
        node=node,
        backend=claim.backend,
        state=claim.state,
        version=claim.version,
        models=claim.models,
        latency=latency,
        reason=claim.reason,
    )


async def detect_async(
    specs: Sequence[NodeSpec],
    *,
    plugins: Plugins | None = None,
    transport: Transport | None = None,
    timeout: float | None = None,
) -> list[DetectedNode]:
    """Detect the servers at `specs` in parallel. Never raises for a bad node."""
    plugins = plugins or default_plugins()
    own = transport is None
    transport = transport or Transport(timeouts=Timeouts())
    try:
        nodes = [parse_node(spec) for spec in specs]
        probed = await asyncio.gather(*(probe_node(transport, plugins, n, timeout) for n in nodes))
        return [decide(n, p, plugins) for n, p in zip(nodes, probed)]
    finally:
        if own:
            await transport.aclose()


def detect(url: NodeSpec, **kw: Any) -> DetectedNode:
    """Detect the server at one URL (sync)."""
    return asyncio.run(detect_async([url], **kw))[0]
