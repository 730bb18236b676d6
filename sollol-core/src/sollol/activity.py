"""What a node has and is doing, in one shape for every backend, and what observers get.

Observers get `ActivityEvent`s (every kind), or, through the batch hook, the pool's own notes
of each request attempt (`RequestRecord`, a tuple that costs a fraction of an event to build)
with the other kinds of event between them, in order: see `sollol.hookspecs`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from contextvars import ContextVar
from operator import itemgetter
from typing import Any, NamedTuple

import attrs

from sollol.inference import Route, _mapping


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


#: The client protocol to assume for a request event that does not say its own (one built
#: outside a pool: `RequestRecord.from_event`, the event log). The pool's records take the
#: request's `protocol`, which the gateway sets.
PROTOCOL: ContextVar[str] = ContextVar("sollol_protocol", default="python")

_now = time.time


@attrs.frozen(kw_only=True, init=False)
class ActivityEvent:
    """Something happened in the pool. `kind` is one of the names in `EVENT_KINDS`.

    Its `__init__` is written out (attrs' generated one costs half as much again): a plain `dict`
    given as `data` is kept as it is (the event owns it from then on), any other mapping is
    copied; `at` defaults to now.
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


_NO_ROUTE = Route(node="")


class RequestRecord(NamedTuple):
    """One attempt of a request, as the pool notes it: routed, finished or failed.

    The pool notes one per event while observers listen, built as a plain tuple (about a fifth
    of what an `ActivityEvent` with its dict costs). Observers of the batch hook read its fields;
    `event()` is the `ActivityEvent` that observers of `sollol_activity_event` get.
    """

    kind: str  # "request.routed", "request.finished" or "request.failed"
    node: str
    model: str
    operation: str
    protocol: str  # the client's: "ollama", "openai", or "python" outside the gateway
    at: float
    route: Route  # the attempt's routing decision
    routed: bool  # the record carries that decision (a routed one, or an attempt not announced)
    attempt: int
    latency: float | None = None  # finished: seconds from dispatch to the last byte
    ttft: float | None = None  # finished: seconds to the first chunk (streams)
    chunks: int = 0  # finished: chunks streamed
    cold_load: float = 0.0  # finished: seconds the node spent loading the model
    error: str | None = None  # failed: the error's type name
    reason: str | None = None  # failed: its message
    retry: bool | None = None  # failed: whether another node may be tried

    def event(self) -> ActivityEvent:
        """The same attempt as an `ActivityEvent` (its fields in `data`, as docs/plugin-hooks.md lists)."""
        route = self.route
        kind = self.kind
        data: dict[str, Any] = {"operation": self.operation, "protocol": self.protocol}
        if kind == "request.finished":
            data.update(
                latency=self.latency,
                ttft=self.ttft,
                chunks=self.chunks,
                attempts=self.attempt,
                queued=route.queued,
                cold_load=self.cold_load,
            )
        elif kind == "request.failed":
            data.update(reason=self.reason, attempt=self.attempt, retry=self.retry, error=self.error)
        if self.routed:
            if kind != "request.routed":
                data["routed"] = True
            data.update(
                policy=route.policy,
                score=route.score,
                parts=route.parts,
                attempt=self.attempt,
                tried=route.tried,
                queued=route.queued,
            )
        return ActivityEvent(kind=kind, node=self.node, model=self.model, data=data, at=self.at)

    @classmethod
    def from_event(cls, event: ActivityEvent) -> RequestRecord:
        """A `request.*` event built elsewhere (a test, another pool), as a record.

        Its protocol is the event's `protocol`, else the current `PROTOCOL`."""
        data = event.data
        kind = event.kind
        routed = kind == "request.routed" or bool(data.get("routed"))
        route = _NO_ROUTE
        if routed:
            parts = data.get("parts") or ()
            route = Route(
                node=event.node or "",
                tried=tuple(data.get("tried") or ()),
                policy=str(data.get("policy") or ""),
                score=data.get("score"),
                parts=tuple(parts.items()) if isinstance(parts, Mapping) else tuple(parts),
                queued=float(data.get("queued") or 0.0),
            )
        return cls(
            kind=kind,
            node=event.node or "",
            model=event.model or "",
            operation=str(data.get("operation") or ""),
            protocol=str(data.get("protocol") or PROTOCOL.get()),
            at=event.at,
            route=route,
            routed=routed,
            attempt=int(data.get("attempt") or data.get("attempts") or 1),
            latency=data.get("latency"),
            ttft=data.get("ttft"),
            chunks=int(data.get("chunks") or 0),
            cold_load=float(data.get("cold_load") or 0.0),
            error=data.get("error"),
            reason=data.get("reason"),
            retry=data.get("retry"),
        )


def fields(*names: str) -> Any:
    """A C-level getter of these `RequestRecord` fields (records are tuples): one name gives the
    field, several a tuple of them. For observers that count a batch with `map`, not a loop."""
    return itemgetter(*(RequestRecord._fields.index(name) for name in names))


def present(values: list[Any]) -> list[Any]:
    """`values` without its Nones. For observers that count batches of records: when none or
    all are None (the usual cases) this costs an identity check per value, in C."""
    missing = values.count(None)
    if not missing:
        return values
    if missing == len(values):
        return []
    return [value for value in values if value is not None]
