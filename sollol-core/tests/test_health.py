"""Health: cheap probes, passive failure counting, circuit breakers, recovery, loading nodes."""

from __future__ import annotations

import asyncio
from typing import Any

from routing_support import Recorder, cluster_nodes, toy, toy_plugins

from sollol.detection import NodeState
from sollol.health import CircuitBreaker, CircuitState
from sollol.latency import ModelStats, decay_factor, split_timing
from sollol.pool import AsyncPool
from sollol.testing.emulator import Fault

HI = [{"role": "user", "content": "hi"}]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# -- the breaker alone ---------------------------------------------------------------------------


def test_breaker_opens_after_threshold_failures_in_a_row() -> None:
    breaker = CircuitBreaker(threshold=3, cooldown=60)
    assert not breaker.failure("x") and not breaker.failure("x")
    breaker.success()  # a success resets the count
    assert not breaker.failure("x") and not breaker.failure("x")
    assert breaker.failure("x")
    assert breaker.state is CircuitState.OPEN and not breaker.allows()


def test_breaker_trips_at_once_on_a_hard_failure() -> None:
    breaker = CircuitBreaker(threshold=5, cooldown=60)
    assert breaker.failure("refused", trip=True)
    assert not breaker.allows()


def test_half_open_lets_one_trial_through_and_closes_on_success() -> None:
    breaker = CircuitBreaker(threshold=1, cooldown=60)
    breaker.failure("x")
    assert breaker.probe_ok() and breaker.state is CircuitState.HALF_OPEN
    assert breaker.allows()
    breaker.start_trial()
    assert not breaker.allows()  # only one trial at a time
    assert breaker.success() and breaker.closed and breaker.allows()


def test_half_open_failure_opens_again() -> None:
    breaker = CircuitBreaker(threshold=3, cooldown=60)
    breaker.failure("x", trip=True)
    breaker.probe_ok()
    breaker.start_trial()
    assert breaker.failure("again") and breaker.state is CircuitState.OPEN


def test_open_breaker_turns_half_open_after_cooldown_without_probes() -> None:
    breaker = CircuitBreaker(threshold=1, cooldown=10)
    breaker.failure("x")
    assert not breaker.allows(now=breaker.opened_at + 9)
    assert breaker.allows(now=breaker.opened_at + 10) and breaker.state is CircuitState.HALF_OPEN


# -- latency estimates ---------------------------------------------------------------------------


def test_latency_estimates_decay_back_so_a_recovered_node_is_trusted_again() -> None:
    cluster = ModelStats(ttft=0.1, per_token=0.01)
    sick = ModelStats()
    sick.observe(ttft=5.0, per_token=0.5)
    sick.decay_toward(cluster, 0.5)  # news since the last decay: not moved
    assert sick.ttft == 5.0
    for _ in range(20):
        sick.decay_toward(cluster, decay_factor(5.0, 10.0))
    assert abs(sick.ttft - 0.1) < 0.01 and abs(sick.per_token - 0.01) < 0.001


def test_moving_average_follows_new_measurements() -> None:
    stats = ModelStats()
    stats.observe(ttft=1.0, per_token=0.1, tokens=10)
    assert stats.ttft == 1.0  # the first measurement replaces the prior
    for _ in range(30):
        stats.observe(ttft=0.2, per_token=0.02, tokens=20)
    assert abs(stats.ttft - 0.2) < 0.01 and abs(stats.tokens - 20) < 0.1


def test_split_timing_scales_both_estimates() -> None:
    guess = ModelStats(ttft=1.0, per_token=0.1)
    ttft, per_token = split_timing(4.0, 10, guess)  # predicted 2.0: twice as slow
    assert (ttft, per_token) == (2.0, 0.2)


# -- probes and the pool -------------------------------------------------------------------------


def test_probes_never_run_a_generation(loopback_servers: Any) -> None:
    a = toy("a")
    nodes = list(cluster_nodes(loopback_servers, a))

    async def main() -> None:
        async with AsyncPool(nodes, plugins=toy_plugins(), health_interval=0) as pool:
            for _ in range(3):
                await pool.probe()
            await pool.refresh()

    run(main())
    assert a.requests and all(path in ("/health", "/models", "/ps") for _, path in a.requests)


def test_a_node_that_goes_down_is_failed_over_and_used_again_after_it_comes_back(loopback_servers: Any) -> None:
    a, b = toy("a"), toy("b")
    nodes = list(cluster_nodes(loopback_servers, a, b))
    running_a = loopback_servers.running[0]
    recorder = Recorder()

    async def main() -> None:
        async with AsyncPool(nodes, plugins=toy_plugins(recorder), health_interval=0.1, policy="round_robin") as pool:
            await asyncio.to_thread(loopback_servers.stop, running_a)
            results = [await pool.chat("llama3.2", HI) for _ in range(4)]
            assert {r.route.node for r in results} == {"b"}  # type: ignore[union-attr]
            node_a = next(p for p in pool._nodes if p.id == "a")
            # Marked down by a failed request (which also trips the breaker) or by a probe.
            assert node_a.state is NodeState.DOWN and recorder.kinds("node.down")
            await asyncio.to_thread(loopback_servers.restart, running_a)
            ups = len(recorder.kinds("node.up"))
            await recorder.wait_kind("node.up", ups + 1)  # the next probe, one interval later
            assert node_a.state is NodeState.UP
            assert node_a.breaker.closed
            routes = [(await pool.chat("llama3.2", HI)).route for _ in range(4)]
            assert "a" in {r.node for r in routes if r is not None}, routes

    run(main())


def test_server_errors_open_the_circuit_and_a_probe_half_opens_it(loopback_servers: Any) -> None:
    a, b = toy("a"), toy("b")
    nodes = list(cluster_nodes(loopback_servers, a, b))
    a.inject(Fault.error(500, {"error": "boom"}, times=None))
    recorder = Recorder()

    async def main() -> None:
        async with AsyncPool(
            nodes, plugins=toy_plugins(recorder), health_interval=0, failure_threshold=2, policy="round_robin"
        ) as pool:
            for _ in range(6):
                result = await pool.chat("llama3.2", HI)
                assert result.route is not None and result.route.node == "b"
            node_a = next(p for p in pool._nodes if p.id == "a")
            assert node_a.breaker.state is CircuitState.OPEN
            assert node_a.state is NodeState.UP  # alive, just failing: not marked down
            assert len(recorder.kinds("circuit.opened")) == 1
            a.clear_faults()
            await pool.probe()
            assert node_a.breaker.state is CircuitState.HALF_OPEN
            served = {(await pool.chat("llama3.2", HI)).route.node for _ in range(4)}  # type: ignore[union-attr]
            assert "a" in served and node_a.breaker.closed
            assert recorder.kinds("circuit.closed")

    run(main())


def test_a_loading_node_is_not_dead_and_not_routed_to(loopback_servers: Any) -> None:
    a, b = toy("a"), toy("b")
    nodes = list(cluster_nodes(loopback_servers, a, b))
    recorder = Recorder()

    async def main() -> None:
        async with AsyncPool(nodes, plugins=toy_plugins(recorder), health_interval=0) as pool:
            a.loading = True
            await pool.probe()
            node_a = next(p for p in pool._nodes if p.id == "a")
            assert node_a.state is NodeState.LOADING and node_a.breaker.closed
            assert recorder.kinds("node.loading") and not recorder.kinds("node.down")
            served = {(await pool.chat("llama3.2", HI)).route.node for _ in range(6)}  # type: ignore[union-attr]
            assert served == {"b"}
            a.loading = False
            await pool.probe()
            assert node_a.state is NodeState.UP

    run(main())


def test_a_503_while_loading_fails_over_without_opening_the_circuit(loopback_servers: Any) -> None:
    a, b = toy("a"), toy("b")
    nodes = list(cluster_nodes(loopback_servers, a, b))
    a.inject(Fault.error(503, {"error": "loading model"}))

    async def main() -> None:
        async with AsyncPool(nodes, plugins=toy_plugins(), health_interval=0, policy="round_robin") as pool:
            results = [await pool.chat("llama3.2", HI) for _ in range(2)]
            assert all(r.route is not None and r.route.node == "b" for r in results)
            node_a = next(p for p in pool._nodes if p.id == "a")
            assert node_a.state is NodeState.LOADING and node_a.breaker.closed

    run(main())
