"""A minimal HTTP/1.1 server for `sollol serve`: httptools parsing, one `asyncio.Protocol` per connection.

uvicorn runs an ASGI app with a task, a scope, a message queue and (for streams) a disconnect
watcher per request; profiles of the gateway showed that machinery as a good part of its CPU per
request. `FastServer` does only what the gateway needs and nothing else:

- requests are parsed with httptools (keep-alive, pipelined requests answered in order,
  Content-Length and chunked request bodies); a body above the gateway's `max_body` is refused
  with 413 before it is buffered, a request that does not parse gets 400, and both close the
  connection;
- each request runs the gateway's ASGI callable directly, with its whole body in the first
  `receive` (one task per request, no queue);
- a response that arrives whole leaves in one write with its Content-Length; a streamed one
  (`more_body`) goes out with chunked transfer encoding, one write per piece, as it arrives;
- when the client goes away the request's task is cancelled (so the pool's stream is closed and
  its in-flight count released), and `receive.disconnected` is resolved for code that watches it;
- HEAD answers carry the head only.

The ASGI app itself is unchanged: tests and users who prefer uvicorn run it there
(`sollol serve --server uvicorn`).
"""

from __future__ import annotations

import asyncio
import collections
import http
import logging
import socket
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

import httptools

from sollol.gateway.failures import api_error, openai_body
from sollol.gateway.wire import JSON_TYPE, ApiError, dumps

log = logging.getLogger(__name__)
access_log = logging.getLogger("sollol.gateway.access")

ASGIApp = Callable[..., Any]

_STATUS_LINES = {
    int(s): f"HTTP/1.1 {int(s)} {s.phrase}\r\n".encode() for s in http.HTTPStatus
}  # uvicorn and Ollama's clients read only the code
_CHUNKED = b"transfer-encoding: chunked\r\n"
_CLOSE = b"connection: close\r\n"
_KEEP = b"connection: keep-alive\r\n"
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_END = b"0\r\n\r\n"
_COALESCE_LIMIT = 1 << 16  # bytes `write_soon` holds before it writes at once
_MAX_QUEUED = 16  # pipelined requests waiting for their turn before reading pauses
_STREAM_HEADS: dict[tuple[Any, ...], bytes] = {}  # see `Exchange._stream_head`


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    return line if line is not None else f"HTTP/1.1 {status} Status\r\n".encode()


def error_answer(path: str, status: int, message: str) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """(status, JSON body, headers) of an error in the protocol of `path` (OpenAI under /v1/, else Ollama)."""
    openai = path.startswith("/v1/")
    error = api_error(ApiError(status, message), openai=openai)
    payload = openai_body(error) if openai else {"error": error.message}
    return error.status, dumps(payload), [(b"content-type", JSON_TYPE), *error.headers]


class Exchange:
    """One request: its ASGI scope, `receive` (call the exchange) and `send`."""

    __slots__ = (
        "_disconnected",
        "_headers",
        "_sent_body",
        "body",
        "chunked",
        "error",
        "finished",
        "head",
        "keep_alive",
        "proto",
        "scope",
        "started",
        "status",
        "streaming",
    )

    def __init__(self, proto: HttpProtocol, scope: dict[str, Any], body: bytes, keep_alive: bool) -> None:
        self.proto = proto
        self.scope = scope
        self.body = body
        self.keep_alive = keep_alive
        self.head = scope["method"] == "HEAD"
        self.chunked = scope["http_version"] == "1.1"
        self.error: tuple[int, str] | None = None
        self.started = False
        self.streaming = False
        self.finished = False
        self.status = 0
        self._headers: Any = ()
        self._sent_body = False
        self._disconnected: asyncio.Future[bool] | None = None

    @property
    def disconnected(self) -> asyncio.Future[bool]:
        """Resolves to True when the client goes away (read by the gateway's stream loops)."""
        if self._disconnected is None:
            self._disconnected = self.proto.loop.create_future()
            if self.proto.lost:
                self._disconnected.set_result(True)
        return self._disconnected

    def client_gone(self) -> None:
        waiter = self._disconnected
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    async def __call__(self) -> dict[str, Any]:  # ASGI receive
        if not self._sent_body:
            self._sent_body = True
            return {"type": "http.request", "body": self.body, "more_body": False}
        await self.disconnected
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        """ASGI send: the head is held until the first body piece so they leave together."""
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self._headers = message.get("headers", ())
            return
        if message["type"] != "http.response.body" or self.finished:
            return
        body = message.get("body", b"")
        more = message.get("more_body", False)
        proto = self.proto
        if not self.started:
            self.started = True
            if more:  # a stream: its head leaves with whatever else is ready in this turn of the loop
                self.streaming = True
                if not self.chunked:  # HTTP/1.0: the body ends when the connection does
                    self.keep_alive = False
                head = self._stream_head()
                if body and not self.head:
                    head += self._framed(body)
                proto.write_soon(head)
            else:
                parts = [_status_line(self.status)]
                has_length = False
                for name, value in self._headers:
                    if name == b"content-length":
                        has_length = True
                    parts.append(name + b": " + value + b"\r\n")
                if not has_length:
                    parts.append(b"content-length: %d\r\n" % len(body))
                parts.append(_CLOSE if not self.keep_alive else _KEEP if self.scope["http_version"] == "1.0" else b"")
                parts.append(b"\r\n")
                if not self.head:
                    parts.append(body)
                proto.write(b"".join(parts))
        elif body and not self.head:
            proto.write_soon(self._framed(body))
        if not more:
            self.finished = True
            if self.streaming and self.chunked and not self.head:
                proto.write_soon(_END)
            proto.flush()
        if proto.write_paused:
            await proto.drain()

    def _framed(self, body: bytes) -> bytes:
        """A stream's piece as it goes on the wire: a chunk, or (HTTP/1.0) the bytes themselves."""
        return b"%x\r\n%b\r\n" % (len(body), body) if self.chunked else body

    def _stream_head(self) -> bytes:
        """A stream's head; the same for every stream of a status and a constant header tuple
        (`sollol.gateway.wire.start_stream` gives one), so those are built once."""
        headers = self._headers
        key = (self.status, headers, self.chunked, self.keep_alive) if type(headers) is tuple else None
        if key is not None:
            head = _STREAM_HEADS.get(key)
            if head is not None:
                return head
        parts = [_status_line(self.status)]
        for name, value in headers:
            parts.append(name + b": " + value + b"\r\n")
        if self.chunked:
            parts.append(_CHUNKED)
        if not self.keep_alive:
            parts.append(_CLOSE)
        parts.append(b"\r\n")
        head = b"".join(parts)
        if key is not None and len(_STREAM_HEADS) < 64:
            _STREAM_HEADS[key] = head
        return head

    async def piece(self, body: bytes) -> None:
        """A started stream's next piece: what `send` does with `more_body`, without building and
        reading a message (see `sollol.gateway.wire.piece_sender`)."""
        if not self.started or self.finished:
            await self.send({"type": "http.response.body", "body": body, "more_body": True})
            return
        proto = self.proto
        if body and not self.head:
            proto.write_soon(self._framed(body))
        if proto.write_paused:
            await proto.drain()

    def piece_now(self, body: bytes) -> bool:
        """A started stream's next piece, from plain code (a node connection's `data_received`);
        False when it must wait for `piece` instead (the stream has not started or has ended,
        or the client's socket is full).

        It leaves at once unless something written this turn waits to go (then with it, after
        it): a node connection hands over what one read brought, and nothing else of this
        stream can come in the same turn to share the send.
        """
        proto = self.proto
        if not self.started or self.finished or self.head or proto.write_paused or proto.lost:
            return False
        data = self._framed(body)
        if proto._out is None and proto.transport is not None:
            proto.transport.write(data)
        else:
            proto.write_soon(data)
        return True


class HttpProtocol(asyncio.Protocol):
    """One client connection."""

    def __init__(self, server: FastServer) -> None:
        self.server = server
        self.app = server.app
        self.max_body = server.max_body
        self.loop = asyncio.get_running_loop()
        self.parser: Any = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.queue: collections.deque[Exchange] = collections.deque()
        self.current: Exchange | None = None
        self.task: asyncio.Task[None] | None = None
        self.lost = False
        self.write_paused = False
        self._drain: asyncio.Future[None] | None = None
        self._out: list[bytes] | None = None  # held by `write_soon` until the loop's turn ends
        self._out_size = 0
        self._reading_paused = False
        #: when the connection last went idle (loop time; None while a request is in or being
        #: answered): `FastServer`'s sweep closes it `keep_alive_timeout` later
        self.idle_since: float | None = None
        #: when the request being read began (None between requests): `FastServer`'s sweep
        #: answers 408 and closes the connection when it is not whole `request_timeout` later
        self.reading_since: float | None = None
        self._stopped = False  # the parser met something it will not go past
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._size = 0
        self._scope: dict[str, Any] | None = None
        self._client: Any = None
        self._local: Any = None

    # -- connection ----------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        self._client = tuple(peer[:2]) if isinstance(peer, tuple) else None
        self._local = tuple(local[:2]) if isinstance(local, tuple) else None
        self.server.connections.add(self)
        self.idle_since = self.loop.time()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.server.connections.discard(self)
        if self.current is not None:
            self.current.client_gone()
        if self.task is not None and not self.task.done():
            self.task.cancel()  # the gateway's finally blocks close the node stream
        self.queue.clear()
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    async def drain(self) -> None:
        if self.write_paused and not self.lost:
            self._drain = self.loop.create_future()
            await self._drain

    def write(self, data: bytes) -> None:
        if self._out is not None:
            self.flush()
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def write_soon(self, data: bytes) -> None:
        """Write `data` at the end of this turn of the loop, with whatever else is written in it.

        A stream's pieces that are ready together (a node's read held several) leave in one
        send instead of one each; nothing waits longer than the current turn of the loop.
        """
        out = self._out
        if out is None:
            if len(data) >= _COALESCE_LIMIT:
                self.write(data)
                return
            self._out = [data]
            self._out_size = len(data)
            self.loop.call_soon(self.flush)
            return
        out.append(data)
        self._out_size += len(data)
        if self._out_size >= _COALESCE_LIMIT:
            self.flush()

    def flush(self) -> None:
        """Write what `write_soon` holds, now."""
        out = self._out
        if out is None:
            return
        self._out = None
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(out[0] if len(out) == 1 else b"".join(out))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # -- parsing -------------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._stopped:
            return
        self.idle_since = None
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(400, "protocol upgrades are not supported", self._path_or_root())
        except httptools.HttpParserError as exc:
            if not self._stopped:
                self._refuse(400, f"bad request: {exc}", "/")

    def timed_out(self) -> None:
        """The request being read did not arrive whole in time: 408, then close."""
        self._refuse(408, "the request did not arrive whole in time", self._path_or_root())

    def _path_or_root(self) -> str:
        return self._scope["path"] if self._scope is not None else "/"

    def on_message_begin(self) -> None:
        self.reading_since = self.loop.time()
        self._url = b""
        self._headers = []
        self._body = []
        self._size = 0
        self._scope = None

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        if self._stopped:
            return
        parser = self.parser
        try:
            parsed = httptools.parse_url(self._url)
        except httptools.HttpParserInvalidURLError:
            self._refuse(400, "bad request: invalid URL", "/")
            return
        raw_path = parsed.path or b"/"
        path = raw_path.decode("latin-1")
        if "%" in path:
            path = unquote(path)
        self._scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": parser.get_http_version(),
            "method": parser.get_method().decode("ascii"),
            "scheme": "http",
            "path": path,
            "raw_path": raw_path,
            "query_string": parsed.query or b"",
            "root_path": "",
            "headers": self._headers,
            "client": self._client,
            "server": self._local,
        }
        expect = False
        for name, value in self._headers:
            if name == b"content-length":
                try:
                    size = int(value)
                except ValueError:
                    self._refuse(400, "invalid Content-Length header", path)
                    return
                if size > self.max_body:
                    self._refuse(
                        413,
                        f"request body is {size} bytes; the limit is {self.max_body} bytes (raise it with --max-body)",
                        path,
                    )
                    return
            elif name == b"expect" and value.lower() == b"100-continue":
                expect = True
        if expect and self.current is None and not self.queue:
            self.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        if self._stopped:
            return
        self._size += len(body)
        if self._size > self.max_body:
            self._refuse(
                413,
                f"request body exceeds the limit of {self.max_body} bytes (raise it with --max-body)",
                self._path_or_root(),
            )
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.reading_since = None
        if self._stopped or self._scope is None:
            return
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        self._enqueue(Exchange(self, self._scope, body, bool(self.parser.should_keep_alive())))

    def _refuse(self, status: int, message: str, path: str) -> None:
        """Answer this request with an error (after any before it) and close the connection."""
        self._stopped = True
        self.reading_since = None
        scope = self._scope or {"method": "GET", "path": path, "http_version": "1.1"}
        exchange = Exchange(self, scope, b"", False)
        exchange.error = (status, message)
        self._enqueue(exchange)
        if self.transport is not None and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()

    # -- running requests ----------------------------------------------------------------------------

    def _enqueue(self, exchange: Exchange) -> None:
        if self.current is None:
            self._start(exchange)
            return
        self.queue.append(exchange)
        if len(self.queue) >= _MAX_QUEUED and not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    def _start(self, exchange: Exchange) -> None:
        self.current = exchange
        self.task = self.loop.create_task(self._run(exchange))

    async def _run(self, exchange: Exchange) -> None:
        try:
            if exchange.error is not None:
                status, body, headers = error_answer(exchange.scope["path"], *exchange.error)
                exchange.status = status
                exchange._headers = headers
                await exchange.send({"type": "http.response.body", "body": body})
            else:
                await self.app(exchange.scope, exchange, exchange.send)
        except asyncio.CancelledError:
            if self.lost:
                return
            raise
        except Exception:
            log.exception("error serving %s %s", exchange.scope["method"], exchange.scope["path"])
            if not exchange.started:
                status, body, headers = error_answer(exchange.scope["path"], 500, "internal error in the gateway")
                exchange.status = status
                exchange._headers = headers
                exchange.keep_alive = False
                await exchange.send({"type": "http.response.body", "body": body})
        if self.server.access_log:
            access_log.info("%s %s %d", exchange.scope["method"], exchange.scope["path"], exchange.status)
        self._done(exchange)

    def _done(self, exchange: Exchange) -> None:
        self.current = None
        self.task = None
        if self.lost:
            return
        if not exchange.finished or not exchange.keep_alive:
            self.close()  # an unfinished answer cannot be followed by another on this connection
            return
        if self.queue:
            self._start(self.queue.popleft())
            if self._reading_paused and len(self.queue) < _MAX_QUEUED // 2 and not self._stopped:
                self._reading_paused = False
                if self.transport is not None:
                    self.transport.resume_reading()
            return
        self.idle_since = self.loop.time()


class FastServer:
    """Serves an ASGI `app` (the gateway) over plain HTTP/1.1 on a bound socket."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body: int,
        access_log: bool = False,
        keep_alive_timeout: float = 5.0,
        request_timeout: float = 30.0,
    ) -> None:
        self.app = app
        self.max_body = max_body
        self.access_log = access_log
        self.keep_alive_timeout = keep_alive_timeout
        #: seconds a client may take to send one whole request (head and body) once it began:
        #: a client that trickles a request (or stops half-way) cannot hold a connection forever
        self.request_timeout = request_timeout
        self.connections: set[HttpProtocol] = set()
        self._server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.TimerHandle | None = None

    async def start(self, sock: socket.socket, backlog: int = 2048) -> None:
        """Listen on `sock` (bound already)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: HttpProtocol(self), sock=sock, backlog=backlog)
        self._sweep()

    def _sweep(self) -> None:
        """Close the connections idle for `keep_alive_timeout`, answer 408 to requests not whole
        `request_timeout` after they began, then look again a little later.

        One timer for the server instead of one per connection re-armed after every request;
        a connection closes between `keep_alive_timeout` and a quarter of it more after its
        last answer.
        """
        loop = asyncio.get_running_loop()
        now = loop.time()
        limit = self.keep_alive_timeout
        for conn in list(self.connections):
            if conn.idle_since is not None and now - conn.idle_since >= limit:
                if conn.current is None and not conn.queue:
                    conn.close()
            elif conn.reading_since is not None and now - conn.reading_since >= self.request_timeout:
                conn.timed_out()
        self._sweeper = loop.call_later(min(limit, self.request_timeout) / 4, self._sweep)

    async def stop(self, grace: float = 3.0) -> None:
        """Stop listening, let requests in flight finish for up to `grace` seconds, close the rest."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self._server is not None:
            self._server.close()
        tasks = [c.task for c in self.connections if c.task is not None]
        for conn in list(self.connections):
            if conn.task is None:
                conn.close()
        if tasks:
            await asyncio.wait(tasks, timeout=grace)
        for conn in list(self.connections):
            if conn.task is not None:
                conn.task.cancel()
            conn.close()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None


async def serve_gateway(
    gateway: Any,
    sock: socket.socket,
    *,
    stop: asyncio.Event,
    started: Callable[[], None] | None = None,
    access_log: bool = False,
    keep_alive_timeout: float = 5.0,
    request_timeout: float = 30.0,
) -> None:
    """Start the gateway's pool, serve on `sock` until `stop` is set, then close everything."""
    await gateway.pool.start()
    server = FastServer(
        gateway,
        max_body=gateway.max_body,
        access_log=access_log,
        keep_alive_timeout=keep_alive_timeout,
        request_timeout=request_timeout,
    )
    try:
        await server.start(sock)
        if started is not None:
            started()
        await stop.wait()
    finally:
        await server.stop()
        await gateway.aclose()
