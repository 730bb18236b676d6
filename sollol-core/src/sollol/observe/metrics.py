"""Prometheus metrics: counters and histograms fed by activity events, gauges read at scrape time.

`PrometheusObserver` is an activity observer like any plugin's. Request counts and latency
histograms move as the pool's activity batches arrive; everything that describes a node now (state, circuit,
in-flight, queued, and what the backend reports: loaded models, VRAM, its own queue, KV
cache) is read from `pool.nodes()` when `/metrics` is scraped, so it costs nothing between
scrapes. It uses its own `CollectorRegistry`, never the global one.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterator, Mapping, Sequence
from itertools import compress
from typing import Any, cast

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from sollol.activity import ActivityEvent, RequestRecord, fields, present
from sollol.plugins import hookimpl

#: Seconds; from a fast embedding to a long generation.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
TTFT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

NODE_STATES = ("unknown", "up", "down", "loading", "auth_required")
CIRCUIT_STATES = ("closed", "open", "half_open")

__all__ = ["CONTENT_TYPE_LATEST", "PoolCollector", "PrometheusObserver"]


def _state(value: Any) -> str:
    return str(value or "unknown").replace("-", "_")


class PoolCollector(Collector):
    """Gauges describing every node of a pool, read from `pool.nodes()` at scrape time."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool

    def collect(self) -> Iterator[Metric]:
        """One family per figure; activity figures only for nodes whose backend reports them."""
        nodes: list[Mapping[str, Any]] = list(self.pool.nodes())
        labels = ["node", "backend"]

        def family(name: str, doc: str, extra: tuple[str, ...] = ()) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=[*labels, *extra])

        up = family("sollol_node_up", "1 when the node may be sent requests (state up or unknown)")
        state = family("sollol_node_state", "1 for the node's current state", ("state",))
        circuit = family("sollol_node_circuit_state", "1 for the state of the node's circuit breaker", ("state",))
        in_flight = family("sollol_node_in_flight", "Requests this gateway has in flight on the node")
        queued = family("sollol_node_queued", "Queued requests holding a reserved slot on the node")
        limit = family("sollol_node_max_concurrency", "Requests the node may run at once (where limited)")
        served = family("sollol_node_served", "Requests the node has served since the pool started")
        failed = family("sollol_node_failed", "Attempts that failed on the node since the pool started")
        loaded = family("sollol_node_loaded_models", "Models resident in the node's memory (where reported)")
        models = family("sollol_node_models", "Models the node offers")
        vram_used = family("sollol_node_vram_used_bytes", "VRAM in use on the node (where reported)")
        vram_total = family("sollol_node_vram_total_bytes", "VRAM on the node (where reported)")
        running = family("sollol_node_backend_running", "Requests the backend says it is running (where reported)")
        waiting = family("sollol_node_backend_waiting", "Requests the backend says are waiting (where reported)")
        kv_cache = family("sollol_node_kv_cache_usage_ratio", "KV-cache use, 0 to 1 (where reported)")
        capacity = family("sollol_node_backend_slots", "Parallel slots the backend reports (where reported)")
        for node in nodes:
            ident = [str(node.get("id")), str(node.get("backend") or "unknown")]
            current = _state(node.get("state"))
            up.add_metric(ident, 1.0 if current in ("up", "unknown") else 0.0)
            for name in NODE_STATES:
                state.add_metric([*ident, name], 1.0 if name == current else 0.0)
            breaker = _state(node.get("circuit") or "closed")
            for name in CIRCUIT_STATES:
                circuit.add_metric([*ident, name], 1.0 if name == breaker else 0.0)
            in_flight.add_metric(ident, float(node.get("in_flight") or 0))
            queued.add_metric(ident, float(node.get("queued_for") or 0))
            if node.get("max_concurrency") is not None:
                limit.add_metric(ident, float(node["max_concurrency"]))
            served.add_metric(ident, float(node.get("served") or 0))
            failed.add_metric(ident, float(node.get("failed") or 0))
            models.add_metric(ident, float(len(node.get("models") or ())))
            if node.get("loaded") is not None:
                loaded.add_metric(ident, float(len(node["loaded"])))
            activity = node.get("activity") or {}
            for gauge, field in (
                (vram_used, "vram_used"),
                (vram_total, "vram_total"),
                (running, "running"),
                (waiting, "waiting"),
                (kv_cache, "kv_cache_usage"),
                (capacity, "capacity"),
            ):
                value = activity.get(field)
                if value is not None:
                    gauge.add_metric(ident, float(value))
        yield from (up, state, circuit, in_flight, queued, limit, served, failed, models, loaded)
        yield from (vram_used, vram_total, running, waiting, kv_cache, capacity)
        depth = GaugeMetricFamily("sollol_queue_depth", "Requests waiting for a free node")
        queued_now = getattr(self.pool, "queued", None)
        depth.add_metric([], float(queued_now() if callable(queued_now) else 0))
        yield depth


class _Histogram:
    """Bucket counts of one label set (non-cumulative; made cumulative at scrape time)."""

    __slots__ = ("counts", "total")

    def __init__(self, size: int) -> None:
        self.counts = [0] * (size + 1)  # the last one is +Inf
        self.total = 0.0


FINISHED = "request.finished"
FAILED = "request.failed"
_OUTCOMES = {FINISHED: "ok", FAILED: "error"}

ROUTED = "request.routed"

_KIND, _LATENCY, _TTFT = map(fields, ("kind", "latency", "ttft"))
_REQUEST_KEY = fields("node", "model", "protocol", "operation", "kind")
_not_routed = ROUTED.__ne__


def _spread(
    table: dict[tuple[str, ...], _Histogram], labels: tuple[str, ...], values: list[float], bounds: tuple[float, ...]
) -> None:
    """Count `values` into the histogram of `labels`: sorted once, then split at the bounds."""
    if not values:
        return
    histogram = table.get(labels)
    if histogram is None:
        histogram = table[labels] = _Histogram(len(bounds))
    values.sort()
    counts = histogram.counts
    placed, total = 0, len(values)
    for index, bound in enumerate(bounds):  # a value equal to a bound is in that bound's bucket
        upto = bisect_right(values, bound, placed)
        counts[index] += upto - placed
        placed = upto
        if placed == total:
            break
    else:
        counts[-1] += total - placed
    histogram.total += sum(values)


class PrometheusObserver:
    """An activity observer that keeps Prometheus metrics of one pool in its own registry.

    It takes the pool's activity in batches (`sollol_activity_batch`, every 10 ms while
    there is news) and counts requests into plain dicts and bucket lists; the metric families are built
    from those counts when `/metrics` is scraped. No locks, no prometheus-client objects per
    request.
    """

    def __init__(self, pool: Any, registry: CollectorRegistry | None = None) -> None:
        self.pool = pool
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=False)
        self.requests: dict[tuple[str, ...], int] = {}  # (node, model, protocol, operation, kind)
        self.failures: dict[tuple[str, ...], int] = {}  # (node, model, error)
        self.latency: dict[tuple[str, ...], _Histogram] = {}  # (node, model, protocol)
        self.ttft: dict[tuple[str, ...], _Histogram] = {}
        self.queued: dict[tuple[str, ...], int] = {}  # (model,)
        self.node_changes: dict[tuple[str, ...], int] = {}  # (node, state)
        self.circuit_changes: dict[tuple[str, ...], int] = {}
        self.registry.register(PoolCollector(pool))
        self.registry.register(_EventCollector(self))

    @hookimpl
    def sollol_activity_batch(self, batch: Sequence[RequestRecord | ActivityEvent]) -> None:
        """Count what happened since the last batch."""
        if len(set(map(type, batch))) == 1 and type(batch[0]) is RequestRecord:  # the usual batch
            records = cast(Sequence[RequestRecord], batch)
            kinds = list(map(_KIND, records))
            done = records if ROUTED not in kinds else list(compress(records, map(_not_routed, kinds)))
            if done:
                self.tally(done)
            return
        ended: list[RequestRecord] = []
        for entry in batch:
            if type(entry) is RequestRecord:
                if entry.kind != "request.routed":
                    ended.append(entry)
                continue
            kind = entry.kind
            if kind == "request.finished" or kind == "request.failed":
                ended.append(RequestRecord.from_event(entry))  # type: ignore[arg-type]
            elif kind == "request.queued":
                waited = (entry.model or "",)
                self.queued[waited] = self.queued.get(waited, 0) + 1
            elif kind.startswith("node."):
                change = (entry.node or "", kind[5:])
                self.node_changes[change] = self.node_changes.get(change, 0) + 1
            elif kind.startswith("circuit."):
                change = (entry.node or "", kind[8:])
                self.circuit_changes[change] = self.circuit_changes.get(change, 0) + 1
        if ended:
            self.tally(ended)

    def take(self, event: ActivityEvent | RequestRecord) -> None:
        """One event or record, as a batch of one."""
        self.sollol_activity_batch((event,))

    def tally(self, records: Sequence[RequestRecord]) -> None:
        """Count finished and failed requests.

        By groups of records with the same labels (usually the whole batch is one), with C-level
        field getters, counts and sorts: a request costs a few hundred machine instructions
        here, where a Python loop over the records costs thousands.
        """
        keys = list(map(_REQUEST_KEY, records))
        first = keys[0]
        if keys.count(first) == len(keys):
            self._count_group(first, records)
            return
        groups: dict[tuple[str, ...], list[RequestRecord]] = {}
        for key, record in zip(keys, records, strict=True):
            group = groups.get(key)
            if group is None:
                groups[key] = [record]
            else:
                group.append(record)
        for key, group in groups.items():
            self._count_group(key, group)

    def _count_group(self, key: tuple[str, ...], records: Sequence[RequestRecord]) -> None:
        """Count records of one (node, model, protocol, operation, kind)."""
        requests = self.requests
        requests[key] = requests.get(key, 0) + len(records)
        node, model, protocol, _, kind = key
        if kind == FAILED:
            failures = self.failures
            for record in records:
                failure = (node, model, record.error or "error")
                failures[failure] = failures.get(failure, 0) + 1
            return
        labels = (node, model, protocol)
        _spread(self.latency, labels, present(list(map(_LATENCY, records))), LATENCY_BUCKETS)
        _spread(self.ttft, labels, present(list(map(_TTFT, records))), TTFT_BUCKETS)

    def render(self) -> bytes:
        """The exposition text."""
        return bytes(generate_latest(self.registry))


def _le(bound: float) -> str:
    return str(floatToGoString(bound))  # type: ignore[no-untyped-call]


class _EventCollector(Collector):
    """The counters and histograms of a `PrometheusObserver`, as metric families."""

    def __init__(self, observer: PrometheusObserver) -> None:
        self.observer = observer

    def collect(self) -> Iterator[Metric]:
        """Every family, including empty ones (so dashboards see the names from the start)."""
        o = self.observer
        deliver = getattr(o.pool, "deliver_activity", None)
        if callable(deliver):
            deliver()  # what the pool noted this pass counts too
        counters: tuple[tuple[str, str, list[str], dict[tuple[str, ...], int]], ...] = (
            (
                "sollol_requests",
                "Attempts sent to nodes, by node, model, client protocol, operation and outcome (ok or error)",
                ["node", "model", "protocol", "operation", "outcome"],
                o.requests,
            ),
            ("sollol_request_failures", "Failed attempts by node and error", ["node", "model", "error"], o.failures),
            ("sollol_requests_queued", "Requests that had to wait for a free node", ["model"], o.queued),
            (
                "sollol_node_state_changes",
                "Node state changes, by the state entered",
                ["node", "state"],
                o.node_changes,
            ),
            (
                "sollol_circuit_changes",
                "Circuit breaker changes, by the state entered",
                ["node", "state"],
                o.circuit_changes,
            ),
        )
        for name, doc, labels, table in counters:
            family = CounterMetricFamily(name, doc, labels=labels)
            for key, value in list(table.items()):
                if table is o.requests:  # counted by the record's kind: the outcome is its label
                    key = (*key[:4], _OUTCOMES.get(key[4], key[4]))
                family.add_metric(list(key), float(value))
            yield family
        histograms: tuple[tuple[str, str, dict[tuple[str, ...], _Histogram], tuple[float, ...]], ...] = (
            (
                "sollol_request_duration_seconds",
                "Time from dispatch to the last byte of a served request",
                o.latency,
                LATENCY_BUCKETS,
            ),
            (
                "sollol_time_to_first_token_seconds",
                "Time from dispatch to the first chunk of a streamed answer",
                o.ttft,
                TTFT_BUCKETS,
            ),
        )
        for name, doc, by_labels, bounds in histograms:
            hist = HistogramMetricFamily(name, doc, labels=["node", "model", "protocol"])
            for key, histogram in list(by_labels.items()):
                running = 0
                buckets = []
                for bound, count in zip((*bounds, math.inf), histogram.counts, strict=True):
                    running += count
                    buckets.append((_le(bound), float(running)))
                hist.add_metric(list(key), buckets, sum_value=histogram.total)
            yield hist
