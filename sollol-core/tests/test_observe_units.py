"""The observers on their own: the status feed's decisions and series, the event log, redaction."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest

from sollol.activity import ActivityEvent, RequestRecord
from sollol.errors import ConfigError
from sollol.observe import PROTOCOL, EventLog, StatusFeed, node_status, redact, status_document
from sollol.observe.logs import logfmt, parse_level


def routed(node: str, at: float, attempt: int = 1, tried: tuple[str, ...] = ()) -> ActivityEvent:
    return ActivityEvent(
        kind="request.routed",
        node=node,
        model="llama3.2",
        at=at,
        data={
            "operation": "chat",
            "policy": "least_loaded",
            "score": 1.5,
            "parts": {"load": 1.0, "cold": 0.5},
            "attempt": attempt,
            "tried": [*tried, node],
            "queued": 0.0,
        },
    )


def finished(node: str, at: float, latency: float, ttft: float | None = None) -> ActivityEvent:
    return ActivityEvent(
        kind="request.finished", node=node, model="llama3.2", at=at, data={"latency": latency, "ttft": ttft}
    )


def test_feed_pairs_decisions_with_their_outcome_and_reasons() -> None:
    feed = StatusFeed()
    token = PROTOCOL.set("openai")
    feed.take(routed("a", 100.0))
    feed.take(
        ActivityEvent(kind="request.failed", node="a", model="llama3.2", at=100.1, data={"reason": "HTTP 500: boom"})
    )
    feed.take(routed("b", 100.2, attempt=2, tried=("a",)))
    feed.take(finished("b", 100.3, 0.25))
    newest, oldest = feed.decisions()
    assert (oldest["node"], oldest["outcome"], oldest["error"]) == ("a", "error", "HTTP 500: boom")
    assert (newest["node"], newest["outcome"], newest["latency"]) == ("b", "ok", 0.25)
    assert newest["protocol"] == "openai"
    assert newest["reason"] == "least_loaded picked it (score 1.5: load 1, cold 0.5); attempt 2 after a failed"
    PROTOCOL.reset(token)


def test_feed_keeps_per_second_series_over_a_window() -> None:
    feed = StatusFeed(window=5, clock=lambda: 104.9)
    for at, node, latency in ((100.1, "a", 0.1), (100.5, "b", 0.3), (102.0, "a", 0.2)):
        feed.take(finished(node, at, latency, ttft=0.05))
    feed.take(ActivityEvent(kind="request.failed", node="a", at=104.2))
    series = feed.series()
    assert series["start"] == 100 and series["requests"] == [2, 0, 1, 0, 1]
    assert series["errors"] == [0, 0, 0, 0, 1]
    assert series["latency_avg"][0] == pytest.approx(0.2) and series["latency_max"][0] == pytest.approx(0.3)
    assert series["latency_avg"][1] is None and series["latency_avg"][4] is None  # only an error that second
    assert series["ttft_avg"][2] == pytest.approx(0.05)
    assert series["requests_by_node"] == {"a": [1, 0, 1, 0, 1], "b": [1, 0, 0, 0, 0]}
    later = StatusFeed(window=5, clock=lambda: 200.0)
    later.take(finished("a", 100.0, 0.1))
    assert later.series()["requests"] == [0] * 5  # out of the window


def test_feed_wakes_waiters_on_node_changes_only() -> None:
    async def scenario() -> None:
        feed = StatusFeed()
        first = feed.changed()
        assert feed.changed() is first  # shared by every stream
        feed.take(finished("a", 1.0, 0.1))
        assert not first.done()
        feed.take(ActivityEvent(kind="node.down", node="a"))
        assert first.done()
        second = feed.changed()
        assert second is not first
        feed.close()
        assert second.done() and feed.closed

    asyncio.run(scenario())


def test_node_status_marks_loaded_models_and_leaves_unknowns_null() -> None:
    snapshot: dict[str, Any] = {
        "id": "gpu1",
        "url": "http://127.0.0.1:11434",
        "backend": "ollama",
        "state": "up",
        "circuit": "half_open",
        "models": ["llama3.2:latest", "qwen3:0.6b"],
        "loaded": ["llama3.2:latest"],
        "in_flight": 2,
        "queued_for": 1,
        "activity": {"vram_used": 5, "vram_total": 10, "loaded": [{"name": "phi4:latest"}], "running": 2},
        "latency": {"llama3.2:latest": {"ttft": 0.2, "per_token": 0.01, "samples": 3}},
        "last_error": "401 from http://u:hunter2@10.0.0.1/ with Bearer sk-abc123",
    }
    node = node_status(snapshot)
    assert node["models"] == [
        {"name": "llama3.2:latest", "loaded": True},
        {"name": "qwen3:0.6b", "loaded": False},
        {"name": "phi4:latest", "loaded": True},
    ]
    assert node["vram"] == {"used": 5, "total": 10} and node["backend_queue"] == {"running": 2, "waiting": None}
    assert node["circuit"] == "half_open" and node["healthy"] is True
    assert node["latency"]["ttft"] == 0.2 and node["in_flight"] == 2 and node["queued"] == 1
    assert "hunter2" not in node["last_error"] and "sk-abc123" not in node["last_error"]
    bare = node_status({"id": "x", "state": "unknown"})
    assert bare["models"] == [] and bare["vram"] == {"used": None, "total": None} and bare["kv_cache_usage"] is None


def test_status_document_from_any_pool_like_object() -> None:
    class Pool:
        def nodes(self) -> list[dict[str, Any]]:
            return [{"id": "a", "state": "up"}, {"id": "b", "state": "down", "last_error": "refused"}]

    document = status_document(Pool(), now=10.0)
    assert document["summary"] == {"nodes": 2, "healthy": 1, "down": 1, "in_flight": 0, "queued": 0, "models": []}
    assert document["decisions"] == [] and document["series"] is None
    json.dumps(document)


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("Authorization: Bearer abc.def", "abc.def"),
        ("GET http://user:pa55@host:1/x", "pa55"),
        ("api_key=zzz999 rejected", "zzz999"),
        ("Basic dXNlcjpwYXNz", "dXNlcjpwYXNz"),
    ],
)
def test_redact(text: str, secret: str) -> None:
    assert secret not in (redact(text) or "")
    assert redact("connection refused") == "connection refused"


def test_event_log_levels_and_structure(caplog: pytest.LogCaptureFixture) -> None:
    log = EventLog("info")
    caplog.set_level(logging.DEBUG, logger="sollol.events")
    token = PROTOCOL.set("ollama")
    log.take(routed("a", 1.0))
    log.take(finished("a", 1.1, 0.1))  # debug: below the flag
    log.take(ActivityEvent(kind="node.down", node="b", data={"reason": "refused (Bearer sk-live-1)", "previous": "up"}))
    PROTOCOL.reset(token)
    records = [r for r in caplog.records if r.name == "sollol.events"]
    assert [r.levelno for r in records] == [logging.INFO, logging.WARNING]
    first = records[0].getMessage()
    assert first.startswith("event=request.routed node=a model=llama3.2 protocol=ollama")
    assert "policy=least_loaded" in first and "parts.load=1" in first and "tried=a" in first
    assert records[0].sollol_event["policy"] == "least_loaded"  # type: ignore[attr-defined]
    assert "sk-live-1" not in records[1].getMessage()
    caplog.clear()
    EventLog("warning").take(routed("a", 1.0))
    EventLog("off").take(ActivityEvent(kind="node.down", node="b"))
    assert [r for r in caplog.records if r.name == "sollol.events"] == []


def test_event_log_json_lines_and_level_parsing(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG, logger="sollol.events")
    EventLog("debug", json_lines=True).take(finished("a", 1.0, 0.5))
    (record,) = [r for r in caplog.records if r.name == "sollol.events"]
    assert json.loads(record.getMessage())["latency"] == 0.5
    monkeypatch.setenv("SOLLOL_EVENT_LOG", "error")
    assert EventLog().level == logging.ERROR
    assert parse_level(None) == logging.WARNING and parse_level("10") == 10
    with pytest.raises(ConfigError, match="unknown event log level"):
        parse_level("loud")
    assert logfmt({"a": "x y", "b": None, "c": {"d": 1}}) == 'a="x y" c.d=1'


class NoNodes:
    """A stand-in pool for the metrics: no nodes, nothing queued."""

    def nodes(self) -> list[dict[str, Any]]:
        return []

    def queued(self) -> int:
        return 0


def a_session() -> list[ActivityEvent]:
    """Routed, failed, routed again, finished; a streamed one; node and circuit changes; a queued request."""
    return [
        routed("a", 100.0),
        ActivityEvent(
            kind="request.failed",
            node="a",
            model="llama3.2",
            at=100.1,
            data={"reason": "HTTP 500: boom", "operation": "chat", "error": "BackendError"},
        ),
        ActivityEvent(kind="circuit.opened", node="a", at=100.1),
        routed("b", 100.2, attempt=2, tried=("a",)),
        finished("b", 100.3, 0.25),
        ActivityEvent(kind="request.queued", model="llama3.2", at=101.0),
        routed("b", 101.5),
        finished("b", 101.9, 0.4, ttft=0.05),
        ActivityEvent(kind="node.down", node="a", at=102.0),
    ]


def test_a_batch_counts_as_its_events_one_by_one_and_records_as_events(caplog: pytest.LogCaptureFixture) -> None:
    from sollol.observe.metrics import PrometheusObserver

    def observers() -> tuple[StatusFeed, PrometheusObserver, EventLog]:
        return StatusFeed(clock=lambda: 102.5), PrometheusObserver(NoNodes()), EventLog("info")

    def records(events: list[ActivityEvent]) -> list[Any]:  # as the pool notes request attempts
        kinds = ("request.routed", "request.finished", "request.failed")
        return [RequestRecord.from_event(e) if e.kind in kinds else e for e in events]

    caplog.set_level(logging.DEBUG, logger="sollol.events")
    token = PROTOCOL.set("openai")
    runs = []
    for deliver in ("one by one", "one batch", "records"):
        caplog.clear()
        feed, metrics, _ = observed = observers()
        if deliver == "one by one":
            for event in a_session():
                for observer in observed:
                    observer.take(event)
        else:
            batch = a_session() if deliver == "one batch" else records(a_session())
            for observer in observed:
                observer.sollol_activity_batch(batch)
        logged = [r.getMessage() for r in caplog.records]
        runs.append((feed.decisions(), feed.series(), metrics.render().decode(), logged))
    PROTOCOL.reset(token)
    assert runs[0] == runs[1]
    assert runs[2][:3] == runs[0][:3]
    # a record's event lists its fields in the pool's order: the same records are logged
    assert [m.split()[:4] for m in runs[2][3]] == [m.split()[:4] for m in runs[0][3]]
    decisions, series, text, logged = runs[0]
    assert any("event=request.routed" in m for m in logged)
    assert not any("request.finished" in m for m in logged)  # debug, below the flag
    assert [d["outcome"] for d in decisions] == ["ok", "ok", "error"]
    assert series["requests"][-3:] == [2, 1, 0] and series["errors"][-3:] == [1, 0, 0]
    assert 'sollol_requests_total{model="llama3.2",node="b",operation="",outcome="ok",protocol="openai"} 2.0' in text
    assert 'outcome="error",protocol="openai"} 1.0' in text
    assert 'sollol_circuit_changes_total{node="a",state="opened"} 1.0' in text
    assert 'sollol_requests_queued_total{model="llama3.2"} 1.0' in text
    assert 'sollol_time_to_first_token_seconds_count{model="llama3.2",node="b",protocol="openai"} 1.0' in text


def test_counting_a_mixed_batch_at_once_matches_counting_it_record_by_record() -> None:
    import random

    from sollol.inference import Route
    from sollol.observe.metrics import PrometheusObserver

    rng = random.Random(7)
    records = [
        RequestRecord(
            kind=rng.choice(["request.finished"] * 4 + ["request.failed"]),
            node=rng.choice("ab"),
            model=rng.choice(["m1", "m2"]),
            operation="chat",
            protocol=rng.choice(["ollama", "openai"]),
            at=100.0 + index / 10,  # spans several seconds
            route=Route(node="a"),
            routed=True,
            attempt=1,
            latency=rng.choice([None, rng.uniform(0.001, 3.0)]),
            ttft=rng.choice([None, rng.uniform(0.0005, 0.5)]),
            error="BackendError",
        )
        for index in range(60)
    ]
    whole, single = PrometheusObserver(NoNodes()), PrometheusObserver(NoNodes())
    feed_whole, feed_single = StatusFeed(clock=lambda: 106.5), StatusFeed(clock=lambda: 106.5)
    whole.sollol_activity_batch(records)
    feed_whole.sollol_activity_batch(records)
    for record in records:
        single.take(record)
        feed_single.take(record)

    def samples(observer: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        from prometheus_client.parser import text_string_to_metric_families

        text = observer.render().decode()
        found = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                found[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
        return found

    counted, expected = samples(whole), samples(single)
    assert counted.keys() == expected.keys()
    assert counted == {key: pytest.approx(value) for key, value in expected.items()}  # sums: float order
    assert feed_whole.series() == feed_single.series() and feed_whole.decisions() == feed_single.decisions()
    assert sum(feed_whole.series()["requests"]) == 60


def test_a_batch_of_request_records_alone_pairs_streams_as_one_by_one() -> None:
    """Records only (what the pool delivers while streams run): each routed record opens a
    decision its ending closes, as when the same records come one at a time."""
    from sollol.activity import Route

    def session() -> list[RequestRecord]:
        shared = [Route(node=n, tried=(n,), policy="sollol", score=-0.1, parts=(("load", 0.0),)) for n in "abc"]
        out = []
        for index, (node, route) in enumerate(zip("abc", shared, strict=True)):
            out.append(RequestRecord.from_event(routed(node, 100.0 + index)))
            out[-1] = out[-1]._replace(route=route)  # the pool's routed and ending records share a route
        out.append(RequestRecord.from_event(finished("b", 103.0, 0.5))._replace(route=shared[1]))
        out.append(
            RequestRecord.from_event(
                ActivityEvent(kind="request.failed", node="a", model="llama3.2", at=103.5, data={"reason": "boom"})
            )._replace(route=shared[0])
        )
        out.append(RequestRecord.from_event(finished("d", 104.0, 0.1))._replace(routed=True))  # a plain request
        return out

    one, batched = StatusFeed(clock=lambda: 104.5), StatusFeed(clock=lambda: 104.5)
    for record in session():  # each beside an event: the general path, record by record
        one.sollol_activity_batch([record, ActivityEvent(kind="model.loaded", node="x", at=record.at)])
    batched.sollol_activity_batch(session())
    assert batched.decisions() == one.decisions()
    assert batched.series() == one.series()
    outcomes = [(d["node"], d["outcome"]) for d in batched.decisions()]
    assert outcomes == [("d", "ok"), ("c", "running"), ("b", "ok"), ("a", "error")]
