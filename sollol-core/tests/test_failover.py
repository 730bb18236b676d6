"""Failover with a bounded budget, streams, and exact in-flight accounting."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest
from routing_support import Ordered, Recorder, cluster_nodes, gated, release, toy, toy_plugins

from sollol.errors import AllNodesFailedError, InvalidRequestError, StreamInterruptedError
from sollol.pool import AsyncPool
from sollol.sync import Pool
from sollol.testing.emulator import Fault

HI = [{"role": "user", "content": "hi"}]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def in_flight(pool: AsyncPool) -> dict[str, int]:
    return {p.id: p.in_flight for p in pool._nodes}


def test_a_failed_request_is_retried_on_a_node_not_yet_tried(loopback_servers: Any) -> None:
    a, b, c = toy("a"), toy("b"), toy("c")
    nodes = list(cluster_nodes(loopback_servers, a, b, c))
    a.inject(Fault.error(500, {"error": "boom"}))
    b.inject(Fault.error(502, {"error": "bad gateway"}))

    async def main() -> None:
        async with AsyncPool(nodes, plugins=toy_plugins(), policy=Ordered(), health_interval=0, max_attempts=3) as pool:
            result = await pool.chat("llama3.2", HI)
            assert result.route is not None
            assert result.route.tried == ("a", "b", "c") and result.route.node == "c"
            assert [n for n, _ in result.route.failures] == ["a", "b"] and "bad gateway" in result.route.failures[1][1]
            assert in_flight(pool) == {"a": 0, "b": 0, "c": 0}
            a.inject(Fault.error(500, {"error": "boom"}))
            b.inject(Fault.error(500, {"error": "boom"}))
            with pytest.raises(AllNodesFailedError) as caught:
                await _two_nodes_only(pool)
            assert [node for node, _ in caught.value.attempts] == ["a", "b"]  # each once, never twice

    async def _two_nodes_only(pool: AsyncPool) -> Any:
        pool.max_attempts = 2
        return await pool.chat("llama3.2", HI)

    run(main())


def test_failover_lists_the_tried_nodes_in_the_route(loopback_servers: Any) -> None:
    a, b = toy("a"), toy("b")
    nodes = list(cluster_nodes(loopback_servers, a, b))

    async def main() -> None:
        async with AsyncPool(nodes, plugins=toy_plugins(), health_interval=0, policy="round_robin") as pool:
            first = (await pool.chat("llama3.2", HI)).route
            assert first is not None
            # the next round-robin pick is the other node: make it fail once
            (b if first.node == "a" else a).inject(Fault.error(500, {"error": "boom"}))
            route = (await pool.chat("llama3.2", HI)).route
            assert route is not None
            assert route.tried == ("b", "a") if first.node == "a" else ("a", "b")
            assert route.node == route.tried[-1] and "boom" in route.failures[0][1]

    run(main())


def test_the_attempt_budget_is_bounded(loopback_servers: Any) -> None:
    emulators = [toy(n) for n in "abcd"]
    for emulator in emulators:
        emulator.inject(Fault.error(500, {"error": "boom"}, times=None))
    nodes = list(cluster_nodes(loopback_servers, *emulators))

    async def main() -> None:
        async with AsyncPool(nodes, plugins=toy_plugins(), health_interval=0, max_attempts=2) as pool:
            with pytest.raises(AllNodesFailedError) as caught:
                await pool.chat("llama3.2", HI)
            assert len(caught.value.attempts) == 2

    run(main())
    assert sum(e.requests.count(("POST", "/chat")) for e in emulators) == 2


def test_an_invalid_request_is_not_retried(loopback_servers: Any) -> None:
    a, b = toy("a"), toy("b")
    nodes = list(cluster_nodes(loopback_servers, a, b))
    a.inject(Fault.error(400, {"error": "bad request"}))
    b.inject(Fault.error(400, {"error": "bad request"}))

    async def main() -> None:
        async with AsyncPool(nodes, plugins=toy_plugins(), health_interval=0) as pool:
            with pytest.raises(InvalidRequestError):
                await pool.chat("llama3.2", HI)

    run(main())
    assert a.requests.count(("POST", "/chat")) + b.requests.count(("POST", "/chat")) == 1


def test_a_stale_inventory_404_fails_over_and_forgets_the_model(loopback_servers: Any) -> None:
    a, b = toy("a"), toy("b")
    nodes = list(cluster_nodes(loopback_servers, a, b))

    async def main() -> None:
        async with AsyncPool(
            nodes, plugins=toy_plugins(), health_interval=0, refresh_interval=0, policy="round_robin"
        ) as pool:
            a.config.models.clear()  # a deleted the model since the pool read its inventory
            results = [await pool.chat("llama3.2", HI) for _ in range(3)]
            assert {r.route.node for r in results} == {"b"}  # type: ignore[union-attr]
            node_a = next(p for p in pool._nodes if p.id == "a")
            assert node_a.breaker.closed and node_a.models == {}

    run(main())


@pytest.mark.parametrize("fault", [Fault.error(500, {"error": "boom"}), Fault.drop(), Fault.stream_error(after=0)])
def test_a_stream_fails_over_before_its_first_chunk(loopback_servers: Any, fault: Fault) -> None:
    a, b = toy("a"), toy("b")
    nodes = list(cluster_nodes(loopback_servers, a, b))
    a.inject(fault)

    async def main() -> None:
        async with AsyncPool(nodes, plugins=toy_plugins(), policy=Ordered(), health_interval=0) as pool:
            chunks = [c async for c in await pool.chat("llama3.2", HI, stream=True)]
            assert chunks[-1].done and chunks[-1].route is not None
            assert chunks[-1].route.tried == ("a", "b") and chunks[-1].route.node == "b"
            assert "".join(c.text for c in chunks).startswith("Hello from b")
            assert in_flight(pool) == {"a": 0, "b": 0}

    run(main())


def test_a_stream_that_breaks_after_a_chunk_ends_with_a_clear_error(loopback_servers: Any) -> None:
    a = toy("a")
    nodes = list(cluster_nodes(loopback_servers, a, toy("b")))
    a.inject(Fault.stream_error(after=2, message="GPU fell off"))

    async def main() -> None:
        async with AsyncPool(nodes, plugins=toy_plugins(), health_interval=0, policy="round_robin") as pool:
            got: list[str] = []
            with pytest.raises(StreamInterruptedError, match="GPU fell off"):
                # round robin starts on one of the two: try twice so node a serves one
                for _ in range(2):
                    async for chunk in await pool.chat("llama3.2", HI, stream=True):
                        got.append(chunk.text)
            assert got  # chunks reached the caller before the error: never a silent truncation
            assert in_flight(pool) == {"a": 0, "b": 0}

    run(main())


def test_a_truncated_stream_is_an_error_not_a_short_answer(loopback_servers: Any) -> None:
    a = toy("a")
    nodes = list(cluster_nodes(loopback_servers, a))
    a.inject(Fault.truncate(after=2))

    async def main() -> None:
        async with AsyncPool(nodes, plugins=toy_plugins(), health_interval=0) as pool:
            with pytest.raises(StreamInterruptedError):
                async for _ in await pool.chat("llama3.2", HI, stream=True):
                    pass

    run(main())


# -- in-flight accounting ------------------------------------------------------------------------


def test_in_flight_counts_exactly_through_errors(loopback_servers: Any) -> None:
    a = toy("a")
    nodes = list(cluster_nodes(loopback_servers, a))

    async def main() -> None:
        async with AsyncPool(nodes, plugins=toy_plugins(), health_interval=0, max_attempts=1) as pool:
            for fault in (Fault.error(500), Fault.error(400), Fault.drop(), Fault.error(404, {"error": "x"})):
                a.inject(fault)
                with pytest.raises(Exception):
                    await pool.chat("llama3.2", HI)
                assert in_flight(pool) == {"a": 0}
                pool._nodes[0].breaker.reset()
                await pool.refresh()  # the 404 made the pool forget the model

    run(main())


def test_in_flight_counts_exactly_through_cancellation(loopback_servers: Any) -> None:
    a = gated(toy("a"))
    nodes = list(cluster_nodes(loopback_servers, a))
    recorder = Recorder()

    async def main() -> None:
        async with AsyncPool(nodes, plugins=toy_plugins(recorder), health_interval=0) as pool:
            tasks = [asyncio.create_task(pool.chat("llama3.2", HI)) for _ in range(3)]
            await a.arrived(3)
            assert in_flight(pool) == {"a": 3}
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            assert in_flight(pool) == {"a": 0}

    run(main())
    release(loopback_servers, a)


def test_in_flight_counts_exactly_when_a_stream_is_abandoned(loopback_servers: Any) -> None:
    a = toy("a", max_tokens=50)
    nodes = list(cluster_nodes(loopback_servers, a))

    async def main() -> None:
        async with AsyncPool(nodes, plugins=toy_plugins(), health_interval=0) as pool:
            # closed explicitly after one chunk
            stream = await pool.chat("llama3.2", HI, stream=True)
            await stream.__anext__()
            assert in_flight(pool) == {"a": 1}
            await stream.aclose()  # type: ignore[attr-defined]
            assert in_flight(pool) == {"a": 0}
            # dropped without closing: the event loop finalises the generator
            released = asyncio.Event()
            pool._nodes[0].on_release = lambda p: (pool._released(p), released.set())  # type: ignore[func-returns-value]
            stream = await pool.chat("llama3.2", HI, stream=True)
            await stream.__anext__()
            del stream
            gc.collect()
            await asyncio.wait_for(released.wait(), 5)
            assert in_flight(pool) == {"a": 0}
            # never started: nothing was counted
            stream = await pool.chat("llama3.2", HI, stream=True)
            del stream
            assert in_flight(pool) == {"a": 0}

    run(main())


def test_in_flight_counts_exactly_through_the_sync_pool(loopback_servers: Any) -> None:
    a = toy("a", max_tokens=50)
    nodes = list(cluster_nodes(loopback_servers, a))
    with Pool(nodes, plugins=toy_plugins(), health_interval=0) as pool:
        chunks = pool.chat("llama3.2", HI, stream=True)
        next(chunks)
        assert pool.async_pool._nodes[0].in_flight == 1
        chunks.close()  # abandoned by the caller
        assert pool.async_pool._nodes[0].in_flight == 0
        a.inject(Fault.error(500))
        with pytest.raises(AllNodesFailedError):
            pool.chat("llama3.2", HI)
        assert pool.async_pool._nodes[0].in_flight == 0
        assert pool.chat("llama3.2", HI, priority=1).text
        assert pool.async_pool._nodes[0].in_flight == 0
