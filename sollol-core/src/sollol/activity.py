"""What a node has and is doing, in one shape for every backend, and the events observers get."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import attrs

from sollol.inference import _mapping


@attrs.frozen(kw_only=True)
class ModelInfo:
    """A model a node can serve. Capabilities are None where the backend does not say."""

    name: str
    size: int | None = None
    context_length: int | None = None
    capabilities: frozenset[str] | None = None
    family: str | None = None
    details: Mapping[str, Any] = attrs.field(factory=dict, converter=_mapping)


@attrs.frozen(kw_only=True)
class LoadedModel:
    """A model resident in a node's memory."""

    name: str
    size: int | None = None
    size_vram: int | None = None
    expires_at: str | None = None
    context_length: int | None = None


@attrs.frozen(kw_only=True)
class Activity:
    """A node's activity. Every figure is None where the backend cannot tell: never invented."""

    loaded: tuple[LoadedModel, ...] | None = None
    vram_used: int | None = None
    vram_total: int | None = None
    running: int | None = None
    waiting: int | None = None
    capacity: int | None = None  # parallel slots, where the backend says
    kv_cache_usage: float | None = None  # 0..1
    context_length: int | None = None
    raw: Mapping[str, Any] = attrs.field(factory=dict, converter=_mapping)

    @property
    def loaded_names(self) -> frozenset[str] | None:
        """Names of the loaded models, or None when unknown."""
        return None if self.loaded is None else frozenset(m.name for m in self.loaded)


_now = time.time


@attrs.frozen(kw_only=True, init=False)
class ActivityEvent:
    """Something happened in the pool. `kind` is one of the names in `EVENT_KINDS`.

    Built for every request while observers exist, so its `__init__` is written out (attrs'
    generated one costs half as much again): a plain `dict` given as `data` is kept as it is (the
    event owns it from then on), any other mapping is copied; `at` defaults to now.
    """

    kind: str
    node: str | None = None
    model: str | None = None
    data: Mapping[str, Any] = attrs.field(factory=dict)
    at: float = attrs.field(factory=time.time)

    def __init__(
        self,
        *,
        kind: str,
        node: str | None = None,
        model: str | None = None,
        data: Mapping[str, Any] | None = None,
        at: float | None = None,
    ) -> None:
        _set_kind(self, kind)
        _set_node(self, node)
        _set_model(self, model)
        _set_data(self, data if type(data) is dict else _mapping(data))
        _set_at(self, _now() if at is None else at)

    def to_json(self) -> dict[str, Any]:
        """A backend-agnostic JSON object."""
        return {"kind": self.kind, "node": self.node, "model": self.model, "at": self.at, **self.data}


# The slots' own setters: cheaper than `object.__setattr__` by name, and past the frozen guard.
_set_kind, _set_node, _set_model, _set_data, _set_at = (
    ActivityEvent.__dict__[name].__set__ for name in ("kind", "node", "model", "data", "at")
)

#: `request.routed` is emitted when a request is sent only for retries, queued requests and
#: streams; a plain first attempt's decision rides on its `request.finished`/`request.failed`
#: (`data["routed"] is True`, with policy, score, parts, attempt, tried, queued): see
#: docs/plugin-hooks.md.
EVENT_KINDS = frozenset(
    {
        "node.up",
        "node.down",
        "node.loading",
        "node.auth_required",
        "circuit.opened",
        "circuit.half_open",
        "circuit.closed",
        "model.loaded",
        "model.unloaded",
        "request.routed",
        "request.finished",
        "request.failed",
        "request.queued",
    }
)
