"""A success of a request sent before a node's last failure says nothing about the node now."""

from __future__ import annotations

import time

from sollol.health import CircuitBreaker, CircuitState


def test_a_stale_success_does_not_close_an_open_breaker() -> None:
    breaker = CircuitBreaker(threshold=1)
    sent = time.monotonic()
    assert breaker.failure("CUDA error")
    assert not breaker.success(sent - 1.0)
    assert breaker.state is CircuitState.OPEN
    assert breaker.consecutive == 1


def test_a_success_sent_after_the_failure_closes_it() -> None:
    breaker = CircuitBreaker(threshold=1)
    breaker.failure("CUDA error")
    breaker.probe_ok()
    assert breaker.success(time.monotonic())
    assert breaker.state is CircuitState.CLOSED
    assert breaker.consecutive == 0


def test_without_a_send_time_a_success_counts_as_before() -> None:
    breaker = CircuitBreaker(threshold=3)
    breaker.failure("x")
    assert not breaker.success()
    assert breaker.consecutive == 0
