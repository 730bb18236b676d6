"""`Http1Transport`: the gateway's lean keep-alive HTTP client, against raw loopback servers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from sollol.gateway.http1 import Http1Transport

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head + (await reader.readexactly(length) if length else b"")


async def requests_of(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    """Each request on a kept-alive connection, until the client closes it."""
    while True:
        try:
            yield await read_request(reader)
        except asyncio.IncompleteReadError:
            return


def run(handler: Handler, client_code: Callable[[httpx.AsyncClient, str], Awaitable[object]]) -> object:
    async def main() -> object:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        transport = Http1Transport()
        try:
            async with httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(2.0)) as client:
                return await client_code(client, f"http://127.0.0.1:{port}")
        finally:
            server.close()

    return asyncio.run(main())


def test_content_length_and_keep_alive() -> None:
    connections = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        async for request in requests_of(reader):
            body = b'{"echo": %d}' % len(request)
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            await writer.drain()

    async def client(http: httpx.AsyncClient, base: str) -> list[int]:
        answers = [await http.post(base + "/api/chat?x=1", json={"a": 1}) for _ in range(3)]
        return [a.status_code for a in answers] + [a.json()["echo"] > 0 for a in answers].count(True) * [1]

    assert run(handler, client) == [200, 200, 200, 1, 1, 1]
    assert len(connections) == 1  # one connection served every request


def test_chunked_stream_arrives_piece_by_piece() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for piece in (b'{"n":1}\n', b'{"n":2}\n'):
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
            await asyncio.sleep(0.05)  # apart in time: each comes as it arrives (together, they would come joined)
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async def client(http: httpx.AsyncClient, base: str) -> list[bytes]:
        async with http.stream("POST", base + "/api/chat", json={}) as response:
            return [piece async for piece in response.aiter_raw()]

    assert run(handler, client) == [b'{"n":1}\n', b'{"n":2}\n']


def test_body_until_close() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it")
        await writer.drain()
        writer.close()

    async def client(http: httpx.AsyncClient, base: str) -> str:
        return (await http.get(base + "/")).text

    assert run(handler, client) == "all of it"


def test_a_stale_kept_alive_connection_is_retried_once() -> None:
    served = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        served.append(1)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        if len(served) == 1:
            await reader.read(1)  # the second request: drop it without answering
            writer.close()

    async def client(http: httpx.AsyncClient, base: str) -> list[str]:
        first = (await http.get(base + "/")).text
        second = (await http.get(base + "/")).text
        return [first, second]

    assert run(handler, client) == ["ok", "ok"]


def test_failures_are_httpx_errors() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(5)

    async def slow(http: httpx.AsyncClient, base: str) -> object:
        return await http.get(base + "/", timeout=0.2)

    with pytest.raises(httpx.ReadTimeout):
        run(silent, slow)

    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort")
        await writer.drain()
        writer.close()

    async def whole(http: httpx.AsyncClient, base: str) -> object:
        return (await http.get(base + "/")).text

    with pytest.raises(httpx.RemoteProtocolError):
        run(cut, whole)


def test_refused_connection() -> None:
    async def main() -> None:
        async with httpx.AsyncClient(transport=Http1Transport()) as http:
            await http.get("http://127.0.0.1:9/")

    with pytest.raises(httpx.ConnectError):
        asyncio.run(main())


def test_lean_transport_send_and_stream() -> None:
    from sollol.errors import ConnectError, NodeTimeoutError
    from sollol.gateway.http1 import LeanTransport
    from sollol.http import HttpRequest
    from sollol.node import Node
    from sollol.transport import Timeouts

    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async for request in requests_of(reader):
            seen.append(request)
            if b"/slow" in request:
                await asyncio.sleep(5)
            if b"/stream" in request:
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
            else:
                writer.write(
                    b'HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n{"error":"no!"}'
                )
            await writer.drain()

    async def main() -> tuple[object, ...]:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        node = Node(host="127.0.0.1", port=server.sockets[0].getsockname()[1], api_key="node-secret")
        transport = LeanTransport(timeouts=Timeouts(read=0.3))
        try:
            missing = await transport.send(
                node, HttpRequest.post("/api/show", json={"model": "x"}, params=(("a", "b c"),))
            )
            async with transport.stream(node, HttpRequest.post("/stream", json={}, stream=True)) as response:
                pieces = [p async for p in response.pieces()]
            with pytest.raises(NodeTimeoutError):
                await transport.send(node, HttpRequest.get("/slow"))
            refused = Node(host="127.0.0.1", port=9)
            with pytest.raises(ConnectError):
                await transport.send(refused, HttpRequest.get("/"))
            return missing.status, missing.json(), pieces
        finally:
            await transport.aclose()
            server.close()

    status, body, pieces = asyncio.run(main())
    # Both chunks arrived in one write: they come as one piece (one write on to the client).
    assert (status, body, pieces) == (404, {"error": "no!"}, [b"abcde"])
    first = seen[0]
    assert first.startswith(b"POST /api/show?a=b+c HTTP/1.1\r\n")
    assert b"authorization: Bearer node-secret" in first
    assert first.endswith(b'{"model":"x"}')


def test_whole_chunks_are_taken_joined_and_partial_ones_wait() -> None:
    """Whole chunks at the front of the buffer come out joined; a chunk not whole yet stays;
    the last chunk ends the body once its trailers end; a chunk without its CRLF is refused."""
    from sollol.gateway.http1 import _take_chunks

    buffer = bytearray(b"3\r\nabc\r\n2;ext=1\r\nde\r\n4\r\nfg")
    assert _take_chunks(buffer) == (b"abcde", False)  # abc and de whole, fg not yet
    assert bytes(buffer) == b"4\r\nfg"
    assert _take_chunks(buffer) == (b"", False)
    buffer += b"hi\r\n0\r\n"
    assert _take_chunks(buffer) == (b"fghi", False)  # the last chunk's line, its end not yet
    assert bytes(buffer) == b"0\r\n"
    buffer += b"\r\n"
    assert _take_chunks(buffer) == (b"", True)
    assert buffer == b""
    trailers = bytearray(b"1\r\nz\r\n0\r\nx-check: 1\r\n")
    assert _take_chunks(trailers) == (b"z", False)  # trailers not ended yet
    trailers += b"\r\nHTTP/1.1 200"
    assert _take_chunks(trailers) == (b"", True)
    assert trailers == b"HTTP/1.1 200"  # what follows the answer stays
    for bad in (b"3\r\nabcXY1\r\nz\r\n", b"zz\r\nabc\r\n", b"-3\r\nabc\r\n"):
        with pytest.raises(ValueError):
            _take_chunks(bytearray(bad))


def test_one_deadline_per_exchange_bounds_each_gap_not_the_consumer() -> None:
    """The read timeout bounds each wait for the node; time the consumer spends between pieces
    does not count, and a node that stalls mid-stream times out (its connection is closed)."""
    from sollol.errors import NodeTimeoutError
    from sollol.gateway.http1 import LeanTransport, RawJson
    from sollol.http import HttpRequest
    from sollol.node import Node
    from sollol.transport import Timeouts

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async for request in requests_of(reader):
            if b"/stall" in request:
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
                await writer.drain()
                await asyncio.sleep(5)
                return
            if b"/gaps" in request:  # every gap shorter than the timeout, the whole longer
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                for piece in (b"a", b"b", b"c", b"d"):
                    await asyncio.sleep(0.1)
                    writer.write(b"1\r\n" + piece + b"\r\n")
                    await writer.drain()
                writer.write(b"0\r\n\r\n")
            else:
                writer.write(b'HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n{"done": 1}\n')
            await writer.drain()

    async def main() -> tuple[object, ...]:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        node = Node(host="127.0.0.1", port=server.sockets[0].getsockname()[1])
        transport = LeanTransport(timeouts=Timeouts(read=0.25))
        try:
            async with transport.stream(node, HttpRequest.post("/gaps", json={}, stream=True)) as response:
                gaps = []
                async for piece in response.pieces():
                    gaps.append(piece)
                    await asyncio.sleep(0.35)  # a slow consumer: longer than the timeout
            with pytest.raises(NodeTimeoutError):
                async with transport.stream(node, HttpRequest.post("/stall", json={}, stream=True)) as response:
                    _ = [p async for p in response.pieces()]
            answer = await transport.send(node, HttpRequest.get("/json"))
            parsed = answer.json()
            await asyncio.sleep(0.4)  # no timer left behind fires on the kept connection
            again = await transport.send(node, HttpRequest.get("/json"))
            return gaps, parsed, type(parsed) is RawJson and parsed.body, again.status
        finally:
            await transport.aclose()
            server.close()

    gaps, parsed, body, again = asyncio.run(main())
    assert b"".join(gaps) == b"abcd"
    assert parsed == {"done": 1}
    assert body == b'{"done": 1}\n'
    assert again == 200


def test_pieces_offered_as_they_arrive_skip_the_reader_unless_refused() -> None:
    """With `take`, pieces that arrive while the reader waits go to `take`; what it refuses, and
    the end of the body, come from the iterator; the connection is kept for the next request."""
    from sollol.gateway.http1 import LeanTransport
    from sollol.http import HttpRequest
    from sollol.node import Node

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async for _ in requests_of(reader):
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for piece in (b"a\n", b"b\n", b"c\n", b"d\n"):
                await asyncio.sleep(0.03)
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                await writer.drain()
            await asyncio.sleep(0.03)
            writer.write(b"0\r\n\r\n")
            await writer.drain()

    async def main() -> tuple[list[bytes], list[bytes], list[bytes], int]:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        node = Node(host="127.0.0.1", port=server.sockets[0].getsockname()[1])
        transport = LeanTransport()
        taken: list[bytes] = []

        def take(data: bytes) -> bool:
            if data == b"c\n":
                return False
            taken.append(data)
            return True

        try:
            async with transport.stream(node, HttpRequest.post("/s", json={}, stream=True)) as response:
                read = [p async for p in response.pieces(take)]
            async with transport.stream(node, HttpRequest.post("/s", json={}, stream=True)) as response:
                again = [p async for p in response.pieces()]
            return taken, read, again, len(transport._pool._idle[("http", "127.0.0.1", node.port)])
        finally:
            await transport.aclose()
            server.close()

    taken, read, again, idle = asyncio.run(main())
    assert (taken, read) == ([b"a\n", b"b\n", b"d\n"], [b"c\n"])
    assert b"".join(again) == b"a\nb\nc\nd\n"  # without `take`, everything from the iterator
    assert idle == 1  # one connection served both, and is kept


def test_after_finish_the_body_end_is_awaited_in_the_background() -> None:
    """`finish()`: the pieces end after the last one given; the connection goes back to the pool
    when the body's end arrives later, and is closed when more data comes instead."""
    from sollol.gateway.http1 import LeanTransport
    from sollol.http import HttpRequest
    from sollol.node import Node

    connections: list[asyncio.StreamWriter] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        async for request in requests_of(reader):
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nz\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.1)
            writer.write(b"2\r\nx\n\r\n" if b"/more" in request else b"")
            writer.write(b"0\r\n\r\n")
            await writer.drain()

    async def main() -> tuple[list[object], ...]:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        node = Node(host="127.0.0.1", port=server.sockets[0].getsockname()[1])
        transport = LeanTransport()
        origin = ("http", "127.0.0.1", node.port)
        timeline: list[object] = []
        try:
            loop = asyncio.get_running_loop()
            for path in ("/end", "/end", "/more", "/end"):
                began = loop.time()
                async with transport.stream(node, HttpRequest.post(path, json={}, stream=True)) as response:
                    async for piece in response.pieces():
                        timeline.append(piece)
                        response.finish()
                timeline.append(loop.time() - began < 0.09)  # not held up by the late end
                await asyncio.sleep(0.2)  # the end (or more data) arrives meanwhile
                timeline.append(len(transport._pool._idle.get(origin, [])))
            return timeline, [len(connections)]
        finally:
            await transport.aclose()
            server.close()

    timeline, opened = asyncio.run(main())
    # Each answer's one piece, at once; kept after /end, closed after /more (more data than the end).
    assert timeline == [b"z\n", True, 1, b"z\n", True, 1, b"z\n", True, 0, b"z\n", True, 1]
    assert opened == [2]  # one connection until /more, a new one after it


def test_chunks_split_at_once_agree_with_the_walk_on_any_cut() -> None:
    """The one-split path and the chunk-by-chunk walk take the same from any buffer: bodies cut
    at every possible point, with data that holds CRLFs, extensions and trailers."""
    import random

    from sollol.gateway.http1 import _split_chunks, _take_chunks, _walk_chunks

    rng = random.Random(7)
    for case in range(300):
        pieces = [bytes(rng.choice(b'ab{}":\r\n') for _ in range(rng.randint(1, 12))) for _ in range(rng.randint(0, 6))]
        ext = b";x=1" if case % 7 == 0 else b""
        trailers = b"x-t: 1\r\n" if case % 11 == 0 else b""
        body = b"".join(b"%x%s\r\n%s\r\n" % (len(p), ext, p) for p in pieces) + b"0\r\n" + trailers + b"\r\n"
        cut = rng.randint(0, len(body))
        split, walk = bytearray(body[:cut]), bytearray(body[:cut])
        fast = _split_chunks(split)
        slow = _walk_chunks(walk)
        if fast is not None:
            assert (fast, bytes(split)) == (slow, bytes(walk)), (body, cut)
        # Fed in two parts through `_take_chunks`, the whole body comes out, and the end is seen.
        buffer, got, ended = bytearray(body[:cut]), b"", False
        data, ended = _take_chunks(buffer)
        got += data
        buffer += body[cut:]
        while not ended:
            data, ended = _take_chunks(buffer)
            got += data
            assert data or ended, (body, cut)
        assert (got, buffer) == (b"".join(pieces), bytearray()), (body, cut)
