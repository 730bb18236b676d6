"""Saturation: a bounded priority queue with deadlines, woken when a slot is given back."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from routing_support import Recorder, cluster_nodes, gated, release, toy, toy_plugins

from sollol.errors import BusyError, ConfigError
from sollol.node import Node
from sollol.pool import AsyncPool
from sollol.queue import WaitQueue
from sollol.routing import PoolNode

HI = [{"role": "user", "content": "hi"}]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def full_node(name: str = "a", limit: int = 1) -> PoolNode:
    pnode = PoolNode(Node(host="127.0.0.1", port=1, name=name, max_concurrency=limit))
    pnode.in_flight = limit
    return pnode


def test_waiters_are_served_by_priority_then_arrival() -> None:
    async def main() -> list[str]:
        queue = WaitQueue()
        node = full_node()
        order: list[str] = []

        async def wait(tag: str, priority: int) -> None:
            got = await queue.wait({"a"}, "m", priority=priority, timeout=5)
            with got.lease(reserved=True):
                order.append(tag)

        tasks = [
            asyncio.create_task(wait(tag, prio)) for tag, prio in [("low", 0), ("high", 5), ("low2", 0), ("mid", 1)]
        ]
        await asyncio.sleep(0)  # let them all enqueue
        assert len(queue) == 4
        for served in range(1, 5):
            node.in_flight = 0  # a slot comes free
            assert queue.wake(node)
            assert node.reserved == 1 and node.full  # reserved for the woken waiter: nobody else gets it
            while len(order) < served:
                await asyncio.sleep(0)  # the woken waiter runs, leases and finishes
            assert node.reserved == 0
        await asyncio.gather(*tasks)
        return order

    assert run(main()) == ["high", "mid", "low", "low2"]


def test_a_waiter_past_its_deadline_gets_busy_error() -> None:
    async def main() -> None:
        queue = WaitQueue()
        with pytest.raises(BusyError, match="busy") as caught:
            await queue.wait({"a"}, "llama3.2", timeout=0.01)
        assert caught.value.model == "llama3.2" and len(queue) == 0

    run(main())


def test_a_full_queue_refuses_at_once() -> None:
    async def main() -> None:
        queue = WaitQueue(limit=1)
        first = asyncio.create_task(queue.wait({"a"}, "m", timeout=5))
        await asyncio.sleep(0)
        with pytest.raises(BusyError):
            await queue.wait({"a"}, "m", timeout=5)
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        assert len(queue) == 0

    run(main())


def test_a_waiter_cancelled_after_being_handed_a_slot_passes_it_on() -> None:
    async def main() -> None:
        queue = WaitQueue()
        node = full_node()
        first = asyncio.create_task(queue.wait({"a"}, "m", timeout=5))
        second = asyncio.create_task(queue.wait({"a"}, "m", timeout=5))
        await asyncio.sleep(0)
        node.in_flight = 0
        assert queue.wake(node)  # handed to `first`
        first.cancel()  # ...which is cancelled before it runs
        await asyncio.gather(first, return_exceptions=True)
        assert await second is node
        assert node.reserved == 1  # one reservation, now owned by `second`

    run(main())


def test_wake_only_hands_a_node_to_waiters_that_can_use_it() -> None:
    async def main() -> None:
        queue = WaitQueue()
        other = full_node("b")
        waiter = asyncio.create_task(queue.wait({"a"}, "m", timeout=5))
        await asyncio.sleep(0)
        other.in_flight = 0
        assert not queue.wake(other) and other.reserved == 0
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)

    run(main())


# -- through the pool ----------------------------------------------------------------------------


def test_requests_wait_for_a_free_slot_instead_of_failing(loopback_servers: Any) -> None:
    a = gated(toy("a"))
    nodes = list(cluster_nodes(loopback_servers, a, limits=[1]))
    recorder = Recorder()

    async def main() -> None:
        async with AsyncPool(nodes, plugins=toy_plugins(recorder), health_interval=0) as pool:
            first = asyncio.create_task(pool.chat("llama3.2", HI))
            await a.arrived()
            second = asyncio.create_task(pool.chat("llama3.2", HI))
            await recorder.wait_kind("request.queued")
            assert pool.queued() == 1 and pool._nodes[0].in_flight == 1
            release(loopback_servers, a)
            results = await asyncio.gather(first, second)
            assert results[1].route is not None and results[1].route.queued > 0
            assert dict(results[1].route.parts)["queued"] > 0
            assert pool._nodes[0].in_flight == 0 and pool._nodes[0].reserved == 0
            assert a.max_in_flight == 1  # the limit held

    run(main())


def test_past_the_queue_deadline_the_caller_gets_busy_error(loopback_servers: Any) -> None:
    a = gated(toy("a"))
    nodes = list(cluster_nodes(loopback_servers, a, limits=[1]))
    recorder = Recorder()

    async def main() -> None:
        async with AsyncPool(nodes, plugins=toy_plugins(recorder), health_interval=0, queue_timeout=0.05) as pool:
            first = asyncio.create_task(pool.chat("llama3.2", HI))
            await a.arrived()
            with pytest.raises(BusyError, match=r"llama3\.2"):
                await pool.chat("llama3.2", HI)
            assert pool.queued() == 0
            release(loopback_servers, a)
            await first
            assert pool._nodes[0].in_flight == 0

    run(main())


def test_the_pool_wide_limit_applies_to_nodes_without_their_own(loopback_servers: Any) -> None:
    a = gated(toy("a"))
    nodes = list(cluster_nodes(loopback_servers, a))
    recorder = Recorder()

    async def main() -> None:
        async with AsyncPool(nodes, plugins=toy_plugins(recorder), health_interval=0, max_concurrency=2) as pool:
            tasks = [asyncio.create_task(pool.chat("llama3.2", HI, priority=i)) for i in range(5)]
            await recorder.wait_kind("request.queued", 3)
            assert pool._nodes[0].in_flight == 2 and pool.queued() == 3
            release(loopback_servers, a)
            results = await asyncio.gather(*tasks)
            assert all(r.text for r in results)
            assert a.max_in_flight <= 2

    run(main())


def test_higher_priority_requests_leave_the_queue_first(loopback_servers: Any) -> None:
    a = gated(toy("a"))
    nodes = list(cluster_nodes(loopback_servers, a, limits=[1]))
    recorder = Recorder()
    finished: list[int] = []

    async def main() -> None:
        async with AsyncPool(nodes, plugins=toy_plugins(recorder), health_interval=0) as pool:

            async def ask(priority: int) -> None:
                await pool.chat("llama3.2", HI, priority=priority)
                finished.append(priority)

            blocker = asyncio.create_task(ask(-1))
            await a.arrived()
            waiting = []
            for index, priority in enumerate([1, 9, 5]):
                waiting.append(asyncio.create_task(ask(priority)))
                await recorder.wait_kind("request.queued", index + 1)
            release(loopback_servers, a)
            await asyncio.gather(blocker, *waiting)

    run(main())
    assert finished == [-1, 9, 5, 1]


def test_queue_settings_are_checked() -> None:
    with pytest.raises(ConfigError):
        AsyncPool(["127.0.0.1:1"], max_concurrency=0)
    with pytest.raises(ConfigError):
        AsyncPool(["127.0.0.1:1"], queue_timeout=-1)
