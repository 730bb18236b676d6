"""What the gateway's observers share: the client protocol of the request, and how much they defer.

The gateway's routes set `PROTOCOL` around each request; the pool emits its events in the
same task, so an observer reads the protocol there. Outside the gateway it is "python".
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

PROTOCOL: ContextVar[str] = ContextVar("sollol_protocol", default="python")

#: Finished or failed requests an observer holds before it folds them into its counts (a read
#: folds them anyway). Small on purpose: folding a few dozen records while they are still in the
#: CPU's caches costs less than the append alone saves; holding thousands of them (each an event
#: with its dict) cost the gateway about 20 us per request in `benchmarks/observe_overhead.py`.
PENDING_LIMIT = 32


class Backlog:
    """Finished and failed requests, `(event, protocol)`, that its observers have not counted yet.

    Observers that count requests share one (the gateway's `Fanout` gives the feed and the
    metrics the same): a request costs one append, and every `PENDING_LIMIT` records, or
    whenever one of them is read, one `fold` hands the batch to each observer's counting.
    """

    __slots__ = ("counters", "records")

    def __init__(self, *counters: Callable[[list[tuple[Any, str]]], None]) -> None:
        self.records: list[tuple[Any, str]] = []
        self.counters = list(counters)

    def add(self, record: tuple[Any, str]) -> None:
        """One record; folds them all once `PENDING_LIMIT` are held."""
        records = self.records
        records.append(record)
        if len(records) >= PENDING_LIMIT:
            self.fold()

    def fold(self) -> None:
        """Hand every held record to each counter, then forget them."""
        records = self.records
        if records:
            batch = records.copy()
            records.clear()
            for count in self.counters:
                count(batch)
