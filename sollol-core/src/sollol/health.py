"""A circuit breaker per node: closed (used), open (skipped), half-open (one trial request).

Passive: failed requests open it (a broken connection at once, server errors after
`threshold` in a row). Active probes of the backend's cheap liveness request (never a
generation) move an open breaker to half-open, so a node that comes back gets a trial
request within one probe interval; a success there closes it. Without probes an open
breaker turns half-open by itself after `cooldown` seconds.
"""

from __future__ import annotations

import enum
import time


class CircuitState(str, enum.Enum):
    """Where a breaker is."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """One node's breaker. Mutated only on the pool's event loop."""

    __slots__ = ("consecutive", "cooldown", "failed_at", "opened_at", "reason", "state", "threshold", "trial")

    def __init__(self, *, threshold: int = 3, cooldown: float = 5.0) -> None:
        self.threshold = max(1, threshold)
        self.cooldown = cooldown
        self.state = CircuitState.CLOSED
        self.consecutive = 0
        self.opened_at = 0.0
        self.failed_at = 0.0  # time.monotonic() of the last failure
        self.trial = False  # a half-open trial request is out
        self.reason: str | None = None

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.state.value} failures={self.consecutive}>"

    @property
    def closed(self) -> bool:
        """True when requests flow normally."""
        return self.state is CircuitState.CLOSED

    def allows(self, now: float | None = None) -> bool:
        """Whether a request may go to the node now (a half-open breaker lets one through)."""
        if self.state is CircuitState.CLOSED:
            return True
        if self.state is CircuitState.OPEN:
            if (now if now is not None else time.monotonic()) - self.opened_at < self.cooldown:
                return False
            self.state = CircuitState.HALF_OPEN
            self.trial = False
        return not self.trial

    def start_trial(self) -> None:
        """Note that the one half-open trial request was sent."""
        if self.state is CircuitState.HALF_OPEN:
            self.trial = True

    def success(self, sent: float | None = None) -> bool:
        """A request succeeded. Returns True when this closed the breaker.

        `sent` (time.monotonic()): when the request was sent; a request sent before the last
        failure says nothing about the node now (it was admitted while the node was still
        well), so it neither resets the failure count nor closes the breaker.
        """
        if sent is not None and sent < self.failed_at:
            return False
        self.consecutive = 0
        if self.state is CircuitState.CLOSED:
            return False
        self.state = CircuitState.CLOSED
        self.trial = False
        self.reason = None
        return True

    def failure(self, reason: str, *, trip: bool = False) -> bool:
        """A request failed. `trip` opens at once. Returns True when this opened the breaker."""
        self.consecutive += 1
        self.reason = reason
        self.failed_at = time.monotonic()
        if self.state is CircuitState.OPEN:
            self.opened_at = time.monotonic()
            return False
        if trip or self.state is CircuitState.HALF_OPEN or self.consecutive >= self.threshold:
            self.state = CircuitState.OPEN
            self.opened_at = time.monotonic()
            self.trial = False
            return True
        return False

    def probe_ok(self) -> bool:
        """The liveness probe answered: an open breaker goes half-open. True when it moved."""
        if self.state is CircuitState.OPEN:
            self.state = CircuitState.HALF_OPEN
            self.trial = False
            return True
        return False

    def reset(self) -> bool:
        """Close the breaker (the node came back from down). True when it was not closed."""
        was_open = self.state is not CircuitState.CLOSED
        self.state = CircuitState.CLOSED
        self.consecutive = 0
        self.trial = False
        self.reason = None
        return was_open
