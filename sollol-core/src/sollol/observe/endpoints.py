"""Observability on the gateway: `/metrics`, `/dashboard`, `/api/sollol/nodes`, `/api/sollol/events`.

`mount(gateway)` subscribes the observers (metrics, the dashboard's feed, the event log)
through the pool's `sollol_activity_batch` hook, exactly as a third-party plugin would, and
adds the four routes to the gateway's table; they sit behind the gateway's API keys like every
other route.
`Observability.close()` unsubscribes.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from sollol.gateway.wire import TEXT_TYPE, Receive, Scope, Send, send_body, send_json
from sollol.observe.dashboard import send_page, stream_status
from sollol.observe.logs import EventLog
from sollol.observe.status import StatusFeed, status_document

log = logging.getLogger(__name__)

Handler = Callable[[Scope, Receive, Send, Any], Awaitable[None]]

METRICS_PATH = "/metrics"
DASHBOARD_PATH = "/dashboard"
NODES_PATH = "/api/sollol/nodes"
EVENTS_PATH = "/api/sollol/events"
PATHS = (METRICS_PATH, DASHBOARD_PATH, NODES_PATH, EVENTS_PATH)


class Observability:
    """The observers of one pool and the handlers that show what they saw."""

    def __init__(self, pool: Any, *, metrics: bool = True, event_log: str | int | None = None) -> None:
        self.pool = pool
        self.feed = StatusFeed()
        self.metrics: Any = None
        if metrics:
            try:
                from sollol.observe.metrics import PrometheusObserver
            except ImportError:  # prometheus-client is in the `gateway` extra
                log.warning("prometheus-client is not installed: /metrics is off (pip install 'sollol-core[gateway]')")
            else:
                self.metrics = PrometheusObserver(pool)
        self.event_log = EventLog(event_log)
        self.observers: list[object] = [
            self.feed,
            *([self.metrics] if self.metrics is not None else []),
            self.event_log,
        ]
        self._plugins = getattr(pool, "plugins", None)  # a stand-in pool may have none
        if self._plugins is not None:
            for observer in self.observers:
                self._plugins.add_observer(observer)

    def close(self) -> None:
        """Unsubscribe the observers and end the event streams."""
        self.feed.close()
        if self._plugins is not None:
            for observer in self.observers:
                self._plugins.remove_observer(observer)
            self._plugins = None

    async def nodes(self, scope: Scope, receive: Receive, send: Send, body: Any) -> None:
        """GET /api/sollol/nodes."""
        await self.pool.start()
        await send_json(send, status_document(self.pool, self.feed), headers=[(b"cache-control", b"no-store")])

    async def events(self, scope: Scope, receive: Receive, send: Send, body: Any) -> None:
        """GET /api/sollol/events: the status document as server-sent events."""
        await self.pool.start()
        await stream_status(scope, receive, send, self.pool, self.feed)

    async def dashboard(self, scope: Scope, receive: Receive, send: Send, body: Any) -> None:
        """GET /dashboard."""
        await send_page(send)

    async def prometheus(self, scope: Scope, receive: Receive, send: Send, body: Any) -> None:
        """GET /metrics."""
        if self.metrics is None:
            message = b"metrics are off: install prometheus-client (pip install 'sollol-core[gateway]')\n"
            await send_body(send, 501, message, TEXT_TYPE)
            return
        from sollol.observe.metrics import CONTENT_TYPE_LATEST

        await self.pool.start()
        await send_body(send, 200, self.metrics.render(), CONTENT_TYPE_LATEST.encode())


def mount(gateway: Any, *, metrics: bool = True, event_log: str | int | None = None) -> Observability:
    """Subscribe the observers to `gateway.pool` and add the observability routes to `gateway`."""
    observe = Observability(gateway.pool, metrics=metrics, event_log=event_log)
    # The gateway labels each request with its client protocol (`ChatRequest.protocol` ...).
    gateway._add(METRICS_PATH, False, {"GET": observe.prometheus}, reads_body=False)
    gateway._add(DASHBOARD_PATH, False, {"GET": observe.dashboard}, reads_body=False)
    gateway._add(NODES_PATH, False, {"GET": observe.nodes}, reads_body=False)
    gateway._add(EVENTS_PATH, False, {"GET": observe.events}, reads_body=False)
    return observe
