"""What the gateway's observers share: the client protocol of the request, and how much they defer.

The gateway's routes set `PROTOCOL` around each request; the pool emits its events in the
same task, so an observer reads the protocol there. Outside the gateway it is "python".
"""

from __future__ import annotations

from contextvars import ContextVar

PROTOCOL: ContextVar[str] = ContextVar("sollol_protocol", default="python")

#: Finished or failed requests an observer holds before it folds them into its counts (a read
#: folds them anyway). Small on purpose: folding a few dozen records while they are still in the
#: CPU's caches costs less than the append alone saves; holding thousands of them (each an event
#: with its dict) cost the gateway about 20 us per request in `benchmarks/observe_overhead.py`.
PENDING_LIMIT = 32
