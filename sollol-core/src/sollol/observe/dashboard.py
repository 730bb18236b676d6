"""The dashboard page and its live feed (server-sent events of the status document).

The page is one self-contained HTML file (inline CSS and JS, nothing fetched from elsewhere:
its Content-Security-Policy forbids it). It reads `api/sollol/events`, relative to itself,
so it works behind a path prefix too.
"""

from __future__ import annotations

import asyncio
from functools import lru_cache
from importlib.resources import files
from typing import Any
from urllib.parse import parse_qs

from sollol.gateway.wire import SSE_TYPE, Receive, Scope, Send, dumps, end_stream, send_body, send_piece, start_stream
from sollol.observe.status import StatusFeed, status_document

HTML_TYPE = b"text/html; charset=utf-8"
#: Only this origin, and no fetch, frame or script from anywhere else.
CSP = (
    b"default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    b"connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS = [
    (b"content-security-policy", CSP),
    (b"cache-control", b"no-store"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]
DEFAULT_INTERVAL = 1.0


@lru_cache(maxsize=1)
def page() -> bytes:
    """The dashboard's HTML."""
    return files("sollol.observe").joinpath("dashboard.html").read_bytes()


async def send_page(send: Send) -> None:
    """Answer with the page."""
    await send_body(send, 200, page(), HTML_TYPE, PAGE_HEADERS)


def interval_of(scope: Scope, default: float = DEFAULT_INTERVAL) -> float:
    """The `interval` query parameter in seconds, kept within 0.1 to 30."""
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    try:
        value = float(query.get("interval", [default])[0])
    except ValueError:
        value = default
    return min(max(value, 0.1), 30.0)


async def stream_status(scope: Scope, receive: Receive, send: Send, pool: Any, feed: StatusFeed) -> None:
    """Send the status document now, every `interval` seconds, and at once on node changes."""
    interval = interval_of(scope)
    await start_stream(send, SSE_TYPE, PAGE_HEADERS[1:2])
    gone = asyncio.ensure_future(_disconnect(receive))
    try:
        await send_piece(send, b"retry: 1000\n\n")
        while not gone.done() and not feed.closed:
            document = status_document(pool, feed)
            await send_piece(send, b"event: status\ndata: " + dumps(document) + b"\n\n")
            await asyncio.wait((gone, feed.changed()), timeout=interval, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    await end_stream(send)


async def _disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
