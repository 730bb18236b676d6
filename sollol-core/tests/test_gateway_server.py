"""The coalescing transport `sollol serve` gives uvicorn: one write per loop turn, nothing lost."""

from __future__ import annotations

import asyncio
from typing import Any

from sollol.gateway.server import CoalescingTransport, http_protocol


class Recorder:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else None


def test_writes_in_one_turn_leave_together_and_in_order() -> None:
    async def run() -> list[bytes]:
        raw = Recorder()
        transport = CoalescingTransport(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
        transport.write(b"head")
        transport.write(b"")
        transport.write(b"body")
        assert raw.writes == []  # nothing yet: the turn is not over
        await asyncio.sleep(0)
        transport.write(b"next")
        await asyncio.sleep(0)
        assert transport.get_extra_info("peername") == ("127.0.0.1", 1)
        return raw.writes

    assert asyncio.run(run()) == [b"headbody", b"next"]


def test_close_sends_what_was_queued_first() -> None:
    async def run() -> Recorder:
        raw = Recorder()
        transport = CoalescingTransport(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
        transport.write(b"last words")
        transport.close()
        await asyncio.sleep(0)
        return raw

    raw = asyncio.run(run())
    assert raw.writes == [b"last words"]
    assert raw.closed


def test_nothing_is_written_to_a_closed_connection() -> None:
    async def run() -> Recorder:
        raw = Recorder()
        transport = CoalescingTransport(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
        transport.write(b"late")
        raw.closed = True
        await asyncio.sleep(0)
        return raw

    assert asyncio.run(run()).writes == []


def test_uvicorn_gets_a_protocol_class() -> None:
    protocol = http_protocol()
    assert protocol == "auto" or isinstance(protocol, type)
