"""Latency learned per node and model: time to first token, time per token, cold loads.

Estimates are exponentially weighted moving averages, and between observations they decay
toward the cluster-wide estimate for the model, so a node that was slow while it was in
trouble is trusted again after a while even if routing sent it nothing meanwhile.
Everything here is plain arithmetic on the pool's event loop: no locks, no I/O.
"""

from __future__ import annotations

import math

#: Weight of a new observation in the moving averages.
ALPHA = 0.3
#: Time to first token assumed before anything was measured (seconds).
DEFAULT_TTFT = 0.25
#: Time per generated token assumed before anything was measured (seconds).
DEFAULT_PER_TOKEN = 0.02
#: Tokens an answer is assumed to have before any answer was seen.
DEFAULT_TOKENS = 64.0


def _blend(old: float, new: float, alpha: float = ALPHA) -> float:
    return old + alpha * (new - old)


class ModelStats:
    """Moving averages for one model, on one node or across the cluster."""

    __slots__ = ("mark", "per_token", "samples", "tokens", "ttft")

    def __init__(
        self, ttft: float = DEFAULT_TTFT, per_token: float = DEFAULT_PER_TOKEN, tokens: float = DEFAULT_TOKENS
    ) -> None:
        self.ttft = ttft
        self.per_token = per_token
        self.tokens = tokens
        self.samples = 0
        self.mark = 0  # `samples` when the estimate last decayed

    def __repr__(self) -> str:
        return f"<ModelStats ttft={self.ttft:.3g}s per_token={self.per_token:.3g}s n={self.samples}>"

    def observe(self, *, ttft: float | None = None, per_token: float | None = None, tokens: int | None = None) -> None:
        """Fold one finished request into the averages (the first one replaces the prior)."""
        self.fold(ttft, per_token, tokens)

    def fold(self, ttft: float | None, per_token: float | None, tokens: int | None) -> None:
        """`observe` with positional arguments (the pool calls it twice for every request served)."""
        first = self.samples == 0
        if ttft is not None and ttft >= 0:
            self.ttft = ttft if first else self.ttft + ALPHA * (ttft - self.ttft)
        if per_token is not None and per_token >= 0:
            self.per_token = per_token if first else self.per_token + ALPHA * (per_token - self.per_token)
        if tokens is not None and tokens > 0:
            self.tokens = float(tokens) if first else self.tokens + ALPHA * (tokens - self.tokens)
        self.samples += 1

    def service(self, tokens: float) -> float:
        """Expected seconds to answer with `tokens` tokens once the request runs."""
        return self.ttft + self.per_token * tokens

    def decay_toward(self, prior: ModelStats, factor: float) -> bool:
        """Move `factor` (0..1) of the way back to `prior`, unless news came since the last call.

        Returns True when it moved.
        """
        if self.samples != self.mark:
            self.mark = self.samples
            return False
        self.ttft += factor * (prior.ttft - self.ttft)
        self.per_token += factor * (prior.per_token - self.per_token)
        return True


def decay_factor(elapsed: float, half_life: float) -> float:
    """How far an estimate returns to the prior after `elapsed` seconds without news."""
    if half_life <= 0:
        return 1.0
    return 1.0 - math.pow(0.5, max(elapsed, 0.0) / half_life)


def split_timing(total: float, tokens: int | None, guess: ModelStats) -> tuple[float, float | None]:
    """(ttft, per_token) from a non-streamed answer's wall time and token count.

    A non-streamed answer shows only its total, so both current estimates are scaled by
    how far the total was from what they predicted.
    """
    if not tokens or tokens <= 0:
        return total, None
    predicted = guess.service(tokens)
    if predicted <= 0:
        return 0.0, total / tokens
    scale = total / predicted
    return guess.ttft * scale, guess.per_token * scale


class LoadCost:
    """What loading a model that is not resident costs on one node (seconds), learned."""

    __slots__ = ("samples", "seconds")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.samples = 0

    def observe(self, seconds: float) -> None:
        """Fold one measured load time in."""
        if seconds <= 0:
            return
        self.seconds = seconds if self.samples == 0 else _blend(self.seconds, seconds)
        self.samples += 1
