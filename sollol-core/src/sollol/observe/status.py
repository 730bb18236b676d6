"""The generic status document (`GET /api/sollol/nodes`) and the observer that feeds it.

One JSON shape for every backend: each node with its backend, state, circuit, models (loaded
ones marked), VRAM, in-flight and queued requests, latency; the last routing decisions with
their reasons; and per-second request-rate and latency series. Figures a backend does not
report are null, never invented. No credential ever appears in it.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import deque
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from typing import Any

from sollol.activity import ActivityEvent
from sollol.codec import model_key
from sollol.observe.context import PROTOCOL, Backlog
from sollol.plugins import hookimpl

#: Version of the document's shape; bumped only for incompatible changes.
SCHEMA = 1

_DECISION: ContextVar[list[Any] | None] = ContextVar("sollol_decision", default=None)
_SECRET = re.compile(
    r"(?i)(bearer\s+|basic\s+|api[_-]?key[=:]\s*|token[=:]\s*|password[=:]\s*)\S+|(//[^/@\s:]*:)[^/@\s]*@"
)
_NODE_EVENTS = ("node.", "circuit.", "model.")


def redact(text: str | None) -> str | None:
    """`text` with anything shaped like a credential replaced by `***`."""
    if not text:
        return text
    return _SECRET.sub(lambda m: (m.group(1) or m.group(2)) + ("***@" if m.group(2) else "***"), text)


class StatusFeed:
    """Observer: remembers the last routing decisions and per-second request series.

    Per request it only appends: a `request.routed` decision to a bounded deque (with the event
    that ended it attached when that comes), a finished or failed request to its `backlog`. The
    per-second series, and the decisions that ending events carry (`routed: True`), are counted
    from the backlog when read (`series()`, `decisions()`, a dashboard push) or every
    `PENDING_LIMIT` requests. Also wakes whoever waits in `changed()` when a node, circuit or model
    changes, so the dashboard's event stream can push the change at once.
    """

    def __init__(self, *, decisions: int = 40, window: int = 120, clock: Callable[[], float] = time.time) -> None:
        self.window = window
        self._clock = clock
        # [routed event, protocol, finished or failed event (None while running)]; JSON only when read
        self._decisions: deque[list[Any]] = deque(maxlen=decisions)
        # [second, requests, errors, latency sum, latency max, ttft sum, ttft count, {node: requests}]
        self._buckets: deque[list[Any]] = deque(maxlen=window)
        #: finished or failed requests not yet in `_buckets` or `_decisions`
        self.backlog = Backlog(self.tally)
        self._waiter: asyncio.Future[None] | None = None
        self.closed = False

    @hookimpl
    def sollol_activity_event(self, event: ActivityEvent) -> None:
        """Take in one event (cheap: an append or two)."""
        kind = event.kind
        if kind == "request.routed":
            decide(self._decisions, event, PROTOCOL.get())
        elif kind == "request.finished" or kind == "request.failed":
            if not event.data.get("routed"):
                conclude(event)
            self.backlog.add((event, PROTOCOL.get()))
        elif kind.startswith(_NODE_EVENTS):
            self.notify()

    def fold(self) -> None:
        """Count every request in the backlog now (what a read does anyway)."""
        self.backlog.fold()

    def tally(self, records: list[tuple[ActivityEvent, str]]) -> None:
        """Count finished and failed requests into the per-second series; keep the decisions they carry."""
        buckets = self._buckets
        decisions = self._decisions
        bucket: list[Any] = buckets[-1] if buckets else [None]
        for event, protocol in records:
            data = event.data
            if data.get("routed"):
                decisions.append([event, protocol, event])
            second = int(event.at)
            if bucket[0] != second:
                bucket = [second, 0, 0, 0.0, 0.0, 0.0, 0, {}]
                buckets.append(bucket)
            bucket[1] += 1
            if event.kind == "request.failed":
                bucket[2] += 1
            else:
                latency = data.get("latency")
                if latency is not None:
                    bucket[3] += latency
                    if latency > bucket[4]:
                        bucket[4] = latency
                ttft = data.get("ttft")
                if ttft is not None:
                    bucket[5] += ttft
                    bucket[6] += 1
            by_node = bucket[7]
            node = event.node or "?"
            by_node[node] = by_node.get(node, 0) + 1

    # -- waking the event streams ----------------------------------------------------------------

    def notify(self) -> None:
        """Wake every waiter of `changed()`."""
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def changed(self) -> asyncio.Future[None]:
        """A future done at the next node, circuit or model change (shared by all waiters)."""
        if self._waiter is None or self._waiter.done():
            self._waiter = asyncio.get_running_loop().create_future()
        return self._waiter

    def close(self) -> None:
        """Stop the event streams."""
        self.closed = True
        self.notify()

    # -- reading -------------------------------------------------------------------------------------

    def decisions(self) -> list[dict[str, Any]]:
        """The last routing decisions, newest first, each with a readable `reason`."""
        self.fold()
        out = []
        # Decisions that ride on their ending event join when counted, so order them by time.
        for event, protocol, ended in sorted(self._decisions, key=_decided_at, reverse=True):
            data = event.data
            outcome, latency, error = "running", None, None
            if ended is not None:
                if ended.kind == "request.failed":
                    outcome = "error"
                    error = str(ended.data.get("reason") or ended.data.get("error") or "failed")
                else:
                    outcome, latency = "ok", ended.data.get("latency")
            item = {
                "at": event.at,
                "node": event.node,
                "model": event.model,
                "operation": data.get("operation"),
                "protocol": protocol,
                "policy": data.get("policy"),
                "score": data.get("score"),
                "parts": dict(data.get("parts") or {}),
                "attempt": data.get("attempt", 1),
                "tried": list(data.get("tried") or []),
                "queued": data.get("queued") or 0.0,
                "outcome": outcome,
                "latency": latency,
                "error": redact(error),
            }
            item["reason"] = _reason(item)
            out.append(item)
        return out

    def series(self, now: float | None = None) -> dict[str, Any]:
        """Per-second series over the last `window` seconds (oldest first; the current second last)."""
        self.fold()
        end = int(self._clock() if now is None else now)
        start = end - self.window + 1
        by_second = {b[0]: b for b in self._buckets if b[0] >= start}
        requests: list[int] = []
        errors: list[int] = []
        latency: list[float | None] = []
        latency_max: list[float | None] = []
        ttft: list[float | None] = []
        nodes: dict[str, list[int]] = {}
        for index, second in enumerate(range(start, end + 1)):
            bucket = by_second.get(second)
            if bucket is None:
                requests.append(0)
                errors.append(0)
                latency.append(None)
                latency_max.append(None)
                ttft.append(None)
                continue
            served = bucket[1] - bucket[2]
            requests.append(bucket[1])
            errors.append(bucket[2])
            latency.append(bucket[3] / served if served else None)
            latency_max.append(bucket[4] if served else None)
            ttft.append(bucket[5] / bucket[6] if bucket[6] else None)
            for node, count in bucket[7].items():
                nodes.setdefault(node, [0] * self.window)[index] = count
        return {
            "interval": 1,
            "start": start,
            "requests": requests,
            "errors": errors,
            "latency_avg": latency,
            "latency_max": latency_max,
            "ttft_avg": ttft,
            "requests_by_node": nodes,
        }


def decide(decisions: deque[list[Any]], event: ActivityEvent, protocol: str) -> None:
    """Remember a routing decision, and that it is the current request's (for `conclude`)."""
    decision = [event, protocol, None]
    decisions.append(decision)
    _DECISION.set(decision)


def _decided_at(decision: list[Any]) -> float:
    return float(decision[0].at)


def conclude(event: ActivityEvent) -> None:
    """Attach a finished or failed event to the current request's decision on that node."""
    current = _DECISION.get()
    if current is not None and current[0].node == event.node:
        current[2] = event


def _reason(decision: Mapping[str, Any]) -> str:
    parts = decision.get("parts") or {}
    shown = ", ".join(f"{k} {_number(v)}" for k, v in parts.items())
    text = f"{decision.get('policy') or 'policy'} picked it"
    if decision.get("score") is not None:
        text += f" (score {_number(decision['score'])}{': ' + shown if shown else ''})"
    elif shown:
        text += f" ({shown})"
    tried = list(decision.get("tried") or [])[:-1]
    if tried:
        text += f"; attempt {decision.get('attempt')} after {', '.join(map(str, tried))} failed"
    if decision.get("queued"):
        text += f"; waited {decision['queued']:.3f}s for a free node"
    return text


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value + 0.0:.4g}" if value else "0"  # never "-0"
    return str(value)


def node_status(snapshot: Mapping[str, Any], series: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One node of the document, from `PoolNode.snapshot()` (tolerates missing fields)."""
    state = str(snapshot.get("state") or "unknown").replace("-", "_")
    loaded_keys = snapshot.get("loaded")
    loaded_set = set(loaded_keys) if loaded_keys is not None else None
    activity: Mapping[str, Any] = snapshot.get("activity") or {}
    models = []
    for name in snapshot.get("models") or ():
        models.append({"name": name, "loaded": None if loaded_set is None else model_key(name) in loaded_set})
    known = {model_key(m["name"]) for m in models}
    for entry in activity.get("loaded") or ():
        name = entry.get("name") if isinstance(entry, Mapping) else None
        if name and model_key(name) not in known:  # resident but not listed (some backends)
            models.append({"name": name, "loaded": True})
    latency = snapshot.get("latency") or {}
    ttfts = [s["ttft"] for s in latency.values() if isinstance(s, Mapping) and s.get("samples") and s.get("ttft")]
    per_token = [
        s["per_token"] for s in latency.values() if isinstance(s, Mapping) and s.get("samples") and s.get("per_token")
    ]
    ident = str(snapshot.get("id"))
    recent = None
    if series is not None:
        counts = series.get("requests_by_node", {}).get(ident)
        recent = sum(counts[-10:]) / 10 if counts else 0.0
    return {
        "id": ident,
        "url": snapshot.get("url"),
        "backend": snapshot.get("backend"),
        "version": snapshot.get("version"),
        "state": state,
        "healthy": state in ("up", "unknown"),
        "circuit": str(snapshot.get("circuit") or "closed").replace("-", "_"),
        "models": models,
        "vram": {"used": activity.get("vram_used"), "total": activity.get("vram_total")},
        "in_flight": snapshot.get("in_flight", 0),
        "queued": snapshot.get("queued_for", 0),
        "max_concurrency": snapshot.get("max_concurrency"),
        "backend_queue": {"running": activity.get("running"), "waiting": activity.get("waiting")},
        "backend_slots": activity.get("capacity"),
        "kv_cache_usage": activity.get("kv_cache_usage"),
        "latency": {
            "ttft": sum(ttfts) / len(ttfts) if ttfts else None,
            "per_token": sum(per_token) / len(per_token) if per_token else None,
            "by_model": latency,
        },
        "requests_per_second": recent,
        "served": snapshot.get("served", 0),
        "failed": snapshot.get("failed", 0),
        "last_error": redact(snapshot.get("last_error")),
    }


def status_document(pool: Any, feed: StatusFeed | None = None, *, now: float | None = None) -> dict[str, Any]:
    """The whole document: cluster summary, nodes, decisions, series."""
    now = time.time() if now is None else now
    series = feed.series(now) if feed is not None else None
    nodes = [node_status(s, series) for s in pool.nodes()]
    policy = getattr(pool, "policy", None)
    queued = getattr(pool, "queued", None)
    models = getattr(pool, "models", None)
    return {
        "schema": SCHEMA,
        "generated_at": now,
        "policy": getattr(policy, "name", None),
        "summary": {
            "nodes": len(nodes),
            "healthy": sum(1 for n in nodes if n["healthy"]),
            "down": sum(1 for n in nodes if n["state"] == "down"),
            "in_flight": sum(int(n["in_flight"] or 0) for n in nodes),
            "queued": queued() if callable(queued) else 0,
            "models": models() if callable(models) else [],
        },
        "nodes": nodes,
        "decisions": feed.decisions() if feed is not None else [],
        "series": series,
    }
