"""Routing: filter the nodes that can serve a request, score them, pick one.

`PoolNode` is the pool's live record of a node (what it is, what it has, how busy it is).
A policy only scores and picks among candidates the filter let through; policies are
plugins registered by name (`sollol_register_policies`).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

import attrs

from sollol.activity import Activity, ModelInfo
from sollol.codec import Backend, model_key
from sollol.detection import Detection, NodeState
from sollol.inference import Request
from sollol.node import Node


class PoolNode:
    """The pool's live record of one node. Mutated only on the pool's event loop."""

    def __init__(self, node: Node, backend: Backend | None = None) -> None:
        self.node = node
        self.backend = backend
        self.detection: Detection | None = None
        self.state = NodeState.UNKNOWN
        self.models: dict[str, ModelInfo] | None = None  # by model_key; None = not known yet
        self.activity: Activity | None = None
        self.in_flight = 0
        self.served = 0
        self.failed = 0
        self.last_error: str | None = None

    def __repr__(self) -> str:
        kind = self.backend.name if self.backend else "?"
        return f"<PoolNode {self.node.id} {kind} {self.state.value} in_flight={self.in_flight}>"

    @property
    def id(self) -> str:
        """The node's id."""
        return self.node.id

    @contextmanager
    def lease(self) -> Iterator[None]:
        """Count one request in flight for exactly as long as the block runs.

        Incremented before dispatch and decremented in `finally`, so errors,
        cancellations and abandoned streams all give the slot back.
        """
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    def has_model(self, model: str) -> bool | None:
        """True/False when the inventory is known, None when it is not."""
        if self.models is None:
            return None
        return model_key(model) in self.models

    def model_names(self) -> list[str]:
        """Names of the models this node serves (empty when unknown)."""
        return [info.name for info in (self.models or {}).values()]

    def is_loaded(self, model: str) -> bool | None:
        """Whether the model is resident, when the backend says."""
        if self.activity is None or self.activity.loaded is None:
            return None
        key = model_key(model)
        return any(model_key(m.name) == key for m in self.activity.loaded)

    @property
    def at_capacity(self) -> bool:
        """True when the node's configured concurrency limit is reached."""
        limit = self.node.max_concurrency
        return limit is not None and self.in_flight >= limit

    def snapshot(self) -> dict[str, Any]:
        """A JSON object describing the node now."""
        return {
            "id": self.id,
            "url": self.node.url,
            "backend": self.backend.name if self.backend else None,
            "state": self.state.value,
            "version": self.detection.version if self.detection else None,
            "models": sorted(self.model_names()),
            "in_flight": self.in_flight,
            "served": self.served,
            "failed": self.failed,
            "last_error": self.last_error,
        }


@attrs.frozen(kw_only=True)
class Choice:
    """A policy's pick, with its score and the parts the score is made of."""

    node: PoolNode
    score: float = 0.0
    parts: tuple[tuple[str, float], ...] = ()


class Policy(Protocol):
    """Scores and picks one of the candidates."""

    name: str

    def choose(self, candidates: Sequence[PoolNode], request: Request, rng: random.Random) -> Choice:
        """Pick one of `candidates` (never empty)."""


def pick_lowest(
    candidates: Sequence[PoolNode],
    rng: random.Random,
    cost: Mapping[str, float],
) -> PoolNode:
    """The candidate with the lowest cost, ties broken at random (never by list order)."""
    best = min(cost[c.id] for c in candidates)
    tied = [c for c in candidates if cost[c.id] <= best + 1e-12]
    return tied[0] if len(tied) == 1 else rng.choice(tied)


class LeastLoaded:
    """Fewest requests in flight (as counted by this pool), ties at random."""

    name = "least_loaded"

    def choose(self, candidates: Sequence[PoolNode], request: Request, rng: random.Random) -> Choice:
        """Pick the least-loaded candidate."""
        cost = {c.id: float(c.in_flight) for c in candidates}
        node = pick_lowest(candidates, rng, cost)
        return Choice(node=node, score=-cost[node.id], parts=(("in_flight", cost[node.id]),))


class RoundRobin:
    """Each candidate in turn."""

    name = "round_robin"

    def __init__(self) -> None:
        self._next = 0

    def choose(self, candidates: Sequence[PoolNode], request: Request, rng: random.Random) -> Choice:
        """Pick the next candidate in order of node id."""
        ordered = sorted(candidates, key=lambda c: c.id)
        node = ordered[self._next % len(ordered)]
        self._next += 1
        return Choice(node=node)


class Random:
    """A uniformly random candidate."""

    name = "random"

    def choose(self, candidates: Sequence[PoolNode], request: Request, rng: random.Random) -> Choice:
        """Pick any candidate."""
        return Choice(node=rng.choice(list(candidates)))


def usable(pnode: PoolNode) -> bool:
    """True when a node may be sent requests now (down and auth-failed nodes may not)."""
    return pnode.state in (NodeState.UP, NodeState.UNKNOWN)


def candidates_for(
    nodes: Sequence[PoolNode],
    request: Request,
    *,
    exclude: set[str],
) -> list[PoolNode]:
    """The nodes that can serve `request`: usable, with the model and the operation."""
    known: list[PoolNode] = []
    unknown: list[PoolNode] = []
    for pnode in nodes:
        if pnode.id in exclude or not usable(pnode) or pnode.backend is None:
            continue
        if request.operation not in pnode.backend.operations:
            continue
        has = pnode.has_model(request.model)
        if has:
            known.append(pnode)
        elif has is None:
            unknown.append(pnode)
    # Nodes whose inventory could not be read are a last resort, never preferred.
    return known or unknown
