"""How `sollol serve` runs the gateway on uvicorn: fewer system calls per response.

uvicorn writes a response's head and each piece of its body with a separate `transport.write`,
and on an idle socket each write is its own `send` system call (and, on loopback, a wake-up of
the client per call). `CoalescingHttpToolsProtocol` is uvicorn's httptools protocol with a
transport that gathers every write made during one turn of the event loop and sends them
together at the end of that turn: a whole non-streamed answer leaves in one `send`, and stream
pieces that arrived from the node together leave together. Nothing waits for more data: a
piece goes out as soon as the gateway has nothing else to do in that turn, so streams still
flush as they arrive.
"""

from __future__ import annotations

import asyncio
from typing import Any


class CoalescingTransport:
    """An `asyncio.Transport` face whose writes within one loop turn become one write."""

    __slots__ = ("_buffer", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._buffer: list[bytes] = []

    def write(self, data: bytes) -> None:
        """Queue `data`; it leaves at the end of this loop turn."""
        if not data:
            return
        if not self._buffer:
            self._loop.call_soon(self.flush)
        self._buffer.append(data)

    def writelines(self, lines: Any) -> None:
        """Queue every piece."""
        for data in lines:
            self.write(data)

    def flush(self) -> None:
        """Send what was queued (a closed connection drops it, as a direct write would)."""
        buffer = self._buffer
        if not buffer:
            return
        self._buffer = []
        if self._transport.is_closing():
            return
        self._transport.write(buffer[0] if len(buffer) == 1 else b"".join(buffer))

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def close(self) -> None:
        """Send what was queued, then close."""
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:  # get_extra_info, pause_reading, set_protocol, abort, ...
        return getattr(self._transport, name)


def http_protocol() -> Any:
    """The `http=` setting for `uvicorn.Config`: the coalescing protocol, or "auto" without httptools."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # httptools not installed: uvicorn's h11 protocol as it is
        return "auto"

    class CoalescingHttpToolsProtocol(HttpToolsProtocol):
        """uvicorn's httptools protocol, writing each loop turn's output in one call."""

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self.transport = CoalescingTransport(transport, self.loop)  # type: ignore[assignment]

    return CoalescingHttpToolsProtocol
