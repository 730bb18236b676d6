"""`sollol.gateway.fastserver`: the gateway on its own HTTP/1.1 server, over real loopback sockets."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import sollol.transport
from sollol.gateway import Gateway
from sollol.gateway.fastserver import FastServer
from sollol.gateway.http1 import LeanTransport
from sollol.pool import AsyncPool
from sollol.testing.emulator import EmulatedModel, EmulatorConfig
from sollol.testing.servers import LoopbackServers

OllamaEmulator = pytest.importorskip("sollol_ollama.emulator").OllamaEmulator

SLOW_DELAY = 0.5  # seconds between the slow node's tokens: a whole answer takes several seconds


class Served:
    """The gateway on a FastServer in a background event loop."""

    def __init__(self, nodes: list[dict[str, Any]], max_body: int = 4096) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self.pool: AsyncPool = self.call(self._pool(nodes))
        self.gateway = Gateway(self.pool, max_body=max_body)
        self.server = FastServer(self.gateway, max_body=max_body)
        self.call(self._start())

    async def _pool(self, nodes: list[dict[str, Any]]) -> AsyncPool:
        previous = sollol.transport.TRANSPORT_CLASS
        sollol.transport.TRANSPORT_CLASS = LeanTransport
        try:
            pool = AsyncPool(nodes)
            await pool.start()
        finally:
            sollol.transport.TRANSPORT_CLASS = previous
        return pool

    async def _start(self) -> None:
        await self.server.start(self.sock)

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def in_flight(self) -> int:
        async def count() -> int:
            return sum(int(n.get("in_flight") or 0) for n in self.pool.nodes())

        return int(self.call(count()))

    def close(self) -> None:
        async def stop() -> None:
            await self.server.stop(grace=1)
            await self.gateway.aclose()

        self.call(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    with LoopbackServers() as servers:
        fast = servers.start(
            OllamaEmulator(EmulatorConfig(models=[EmulatedModel(name="llama3.2:latest")], name="fast")),
            host="127.0.0.1",
        )
        slow = servers.start(
            OllamaEmulator(
                EmulatorConfig(models=[EmulatedModel(name="slow:latest")], name="slow", token_delay=SLOW_DELAY)
            ),
            host="127.0.0.2",
        )
        app = Served(
            [
                {"url": fast.url, "backend": "ollama", "name": "fast"},
                {"url": slow.url, "backend": "ollama", "name": "slow"},
            ]
        )
        try:
            yield app
        finally:
            app.close()


def connect(served: Served) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", served.port), timeout=5)
    return sock


def read_response(reader: Any) -> tuple[int, dict[str, str], bytes]:
    """One response from a buffered socket file (Content-Length or chunked)."""
    status_line = reader.readline()
    assert status_line.startswith(b"HTTP/1.1 "), status_line
    status = int(status_line.split()[1])
    headers: dict[str, str] = {}
    while True:
        line = reader.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        return status, headers, reader.read(int(headers["content-length"]))
    body = b""
    while True:
        size = int(reader.readline().strip(), 16)
        if size == 0:
            reader.readline()
            return status, headers, body
        body += reader.read(size)
        reader.readline()


def post(path: str, payload: Any, extra: str = "") -> bytes:
    body = json.dumps(payload).encode()
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return (head + extra + "\r\n").encode() + body


def test_keep_alive_reuses_one_connection_and_pipelined_answers_come_in_order(served: Served) -> None:
    chat = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "stream": False}
    with connect(served) as sock, sock.makefile("rb") as reader:
        for _ in range(3):
            sock.sendall(post("/api/chat", chat))
            status, headers, body = read_response(reader)
            assert status == 200 and headers["content-type"].startswith("application/json")
            assert json.loads(body)["done"] is True
        # pipelined: three requests in one write, three answers in order on the same connection
        sock.sendall(
            b"GET /api/version HTTP/1.1\r\nHost: x\r\n\r\n" + post("/api/chat", chat) + b"GET / HTTP/1.1\r\n\r\n"
        )
        assert json.loads(read_response(reader)[2]) == {"version": "0.12.6"}
        assert json.loads(read_response(reader)[2])["message"]["role"] == "assistant"
        assert read_response(reader)[2] == b"Ollama is running"


def test_chunked_request_body_and_head(served: Served) -> None:
    payload = json.dumps({"model": "llama3.2", "prompt": "why", "stream": False}).encode()
    half = len(payload) // 2
    chunked = b"%x\r\n%b\r\n%x\r\n%b\r\n0\r\n\r\n" % (half, payload[:half], len(payload) - half, payload[half:])
    with connect(served) as sock, sock.makefile("rb") as reader:
        sock.sendall(b"POST /api/generate HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked)
        status, _, body = read_response(reader)
        assert status == 200 and json.loads(body)["done"] is True
        sock.sendall(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert reader.readline().startswith(b"HTTP/1.1 200")
        headers = []
        while (line := reader.readline()) != b"\r\n":
            headers.append(line.lower())
        assert b"content-length: 17\r\n" in headers  # the length GET would have, and no body follows
        assert read_response(reader)[2] == b"Ollama is running"


def test_a_stream_is_read_piece_by_piece_while_the_node_still_answers(served: Served) -> None:
    chat = {"model": "slow", "messages": [{"role": "user", "content": "hi"}]}
    with connect(served) as sock, sock.makefile("rb") as reader:
        sock.sendall(post("/api/chat", chat))
        assert reader.readline().startswith(b"HTTP/1.1 200")
        headers = []
        while (line := reader.readline()) != b"\r\n":
            headers.append(line.lower())
        assert b"transfer-encoding: chunked\r\n" in headers
        assert b"content-type: application/x-ndjson\r\n" in headers
        size = int(reader.readline(), 16)
        first = json.loads(reader.read(size))
        assert first["done"] is False  # the first token arrived before the answer was whole
        reader.readline()
        size = int(reader.readline(), 16)
        second = json.loads(reader.read(size))
        assert second["done"] is False  # so did the second: a piece is not held back for the next
        assert served.in_flight() == 1


async def listening(server: FastServer) -> int:
    """Start `server` on a free loopback port; the port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    await server.start(sock)
    return int(sock.getsockname()[1])


def test_idle_connections_are_closed_after_the_keep_alive_timeout_and_busy_ones_are_not() -> None:
    """One sweep timer closes a connection idle for `keep_alive_timeout`; one whose answer is
    still being written (a slow stream) stays open however long it takes."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        slow = scope["path"] == "/slow"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(6 if slow else 1):
            await send({"type": "http.response.body", "body": b"x", "more_body": True})
            if slow:
                await asyncio.sleep(0.1)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def main() -> tuple[float, bytes, bytes]:
        server = FastServer(app, max_body=1024, keep_alive_timeout=0.2)
        port = await listening(server)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /fast HTTP/1.1\r\nHost: x\r\n\r\n")
            await reader.readuntil(b"0\r\n\r\n")
            answered = time.monotonic()
            idle = await asyncio.wait_for(reader.read(), 2)  # b"" when the server closes it
            waited = time.monotonic() - answered
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")  # 0.6 s, three timeouts long
            slow = await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 3)
            writer.close()
            return waited, idle, slow
        finally:
            await server.stop(grace=1)

    waited, idle, slow = asyncio.run(main())
    assert idle == b"" and 0.2 <= waited < 1.5
    assert slow.count(b"1\r\nx\r\n") == 6


def test_a_request_trickled_or_left_half_way_gets_408_and_the_connection_closes() -> None:
    """A client that sends part of a request and stops cannot hold the connection: once
    `request_timeout` has passed since the request began it is answered 408 in the protocol of
    its path and the connection closes."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        raise AssertionError("a request that never arrived whole must not reach the app")

    async def main() -> tuple[float, bytes]:
        server = FastServer(app, max_body=1024, keep_alive_timeout=5.0, request_timeout=0.3)
        port = await listening(server)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            started = time.monotonic()
            writer.write(b'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{"mo')
            answer = await asyncio.wait_for(reader.read(), 3)  # until the server closes
            return time.monotonic() - started, answer
        finally:
            await server.stop(grace=1)

    waited, answer = asyncio.run(main())
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b'"error"' in answer and b"did not arrive whole in time" in answer
    assert b'"type"' in answer  # OpenAI's error shape under /v1/
    assert 0.3 <= waited < 2.0


def test_pieces_written_in_one_turn_of_the_loop_leave_in_one_send_and_in_order() -> None:
    from sollol.gateway.fastserver import _COALESCE_LIMIT, HttpProtocol

    class Transport:
        def __init__(self) -> None:
            self.sent: list[bytes] = []

        def write(self, data: bytes) -> None:
            self.sent.append(data)

        def is_closing(self) -> bool:
            return False

    async def main() -> list[list[bytes]]:
        server = FastServer(lambda scope, receive, send: None, max_body=1024)  # type: ignore[arg-type,return-value]
        proto = HttpProtocol(server)
        transport = Transport()
        proto.transport = transport  # type: ignore[assignment]
        seen = []
        proto.write_soon(b"a")
        proto.write_soon(b"b")
        seen.append(list(transport.sent))  # nothing yet: the turn is not over
        await asyncio.sleep(0)
        seen.append(list(transport.sent))  # one send for both
        proto.write_soon(b"c")
        proto.write(b"d")  # a direct write sends what is held first
        seen.append(list(transport.sent))
        proto.write_soon(b"x" * _COALESCE_LIMIT)  # too much to hold: sent at once
        seen.append([len(b) for b in transport.sent[3:]])  # type: ignore[misc]
        await asyncio.sleep(0)
        seen.append(list(transport.sent[3:]))  # and nothing is sent twice
        return seen

    assert asyncio.run(main()) == [
        [],
        [b"ab"],
        [b"ab", b"c", b"d"],
        [_COALESCE_LIMIT],
        [b"x" * _COALESCE_LIMIT],
    ]


def test_a_client_that_leaves_mid_stream_releases_the_node(served: Served) -> None:
    chat = {"model": "slow", "messages": [{"role": "user", "content": "tell me a long story"}]}
    deadline = time.monotonic() + 3
    while served.in_flight() and time.monotonic() < deadline:  # the previous test's stream, if still open
        time.sleep(0.01)
    sock = connect(served)
    reader = sock.makefile("rb")
    sock.sendall(post("/api/chat", chat))
    assert reader.readline().startswith(b"HTTP/1.1 200")
    assert served.in_flight() == 1
    reader.close()
    sock.close()
    # The whole answer takes several seconds; the gateway must let go well before it would end.
    deadline = time.monotonic() + 4 * SLOW_DELAY
    while served.in_flight() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert served.in_flight() == 0


def test_oversized_body_is_refused_before_it_is_read(served: Served) -> None:
    with connect(served) as sock, sock.makefile("rb") as reader:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n{")
        status, headers, body = read_response(reader)
        assert status == 413
        assert headers["connection"] == "close"
        assert "limit is 4096 bytes" in json.loads(body)["error"]["message"]  # OpenAI-shaped under /v1
        assert reader.read() == b""  # and the connection is closed
    with connect(served) as sock, sock.makefile("rb") as reader:
        sock.sendall(b"POST /api/chat HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2000\r\n" + b"x" * 8192)
        status, _, body = read_response(reader)
        assert status == 413 and "limit" in json.loads(body)["error"]  # Ollama-shaped


def test_a_bad_request_line_gets_400_and_a_closed_connection(served: Served) -> None:
    with connect(served) as sock, sock.makefile("rb") as reader:
        sock.sendall(b"THIS IS NOT HTTP\r\n\r\n")
        status, _, body = read_response(reader)
        assert status == 400 and "bad request" in json.loads(body)["error"]
        assert reader.read() == b""


def test_gateway_errors_keep_their_protocol_shape(served: Served) -> None:
    with connect(served) as sock, sock.makefile("rb") as reader:
        sock.sendall(post("/api/chat", {"model": "nope", "messages": [{"role": "user", "content": "x"}]}))
        status, _, body = read_response(reader)
        assert status == 404 and isinstance(json.loads(body)["error"], str)
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n{x}")
        status, _, body = read_response(reader)
        assert status == 400 and json.loads(body)["error"]["type"] == "invalid_request_error"
        sock.sendall(b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(reader)[:1] == (404,)


def test_the_official_clients_work_against_it(served: Served) -> None:
    ollama = pytest.importorskip("ollama")
    openai = pytest.importorskip("openai")
    client = ollama.Client(host=served.base)
    assert "llama3.2:latest" in [m.model for m in client.list().models]
    answer = client.chat(model="llama3.2", messages=[{"role": "user", "content": "hi"}])
    assert answer.message.content
    pieces = [
        c.message.content
        for c in client.chat(model="llama3.2", messages=[{"role": "user", "content": "hi"}], stream=True)
    ]
    assert len(pieces) > 1 and "".join(pieces) == answer.message.content
    oa = openai.OpenAI(base_url=served.base + "/v1", api_key="x", max_retries=0)
    done = oa.chat.completions.create(model="llama3.2", messages=[{"role": "user", "content": "hi"}])
    assert done.choices[0].message.content == answer.message.content
    stream = oa.chat.completions.create(
        model="llama3.2",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer.message.content
    assert chunks[-1].usage is not None
    with pytest.raises(openai.NotFoundError):
        oa.chat.completions.create(model="missing", messages=[{"role": "user", "content": "hi"}])
