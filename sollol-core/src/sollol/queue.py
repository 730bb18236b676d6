"""The bounded priority queue requests wait in while every node for their model is full.

No polling: a waiter sleeps on a future. When a node gives a slot back, the queue hands
that slot to the first waiter (highest priority, then oldest) that can use that node,
reserving it (`PoolNode.reserved`) so no newcomer takes it in between. A waiter whose
deadline passes gets `BusyError`; a waiter cancelled after it was handed a slot gives the
slot on to the next one.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import time
from collections.abc import Collection
from typing import TYPE_CHECKING

from sollol.errors import BusyError

if TYPE_CHECKING:
    from sollol.routing import PoolNode


class Waiter:
    """One queued request."""

    __slots__ = ("future", "ids", "model", "order", "since")

    def __init__(
        self, order: tuple[int, int], ids: Collection[str], model: str, future: asyncio.Future[PoolNode]
    ) -> None:
        self.order = order
        self.ids = ids
        self.model = model
        self.future = future
        self.since = time.monotonic()

    def __lt__(self, other: Waiter) -> bool:
        return self.order < other.order


class WaitQueue:
    """Waiters in priority order (higher `priority` first, then first come)."""

    def __init__(self, *, limit: int = 1024) -> None:
        self.limit = limit
        self._waiters: list[Waiter] = []
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._waiters)

    def depth(self, model: str | None = None) -> int:
        """Waiters in the queue (for one model, when given)."""
        if model is None:
            return len(self._waiters)
        return sum(1 for w in self._waiters if w.model == model)

    async def wait(self, ids: Collection[str], model: str, *, priority: int = 0, timeout: float) -> PoolNode:
        """Wait until one of the nodes `ids` hands this request a reserved slot.

        Raises `BusyError` when the queue is full or `timeout` passes first. The caller
        owns the reservation on the returned node (`reserved` was raised by one).
        """
        if len(self._waiters) >= self.limit:
            raise BusyError(model, 0.0)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[PoolNode] = loop.create_future()
        waiter = Waiter((-priority, next(self._seq)), ids, model, future)
        bisect.insort(self._waiters, waiter)
        started = time.monotonic()

        def expire() -> None:
            if not future.done():
                future.set_exception(BusyError(model, time.monotonic() - started))

        timer = loop.call_later(max(timeout, 0.0), expire)
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled() and future.exception() is None:
                self.give_back(future.result())
            raise
        finally:
            timer.cancel()
            self._remove(waiter)

    def _remove(self, waiter: Waiter) -> None:
        index = bisect.bisect_left(self._waiters, waiter)
        if index < len(self._waiters) and self._waiters[index] is waiter:
            del self._waiters[index]

    def give_back(self, pnode: PoolNode) -> None:
        """Undo a reservation that was not used, handing the slot on."""
        pnode.reserved -= 1
        self.wake(pnode)

    def wake(self, pnode: PoolNode) -> bool:
        """Hand a free slot of `pnode` to the first waiter that can use it. True if one took it."""
        if not self._waiters or pnode.full:
            return False
        node_id = pnode.id
        for waiter in self._waiters:
            if node_id in waiter.ids and not waiter.future.done():
                pnode.reserved += 1
                waiter.future.set_result(pnode)
                self._remove(waiter)
                return True
        return False
