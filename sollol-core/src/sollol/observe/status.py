"""The generic status document (`GET /api/sollol/nodes`) and the observer that feeds it.

One JSON shape for every backend: each node with its backend, state, circuit, models (loaded
ones marked), VRAM, in-flight and queued requests, latency; the last routing decisions with
their reasons; and per-second request-rate and latency series. Figures a backend does not
report are null, never invented. No credential ever appears in it.
"""

from __future__ import annotations

import asyncio
import operator
import re
import time
from collections import _count_elements, deque  # type: ignore[attr-defined]
from collections.abc import Callable, Mapping, Sequence
from itertools import compress
from typing import Any, cast

from sollol.activity import _NO_ROUTE, ActivityEvent, RequestRecord, fields, present
from sollol.codec import model_key
from sollol.plugins import hookimpl

#: Version of the document's shape; bumped only for incompatible changes.
SCHEMA = 1

#: Running decisions the feed remembers for their outcome (more are attempts that never ended).
_RUNNING_LIMIT = 1024
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

    It takes the pool's activity in batches (`sollol_activity_batch`, every 10 ms while
    there is news): routing decisions go to a bounded deque (with the record that ended each attached
    when that comes), finished and failed requests are counted into per-second buckets. Also
    wakes whoever waits in `changed()` when a node, circuit or model changes, so the
    dashboard's event stream can push the change at once.
    """

    def __init__(self, *, decisions: int = 40, window: int = 120, clock: Callable[[], float] = time.time) -> None:
        self.window = window
        self._clock = clock
        # a record that carries its decision and outcome, or [a routed record, the record that
        # ended it (None while running)]
        self._decisions: deque[Any] = deque(maxlen=decisions)
        # decisions of attempts still running, by the identity of their route: an attempt's
        # routed and ending records share the pool's `Route` object, and a running decision
        # holds its record (so its route: the id stays unique while it is pending)
        self._running: dict[Any, list[Any]] = {}
        # [second, requests, errors, latency sum, latency max, ttft sum, ttft count, {node: requests}]
        self._buckets: deque[list[Any]] = deque(maxlen=window)
        self._waiter: asyncio.Future[None] | None = None
        self.closed = False

    @hookimpl
    def sollol_activity_batch(self, batch: Sequence[RequestRecord | ActivityEvent]) -> None:
        """Take in what happened since the last batch."""
        if len(set(map(type, batch))) == 1 and type(batch[0]) is RequestRecord:
            self._take_records(cast(Sequence[RequestRecord], batch))
            return
        # Events too (from outside a pool, or a node change): request events become records,
        # a node, circuit or model change wakes the event streams.
        records: list[RequestRecord] = []
        for entry in batch:
            if type(entry) is RequestRecord:
                records.append(entry)
                continue
            kind = entry.kind
            if not kind.startswith("request."):
                if kind.startswith(_NODE_EVENTS):
                    self.notify()
            elif kind != "request.queued":
                records.append(RequestRecord.from_event(entry))  # type: ignore[arg-type]
        if records:
            self._take_records(records)

    def _take_records(self, records: Sequence[RequestRecord]) -> None:
        decisions, running = self._decisions, self._running
        kinds = list(map(_KIND, records))
        if ROUTED not in kinds and all(map(_ROUTED_FLAG, records)):
            # the usual batch: requests that ended on their first attempt, each record its
            # own decision and outcome
            decisions.extend(records)
            self.tally(records, kinds)
            return
        # Streams and retries. Records that carry their own decision go in at once (C-level
        # passes); only a routed record (it opens a decision) and an ending without its
        # decision (it closes one) take a step of the loop. `decisions()` puts them in order.
        flags = list(map(_ROUTED_FLAG, records))
        own = list(map(_AND, flags, map(_NOT_ROUTED, kinds)))
        decisions.extend(compress(records, own))
        for record in compress(records, map(_NOT, own)):
            if record.kind == ROUTED:
                opened = [record, None]
                decisions.append(opened)
                running[id(record.route)] = opened
            else:
                pending = running.pop(id(record.route), None)
                if pending is None and record.route is _NO_ROUTE:  # a record made from an event
                    pending = _newest_on(running, record.node)
                if pending is not None:
                    pending[1] = record
        while len(running) > _RUNNING_LIMIT:  # attempts that never ended (cancelled streams)
            del running[next(iter(running))]
        done = list(compress(records, map(_NOT_ROUTED, kinds)))
        if done:
            self.tally(done)

    def take(self, event: ActivityEvent | RequestRecord) -> None:
        """One event or record, as a batch of one."""
        self.sollol_activity_batch((event,))

    def tally(self, records: Sequence[RequestRecord], kinds: list[str] | None = None) -> None:
        """Count finished and failed requests into the per-second series (records in time order;
        `kinds`: their kinds, when the caller has them)."""
        first = int(records[0].at)
        if int(records[-1].at) == first:
            self._count_second(first, records, kinds)
            return
        start = 0
        for index, second in enumerate(map(int, map(_AT, records))):
            if second != first:
                self._count_second(first, records[start:index])
                first, start = second, index
        self._count_second(first, records[start:])

    def _count_second(self, second: int, records: Sequence[RequestRecord], kinds: list[str] | None = None) -> None:
        """Count records of one second with C-level getters, counts and sums (no Python loop
        per record)."""
        buckets = self._buckets
        bucket: list[Any] = buckets[-1] if buckets else [None]
        if bucket[0] != second:
            bucket = [second, 0, 0, 0.0, 0.0, 0.0, 0, {}]
            buckets.append(bucket)
        failed = (kinds if kinds is not None else list(map(_KIND, records))).count(FAILED)
        bucket[1] += len(records)
        served = records
        if failed:
            bucket[2] += failed
            served = [r for r in records if r.kind != FAILED]
        latencies = present(list(map(_LATENCY, served)))
        if latencies:
            bucket[3] += sum(latencies)
            top = max(latencies)
            if top > bucket[4]:
                bucket[4] = top
        ttfts = present(list(map(_TTFT, served)))
        if ttfts:
            bucket[5] += sum(ttfts)
            bucket[6] += len(ttfts)
        by_node = bucket[7]
        nodes = list(map(_NODE, records))
        node = nodes[0]
        if nodes.count(node) == len(nodes):  # one node: identity checks
            by_node[node] = by_node.get(node, 0) + len(nodes)
        else:
            _count_elements(by_node, nodes)

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
        out = []
        for entry in sorted(self._decisions, key=_decided_at, reverse=True):
            record, ended = entry if type(entry) is list else (entry, entry)
            route = record.route
            outcome, latency, error = "running", None, None
            if ended is not None:
                if ended.kind == "request.failed":
                    outcome = "error"
                    error = str(ended.reason or ended.error or "failed")
                else:
                    outcome, latency = "ok", ended.latency
            item = {
                "at": record.at,
                "node": record.node,
                "model": record.model,
                "operation": record.operation or None,
                "protocol": record.protocol,
                "policy": route.policy or None,
                "score": route.score,
                "parts": dict(route.parts),
                "attempt": record.attempt,
                "tried": list(route.tried),
                "queued": route.queued,
                "outcome": outcome,
                "latency": latency,
                "error": redact(error),
            }
            item["reason"] = _reason(item)
            out.append(item)
        return out

    def series(self, now: float | None = None) -> dict[str, Any]:
        """Per-second series over the last `window` seconds (oldest first; the current second last)."""
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


ROUTED = "request.routed"
FAILED = "request.failed"
_KIND, _NODE, _AT, _LATENCY, _TTFT, _ROUTED_FLAG = map(fields, ("kind", "node", "at", "latency", "ttft", "routed"))


_NOT_ROUTED = ROUTED.__ne__
_AND, _NOT = operator.and_, operator.not_


def _decided_at(entry: Any) -> float:
    """When a decision was made: its record's `at` (the routed record's, for a pair)."""
    return float((entry[0] if type(entry) is list else entry).at)


def _newest_on(running: dict[Any, list[Any]], node: str) -> list[Any] | None:
    """The newest running decision on `node`, taken out of `running`."""
    for key in reversed(list(running)):
        if running[key][0].node == node:
            return running.pop(key)
    return None


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
    deliver = getattr(pool, "deliver_activity", None)
    if callable(deliver):
        deliver()  # what the pool noted this pass counts too
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
