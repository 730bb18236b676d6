"""A lean HTTP/1.1 keep-alive client for the gateway's hot path.

httpx's default pool (httpcore) walks every pooled connection on each request and asks each
socket for its attributes (about a millisecond of CPU per request once a dozen connections
are pooled), and httpx's request and response objects cost about as much again. `Http1Pool`
keeps idle connections in a LIFO list per origin (O(1) to take and give back), writes each
request in one call and parses answers straight from each connection's buffer (`Connection`, a
bare protocol: no stream layer between socket and parser): Content-Length, chunked and
read-to-close bodies, streamed piece by piece.

Two faces: `LeanTransport`, a `sollol.transport.Transport` that sends node requests as bytes
(no httpx objects on the request path), and `Http1Transport`, an `httpx.AsyncBaseTransport`
for code that wants httpx's API on the same pool.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import ssl
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlencode

import httpx

from sollol.errors import ConnectError, NodeTimeoutError
from sollol.http import HttpRequest, HttpResponse
from sollol.node import Node
from sollol.transport import PROBE_BODY_LIMIT, Timeouts, Transport, _headers

if sys.version_info >= (3, 11):
    from asyncio import timeout as _deadline
else:  # pragma: no cover - Python 3.10
    from contextlib import asynccontextmanager as _acm

    @_acm
    async def _deadline(delay: float | None) -> AsyncIterator[None]:
        if delay is None:
            yield
            return
        task = asyncio.current_task()
        assert task is not None
        handle = asyncio.get_running_loop().call_later(delay, task.cancel)
        try:
            yield
        except asyncio.CancelledError:
            raise TimeoutError from None
        finally:
            handle.cancel()


Origin = tuple[str, str, int]

HEAD_LIMIT = 256 * 1024
#: a connection stops reading from its node while this much is buffered and not yet taken
BUFFER_LIMIT = 1 << 20


class Http1Error(Exception):
    """A network failure: `timeout` when a deadline passed, `connect` when no connection was made."""

    def __init__(self, message: str, *, timeout: bool = False, connect: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout
        self.connect = connect


class _Stale(Exception):
    """A reused connection turned out closed before any answer byte arrived."""


class _Cut(Exception):
    """The connection ended (or failed) before the answer was whole."""


class Connection(asyncio.Protocol):
    """One connection to a node: what arrives is appended to `buffer`, and one waiter is woken.

    The reader (`Http1Pool._exchange`, `Answer`) parses straight from `buffer`; there is no
    stream layer between the socket and the parser (asyncio's `StreamReader` costs a dozen
    Python calls per read). Reading pauses while `BUFFER_LIMIT` bytes wait to be taken.
    """

    __slots__ = (
        "_loop",
        "_paused",
        "_waiter",
        "buffer",
        "closed",
        "delay",
        "error",
        "expired",
        "last",
        "offer",
        "transport",
        "waiting",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.closed = False
        self.error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        # The read deadline (`Http1Pool` watches it): `delay` bounds each wait for the node;
        # `waiting` is True while a read waits, since `last` (loop time); `expired` once it
        # waited longer and the connection was aborted.
        self.delay: float | None = None
        self.waiting = False
        self.last = 0.0
        self.expired = False
        #: while a read waits: called with what arrived in `buffer`; True when it took care of
        #: it (the reader need not wake), False to wake the reader (see `Answer.pieces`)
        self.offer: Callable[[], bool] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        offer = self.offer
        if offer is not None and offer():
            self.last = self._loop.time()  # progress: the read deadline counts from here
            return
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)
        if len(self.buffer) > BUFFER_LIMIT and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def eof_received(self) -> None:
        self._end(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self._end(exc)

    def _end(self, exc: BaseException | None) -> None:
        self.closed = True
        self.offer = None
        if exc is not None and self.error is None:
            self.error = exc
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def more(self) -> None:
        """Wait until more bytes arrived; `_Cut` when the connection ended instead."""
        if self.closed:
            raise _Cut
        if self._paused:
            self._paused = False
            assert self.transport is not None
            self.transport.resume_reading()
        loop = self._loop
        self._waiter = waiter = loop.create_future()
        self.last = loop.time()
        self.waiting = True
        try:
            await waiter
        finally:
            self.waiting = False
        if self.closed and not self.buffer:
            raise _Cut

    def idle(self) -> bool:
        """Fit to carry a new request: open, nothing unread."""
        return not self.closed and not self.buffer and self.transport is not None and not self.transport.is_closing()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Answer:
    """An answer whose head has arrived; read its body with `pieces()` or `read()`, then `close()`."""

    __slots__ = (
        "_chunked",
        "_complete",
        "_conn",
        "_done",
        "_ending",
        "_keep",
        "_length",
        "_origin",
        "_pool",
        "headers",
        "reason",
        "status",
    )

    def __init__(
        self,
        pool: Http1Pool,
        origin: Origin,
        conn: Connection,
        status: int,
        reason: bytes,
        headers: list[tuple[bytes, bytes]],
        *,
        length: int | None,
        chunked: bool,
        keep: bool,
    ) -> None:
        self._pool = pool
        self._origin = origin
        self._conn = conn
        self.status = status
        self.reason = reason
        self.headers = headers
        self._length = length
        self._chunked = chunked
        self._keep = keep and (chunked or length is not None)
        self._complete = False
        self._done = False
        self._ending = False

    async def pieces(self, take: Callable[[bytes], bool] | None = None) -> AsyncIterator[bytes]:
        """The body as it arrives: all of it that is in when the consumer asks, as one piece.

        `take` (chunked bodies): while the consumer waits for the next piece, what arrives is
        offered to `take` as it comes, inside the connection's `data_received`; a piece it
        accepts (True) is the consumer's no more and does not wake it. A stream relayed on
        untouched (`AsyncPool.stream_lines`) costs a wake-up of the whole consuming task only
        for the pieces that need a look. `take` must not block, and refuses what it cannot
        pass on at once.
        """
        conn = self._conn
        buffer = conn.buffer
        try:
            if self._chunked:
                held: list[tuple[bytes, bool]] = []
                offer: Callable[[], bool] | None = None
                if take is not None:

                    def offer() -> bool:
                        if held:
                            return False
                        try:
                            data, last = _take_chunks(buffer)
                        except ValueError:
                            return False  # the reader raises it
                        if last or (data and not take(data)):
                            held.append((data, last))
                            return False
                        return True  # taken, or no whole chunk yet: the reader sleeps on

                while True:
                    # Every whole chunk buffered goes out as one piece (one write downstream
                    # instead of one per chunk); a chunk not whole yet waits for the rest.
                    data, last = held.pop() if held else _take_chunks(buffer)
                    if data:
                        yield data
                        if self._ending and not last:
                            return  # the consumer has what it needs: `close` lets the end come later
                    if last:
                        break
                    if not data:
                        conn.offer = offer
                        try:
                            await conn.more()
                        finally:
                            conn.offer = None
            elif self._length is not None:
                remaining = self._length
                while remaining:
                    if not buffer:
                        await conn.more()
                    data = bytes(buffer[:remaining])
                    del buffer[: len(data)]
                    remaining -= len(data)
                    yield data
            else:
                while True:
                    if not buffer:
                        if conn.closed:
                            break
                        try:
                            await conn.more()
                        except _Cut:
                            break
                    data = bytes(buffer)
                    buffer.clear()
                    yield data
                if conn.error is not None or conn.expired:
                    raise _Cut  # reset or timed out: not the end of the answer
            self._complete = True
            self._pool.unwatch(conn)
        except (_Cut, ValueError) as exc:
            self._raise_expired()
            error = conn.error
            if isinstance(exc, _Cut) and isinstance(error, OSError):
                raise Http1Error(f"the connection failed while reading the answer: {error}") from error
            raise Http1Error(f"the answer's body was cut off or malformed ({type(exc).__name__})") from None

    def _raise_expired(self) -> None:
        if self._conn.expired:
            raise Http1Error("the node stopped sending in the middle of its answer", timeout=True) from None

    async def read(self) -> bytes:
        """The whole body."""
        length = self._length
        if length is not None and not self._chunked:
            conn = self._conn
            buffer = conn.buffer
            try:
                while len(buffer) < length:
                    await conn.more()
            except _Cut:
                self._raise_expired()
                error = conn.error
                if isinstance(error, OSError):
                    raise Http1Error(f"the connection failed while reading the answer: {error}") from error
                raise Http1Error("the answer's body was cut off") from None
            body = bytes(buffer[:length])
            del buffer[:length]
            self._complete = True
            self._pool.unwatch(conn)
            return body
        return b"".join([piece async for piece in self.pieces()])

    def finish(self) -> None:
        """The consumer has every piece it needs (a stream's final line came): `pieces()` ends
        after the piece it gave last, and `close()` keeps the connection if what still arrives
        is only the end of the chunked body, without waiting for it."""
        self._ending = True

    def close(self) -> None:
        """Give the connection back when the body was read whole, else close it (or, after
        `finish()`, give it back once the body's end arrives)."""
        if self._done:
            return
        self._done = True
        conn = self._conn
        if self._complete and self._keep:
            self._pool.unwatch(conn)
            self._pool.give_back(self._origin, conn)
        elif self._ending and self._keep and self._chunked and not conn.closed:
            self._drain()
        else:
            self._pool.unwatch(conn)
            conn.close()

    def _drain(self) -> None:
        """Wait, in the background, for the end of a body whose data the consumer has read: the
        last chunk gives the connection back; anything else (more data, a malformed chunk) closes
        it; the read deadline still bounds the wait."""
        conn, pool, origin, buffer = self._conn, self._pool, self._origin, self._conn.buffer
        ended = False

        def drain() -> bool:
            nonlocal ended
            try:
                data, last = _take_chunks(buffer)
            except ValueError:
                data, last = b"?", False
            if data or last:
                ended = True
                conn.offer = None
                pool.unwatch(conn)
                if data:
                    conn.close()  # more body than the consumer expected: the connection is not reusable
                else:
                    pool.give_back(origin, conn)
            return True  # never wakes anyone: nobody waits

        drain()
        if not ended:
            conn.offer = drain
            conn.waiting = True
            conn.last = pool.now()


def _chunk_size(line: bytes | bytearray) -> int:
    """A chunk-size line's size (hex, surrounding whitespace and CRLF allowed); with a chunk
    extension (`1a;name=value`) the part before `;`. Garbage raises `ValueError`."""
    try:
        size = int(line, 16)
    except ValueError:
        size = int(bytes(line).split(b";", 1)[0] or b"0", 16)
    if size < 0:
        raise ValueError("negative chunk size")
    return size


#: buffers up to this size are split at once by `_split_chunks`; bigger ones are walked chunk by
#: chunk (a split of a big partial chunk on every read would cost time quadratic in its size)
SPLIT_LIMIT = 1 << 16

_HEX = itertools.repeat(16)


def _take_chunks(buffer: bytearray) -> tuple[bytes, bool]:
    """Take every whole chunk at the front of `buffer`: (their data joined, whether the last
    chunk and its trailers were among them). A chunk not whole yet stays in `buffer`."""
    if len(buffer) <= SPLIT_LIMIT:
        taken = _split_chunks(buffer)
        if taken is not None:
            return taken
    return _walk_chunks(buffer)


def _split_chunks(buffer: bytearray) -> tuple[bytes, bool] | None:
    """`_take_chunks` in a fixed number of C-level steps, whatever the number of chunks: split at
    every CRLF, and check that each size line's number is the length of the part after it. None
    when they do not all agree (a chunk whose data holds a CRLF, an extension, trailers, garbage):
    the chunk-by-chunk walk decides then.

    Agreement proves the framing: the first part is a size line (the buffer starts at a chunk's
    beginning); when the part after it is exactly that long, the chunk's data ends right before
    a CRLF, so the next part is again a size line.
    """
    parts = buffer.split(b"\r\n")
    pairs = (len(parts) - 1) // 2  # (size line, data) pairs each followed by a CRLF: whole chunks
    if not pairs:
        return b"", False
    try:
        sizes = list(map(int, parts[0 : 2 * pairs : 2], _HEX))
    except ValueError:
        return None  # an extension, or garbage
    datas = parts[1 : 2 * pairs : 2]
    last = 0 in sizes
    if last:  # the last chunk, without trailers: "0" CRLF CRLF
        pairs = sizes.index(0)
        if datas[pairs]:
            return None
        sizes, datas = sizes[:pairs], datas[:pairs]
    if sizes != list(map(len, datas)):
        return None
    ended = pairs + 1 if last else pairs  # the last chunk's two lines are taken too
    del buffer[: sum(map(len, parts[: 2 * ended])) + 4 * ended]
    return b"".join(datas), last


def _walk_chunks(buffer: bytearray) -> tuple[bytes, bool]:
    """`_take_chunks`, one chunk at a time."""
    pos = 0
    spans: list[tuple[int, int]] = []
    last = False
    while True:
        end = buffer.find(b"\r\n", pos)
        if end < 0:
            if len(buffer) - pos > HEAD_LIMIT:
                raise ValueError("chunk size line too long")
            break
        size = _chunk_size(buffer[pos:end])
        if not size:  # the last chunk: whole once its (usually empty) trailers end
            if buffer.startswith(b"\r\n", end + 2):
                pos, last = end + 4, True
            else:
                close = buffer.find(b"\r\n\r\n", end + 2)
                if close >= 0:
                    pos, last = close + 4, True
            break
        stop = end + 2 + size + 2
        if len(buffer) < stop:
            break
        if not buffer.startswith(b"\r\n", stop - 2):
            raise ValueError("chunk without its CRLF")
        spans.append((end + 2, stop - 2))
        pos = stop
    if len(spans) == 1:
        start, stop = spans[0]
        data = bytes(buffer[start:stop])
    elif spans:
        view = memoryview(buffer)
        data = b"".join([view[start:stop] for start, stop in spans])
        view.release()
    else:
        data = b""
    if pos:
        del buffer[:pos]
    return data, last


class Http1Pool:
    """Keep-alive connections per origin, LIFO, with one retry when a kept connection went stale."""

    def __init__(self, *, max_idle_per_origin: int = 256, ssl_context: ssl.SSLContext | None = None) -> None:
        self._idle: dict[Origin, list[Connection]] = {}
        self._max_idle = max_idle_per_origin
        self._ssl = ssl_context
        self._closed = False
        #: the loop the connections belong to (`asyncio.get_running_loop()` costs a getpid()
        #: system call in CPython: asked once, not per exchange)
        self._loop: asyncio.AbstractEventLoop | None = None
        # Connections in an exchange with a read deadline, and the one timer that sweeps them
        # every `_tick` seconds (a quarter of the shortest deadline): no timer per exchange.
        self._watched: set[Connection] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self._tick = 0.0

    def watch(self, conn: Connection, delay: float, loop: asyncio.AbstractEventLoop) -> None:
        """Bound each wait for `conn`'s node by `delay` seconds until `unwatch`.

        A wait that passes it aborts the connection (which ends the read) and marks it
        `expired`; it is noticed at the next sweep, so within 1.25 x `delay`.
        """
        conn.delay = delay
        conn.expired = False
        self._watched.add(conn)
        tick = delay / 4
        if self._sweeper is None or tick < self._tick:
            if self._sweeper is not None:
                self._sweeper.cancel()
            self._tick = tick
            self._sweeper = loop.call_later(tick, self._sweep, loop)

    def now(self) -> float:
        """The loop's clock (what the read deadlines count in)."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop.time()

    def unwatch(self, conn: Connection) -> None:
        """The exchange on `conn` is over."""
        self._watched.discard(conn)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        watched = self._watched
        for conn in [c for c in watched if c.waiting and now - c.last >= c.delay]:  # type: ignore[operator]
            watched.discard(conn)
            conn.expired = True
            if conn.transport is not None:
                conn.transport.abort()
        if watched:
            self._tick = min(c.delay for c in watched) / 4  # type: ignore[type-var, operator]
            self._sweeper = loop.call_later(self._tick, self._sweep, loop)
        else:
            self._sweeper = None

    def _take(self, origin: Origin) -> Connection | None:
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            if conn.idle():
                return conn
            conn.close()
        return None

    def give_back(self, origin: Origin, conn: Connection) -> None:
        """Keep a connection whose answer was read whole."""
        idle = self._idle.setdefault(origin, [])
        if self._closed or len(idle) >= self._max_idle:
            conn.close()
        else:
            idle.append(conn)

    async def _open(self, origin: Origin, timeout: float | None) -> Connection:
        scheme, host, port = origin
        context: ssl.SSLContext | None = None
        if scheme == "https":
            context = self._ssl or ssl.create_default_context()
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        try:
            async with _deadline(timeout):
                _, conn = await loop.create_connection(lambda: Connection(loop), host, port, ssl=context)
        except TimeoutError:
            raise Http1Error(f"connecting to {host}:{port} timed out", timeout=True, connect=True) from None
        except OSError as exc:
            raise Http1Error(f"cannot connect to {host}:{port}: {exc}", connect=True) from exc
        return conn

    async def aclose(self) -> None:
        """Close every idle connection."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
        for conn in list(self._watched):  # in an exchange, or waiting for a body's end
            conn.close()
        self._watched.clear()

    async def exchange(
        self,
        origin: Origin,
        payload: bytes,
        *,
        connect_timeout: float | None,
        read_timeout: float | None,
        head_only: bool = False,
    ) -> Answer:
        """Send `payload` (a whole request) and return once the answer's head is in."""
        conn = self._take(origin)
        reused = conn is not None
        while True:
            if conn is None:
                conn = await self._open(origin, connect_timeout)
            try:
                return await self._exchange(origin, conn, payload, read_timeout, head_only)
            except _Stale:
                conn.close()
                if not reused:
                    raise Http1Error("the node closed the connection without answering") from None
                conn, reused = None, False  # a kept-alive connection the node had closed: one fresh try

    async def _exchange(
        self, origin: Origin, conn: Connection, payload: bytes, read_timeout: float | None, head_only: bool
    ) -> Answer:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        transport = conn.transport
        assert transport is not None
        if read_timeout is not None:
            self.watch(conn, read_timeout, loop)
        buffer = conn.buffer
        try:
            transport.write(payload)
            while True:
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    if len(buffer) > HEAD_LIMIT:
                        raise Http1Error("the answer's headers are too large")
                    await conn.more()
                    continue
                if buffer.startswith(b"HTTP/1.1 1") and not buffer.startswith(b"HTTP/1.1 101"):
                    del buffer[: end + 4]  # 100 Continue and friends
                    continue
                break
        except BaseException as exc:
            self.unwatch(conn)
            if conn.expired:
                conn.close()
                raise Http1Error("the node did not answer in time", timeout=True) from None
            if isinstance(exc, _Cut):
                error = conn.error
                if not buffer and (error is None or isinstance(error, (ConnectionResetError, BrokenPipeError))):
                    raise _Stale from None  # closed before any answer byte: a kept connection gone stale
                conn.close()
                if error is not None and not buffer:
                    raise Http1Error(f"the connection failed: {error}") from error
                raise Http1Error("the connection closed in the middle of the answer's headers") from None
            conn.close()
            raise
        head = bytes(buffer[:end])
        del buffer[: end + 4]
        lines = head.split(b"\r\n")
        status_line = lines[0].split(b" ", 2)
        try:
            status = int(status_line[1])
        except (IndexError, ValueError):
            self.unwatch(conn)
            conn.close()
            raise Http1Error(f"malformed status line {lines[0][:80]!r}") from None
        headers: list[tuple[bytes, bytes]] = []
        length: int | None = None
        chunked = False
        keep = True
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip()
            value = value.strip()
            headers.append((name, value))
            lower = name.lower()
            if lower == b"content-length":
                length = int(value)
            elif lower == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif lower == b"connection" and value.lower() == b"close":
                keep = False
        if head_only or status in (204, 304):
            length, chunked = 0, False
        reason = status_line[2] if len(status_line) > 2 else b""
        return Answer(self, origin, conn, status, reason, headers, length=length, chunked=chunked, keep=keep)


def _origin(node: Node) -> Origin:
    return (node.scheme, node.host, node.port)


#: `json.dumps(obj, separators=...)` builds a new encoder on every call: one, made once.
_compact = json.JSONEncoder(separators=(",", ":")).encode


def _payload(node: Node, request: HttpRequest) -> bytes:
    path = request.path
    if request.params:
        path += "?" + urlencode(list(request.params))
    body = b"" if request.json is None else _compact(request.json).encode()
    host = f"[{node.host}]" if ":" in node.host else node.host
    head = f"{request.method} {path} HTTP/1.1\r\nhost: {host}:{node.port}\r\n"
    for name, value in _headers(node, request).items():
        head += f"{name}: {value}\r\n"
    if request.json is not None:
        head += "content-type: application/json\r\n"
    if body or request.method in ("POST", "PUT", "PATCH"):
        head += f"content-length: {len(body)}\r\n"
    return (head + "\r\n").encode("latin-1") + body


class RawJson(dict[str, Any]):
    """A JSON object parsed from a node's answer, with the exact bytes it came from (`body`).

    The gateway sends `body` instead of encoding the object again when it would send the
    object unchanged (an Ollama node's non-streamed answer to an Ollama client).
    """

    __slots__ = ("body",)

    body: bytes


class _LeanResponse(HttpResponse):
    """An `HttpResponse` whose `json()` keeps the body beside a parsed object (`RawJson`)."""

    __slots__ = ()

    def json(self) -> Any:
        data = super().json()
        if type(data) is dict:
            raw = RawJson(data)
            raw.body = self.body
            return raw
        return data


def _str_headers(headers: list[tuple[bytes, bytes]]) -> tuple[tuple[str, str], ...]:
    return tuple((name.decode("latin-1").lower(), value.decode("latin-1")) for name, value in headers)


class LeanTransport(Transport):
    """`Transport` that sends node requests as bytes on `Http1Pool` connections.

    `send` and `stream` (the request path) skip httpx; probes keep using httpx (the inherited
    client), where their tolerance of odd servers matters more than speed.
    """

    def __init__(self, *, timeouts: Timeouts | None = None, **kw: Any) -> None:
        super().__init__(timeouts=timeouts, **kw)
        self._pool = Http1Pool()

    async def aclose(self) -> None:
        """Close every connection."""
        await self._pool.aclose()
        await super().aclose()

    def _fail(self, node: Node, request: HttpRequest, exc: Http1Error) -> Exception:
        what = f"{request.method} {request.path}"
        if exc.timeout:
            return NodeTimeoutError(f"{what} timed out: {exc}", node=node.id)
        return ConnectError(f"{what}: {exc}", node=node.id)

    async def send(self, node: Node, request: HttpRequest, *, timeout: float | None = None) -> HttpResponse:
        """Send one request and read the whole answer. Network failures raise."""
        started = time.perf_counter()
        timeouts = self.timeouts
        try:
            answer = await self._pool.exchange(
                _origin(node),
                _payload(node, request),
                connect_timeout=timeout if timeout is not None else timeouts.connect,
                read_timeout=timeout if timeout is not None else timeouts.read,
                head_only=request.method == "HEAD",
            )
            try:
                body = await answer.read()
            finally:
                answer.close()
        except Http1Error as exc:
            raise self._fail(node, request, exc) from exc
        return _LeanResponse(
            status=answer.status, headers=_str_headers(answer.headers), body=body, elapsed=time.perf_counter() - started
        )

    async def probe(self, node: Node, request: HttpRequest, *, timeout: float | None = None) -> HttpResponse:
        """Like `send`, but never raises (status 0 and `error` instead); bodies capped at 64 KiB.

        Probes share the pool with requests, so a server with few HTTP threads (llama.cpp's
        keeps one per open connection) never sees more connections than it needs.
        """
        started = time.perf_counter()
        limit = timeout if timeout is not None else self.timeouts.probe
        try:
            async with _deadline(limit * 2):
                answer = await self._pool.exchange(
                    _origin(node),
                    _payload(node, request),
                    connect_timeout=limit,
                    read_timeout=limit,
                    head_only=request.method == "HEAD",
                )
                try:
                    body = b""
                    async for piece in answer.pieces():
                        body += piece
                        if len(body) >= PROBE_BODY_LIMIT:
                            break
                finally:
                    answer.close()
        except Http1Error as exc:
            return HttpResponse(status=0, error=str(exc), elapsed=time.perf_counter() - started)
        except TimeoutError:
            return HttpResponse(status=0, error="the probe timed out", elapsed=time.perf_counter() - started)
        return HttpResponse(
            status=answer.status,
            headers=_str_headers(answer.headers),
            body=body[:PROBE_BODY_LIMIT],
            elapsed=time.perf_counter() - started,
        )

    def stream(self, node: Node, request: HttpRequest) -> _LeanStream:  # type: ignore[override]  # same protocol
        """Open a streamed request (`async with`); the body is read piece by piece."""
        return _LeanStream(self, node, request)


class _LeanStream:
    """`async with transport.stream(...)`: a class, not a generator-based context manager
    (one is entered for every streamed request)."""

    __slots__ = ("_answer", "_node", "_request", "_transport")

    def __init__(self, transport: LeanTransport, node: Node, request: HttpRequest) -> None:
        self._transport = transport
        self._node = node
        self._request = request
        self._answer: Answer | None = None

    async def __aenter__(self) -> LeanStreamed:
        transport = self._transport
        try:
            answer = await transport._pool.exchange(
                _origin(self._node),
                _payload(self._node, self._request),
                connect_timeout=transport.timeouts.connect,
                read_timeout=transport.timeouts.read,
            )
        except Http1Error as exc:
            raise transport._fail(self._node, self._request, exc) from exc
        self._answer = answer
        return LeanStreamed(answer)

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        assert self._answer is not None
        self._answer.close()
        if isinstance(exc, Http1Error):
            raise self._transport._fail(self._node, self._request, exc) from exc


class LeanStreamed:
    """An open streamed answer (the shape of `sollol.transport.StreamedResponse`)."""

    __slots__ = ("_answer", "_headers", "status")

    def __init__(self, answer: Answer) -> None:
        self._answer = answer
        self.status = answer.status
        self._headers: tuple[tuple[str, str], ...] | None = None

    @property
    def headers(self) -> tuple[tuple[str, str], ...]:
        """The answer's headers (decoded when first asked for)."""
        if self._headers is None:
            self._headers = _str_headers(self._answer.headers)
        return self._headers

    async def read(self) -> HttpResponse:
        """Read the rest as a whole response (used for error answers)."""
        return HttpResponse(status=self.status, headers=self.headers, body=await self._answer.read())

    def pieces(self, take: Callable[[bytes], bool] | None = None) -> AsyncIterator[bytes]:
        """The body as it arrives (`take`: see `Answer.pieces`)."""
        return self._answer.pieces(take)

    def finish(self) -> None:
        """The consumer has what it needs (see `Answer.finish`)."""
        self._answer.finish()


# -- the same pool behind httpx's API --------------------------------------------------------------


class Http1Transport(httpx.AsyncBaseTransport):
    """An `httpx.AsyncBaseTransport` over `Http1Pool` (HTTP/1.1 only)."""

    def __init__(self, *, max_idle_per_origin: int = 256, ssl_context: ssl.SSLContext | None = None) -> None:
        self._pool = Http1Pool(max_idle_per_origin=max_idle_per_origin, ssl_context=ssl_context)

    async def aclose(self) -> None:
        await self._pool.aclose()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        scheme = url.scheme
        origin: Origin = (scheme, url.host, url.port or (443 if scheme == "https" else 80))
        timeouts: dict[str, Any] = request.extensions.get("timeout", {})
        body = await request.aread()
        head = bytearray(request.method.encode())
        head += b" " + url.raw_path + b" HTTP/1.1\r\n"
        for name, value in request.headers.raw:
            head += name + b": " + value + b"\r\n"
        head += b"\r\n"
        try:
            answer = await self._pool.exchange(
                origin,
                bytes(head) + body,
                connect_timeout=timeouts.get("connect"),
                read_timeout=timeouts.get("read"),
                head_only=request.method == "HEAD",
            )
        except Http1Error as exc:
            raise _httpx_error(exc, request) from exc
        return httpx.Response(
            answer.status,
            headers=answer.headers,
            stream=_HttpxBody(answer, request),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": answer.reason},
        )


def _httpx_error(exc: Http1Error, request: httpx.Request) -> httpx.HTTPError:
    if exc.connect:
        return (httpx.ConnectTimeout if exc.timeout else httpx.ConnectError)(str(exc), request=request)
    if exc.timeout:
        return httpx.ReadTimeout(str(exc), request=request)
    return httpx.RemoteProtocolError(str(exc), request=request)


class _HttpxBody(httpx.AsyncByteStream):
    def __init__(self, answer: Answer, request: httpx.Request) -> None:
        self._answer = answer
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for piece in self._answer.pieces():
                yield piece
        except Http1Error as exc:
            raise _httpx_error(exc, self._request) from exc

    async def aclose(self) -> None:
        self._answer.close()
