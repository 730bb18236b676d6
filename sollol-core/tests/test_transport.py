"""The transport: stale kept-alive connections, network failures as SOLLOL errors."""

from __future__ import annotations

import asyncio

import pytest

from sollol.errors import ConnectError
from sollol.http import HttpRequest
from sollol.node import Node
from sollol.transport import Transport

RESPONSE = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\nConnection: keep-alive\r\n\r\n{"ok":true}'


async def closes_after_each_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Like a server whose idle timeout fires as the next request arrives: it answers the
    first request on a connection, promising keep-alive, and hangs up on the second unanswered."""
    await reader.readuntil(b"\r\n\r\n")
    writer.write(RESPONSE)
    await writer.drain()
    try:
        await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
        pass
    writer.close()


async def test_a_stale_kept_alive_connection_is_retried_once() -> None:
    server = await asyncio.start_server(closes_after_each_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    node = Node(host="127.0.0.1", port=port)
    transport = Transport()
    try:
        for _ in range(3):
            response = await transport.send(node, HttpRequest.get("/"))
            assert response.json() == {"ok": True}
        async with transport.stream(node, HttpRequest.get("/", stream=True)) as streamed:
            assert streamed.status == 200
    finally:
        await transport.aclose()
        server.close()


async def test_nothing_listening_is_a_connect_error() -> None:
    transport = Transport()
    try:
        with pytest.raises(ConnectError, match="GET /"):
            await transport.send(Node(host="127.0.0.1", port=9), HttpRequest.get("/"))
        probe = await transport.probe(Node(host="127.0.0.1", port=9), HttpRequest.get("/"))
        assert probe.status == 0 and probe.error
    finally:
        await transport.aclose()
