"""A lean HTTP/1.1 keep-alive client for the gateway's hot path.

httpx's default pool (httpcore) walks every pooled connection on each request and asks each
socket for its attributes (about a millisecond of CPU per request once a dozen connections
are pooled), and httpx's request and response objects cost about as much again. `Http1Pool`
keeps idle connections in a LIFO list per origin (O(1) to take and give back), writes each
request in one call and reads answers with asyncio streams (Content-Length, chunked and
read-to-close bodies, streamed piece by piece).

Two faces: `LeanTransport`, a `sollol.transport.Transport` that sends node requests as bytes
(no httpx objects on the request path), and `Http1Transport`, an `httpx.AsyncBaseTransport`
for code that wants httpx's API on the same pool.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import sys
import time
from collections.abc import AsyncIterator
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
Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]

HEAD_LIMIT = 256 * 1024


class Http1Error(Exception):
    """A network failure: `timeout` when a deadline passed, `connect` when no connection was made."""

    def __init__(self, message: str, *, timeout: bool = False, connect: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout
        self.connect = connect


class _Stale(Exception):
    """A reused connection turned out closed before any answer byte arrived."""


class _Deadline:
    """One timer per exchange instead of an `asyncio.timeout` around every read.

    The timer is armed once; reads only note when they start and end (two attribute stores).
    When it fires, it re-arms itself for the remaining time if a read made progress since
    (or none is waiting: the consumer is busy elsewhere), else it aborts the connection, which
    ends the pending read, and marks the exchange `expired`. `delay` bounds the wait for the
    head and, after it, each gap between pieces of the body (as `Timeouts.read` says).
    """

    __slots__ = ("_delay", "_handle", "_loop", "_transport", "expired", "last", "waiting")

    def __init__(self, delay: float, transport: asyncio.BaseTransport, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._delay = delay
        self._transport = transport
        self.expired = False
        self.waiting = True
        self.last = now = loop.time()
        # A read in progress since `last` (True), or the consumer has the answer (False).
        self._handle: asyncio.TimerHandle | None = loop.call_at(now + delay, self._fire)

    def _fire(self) -> None:
        now = self._loop.time()
        due = self.last + self._delay
        if not self.waiting:
            due = now + self._delay
        if now < due:
            self._handle = self._loop.call_at(due, self._fire)
            return
        self._handle = None
        self.expired = True
        self._transport.abort()  # type: ignore[attr-defined]

    def wait(self) -> None:
        """A read starts waiting for the node now."""
        self.last = self._loop.time()
        self.waiting = True

    def cancel(self) -> None:
        """Disarm the timer (the exchange is over)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class Answer:
    """An answer whose head has arrived; read its body with `pieces()` or `read()`, then `close()`."""

    __slots__ = (
        "_chunked",
        "_complete",
        "_deadline",
        "_done",
        "_keep",
        "_length",
        "_origin",
        "_pool",
        "_streams",
        "headers",
        "reason",
        "status",
    )

    def __init__(
        self,
        pool: Http1Pool,
        origin: Origin,
        streams: Streams,
        status: int,
        reason: bytes,
        headers: list[tuple[bytes, bytes]],
        deadline: _Deadline | None,
        *,
        length: int | None,
        chunked: bool,
        keep: bool,
    ) -> None:
        self._pool = pool
        self._origin = origin
        self._streams = streams
        self.status = status
        self.reason = reason
        self.headers = headers
        self._deadline = deadline
        self._length = length
        self._chunked = chunked
        self._keep = keep and (chunked or length is not None)
        self._complete = False
        self._done = False

    async def pieces(self) -> AsyncIterator[bytes]:
        """The body as it arrives."""
        reader = self._streams[0]
        deadline = self._deadline
        try:
            if self._chunked:
                while True:
                    # Every whole chunk buffered already goes out as one piece (no wait, and one
                    # write downstream instead of one per chunk); else wait for the next chunk.
                    data = await _buffered_chunks(reader)
                    if data:
                        if deadline is not None:
                            deadline.waiting = False
                        yield data
                        continue
                    if deadline is not None:
                        deadline.wait()
                    size = _chunk_size(await reader.readuntil(b"\r\n"))
                    if size:
                        data = await reader.readexactly(size + 2)
                        if data[-2:] != b"\r\n":
                            raise ValueError("chunk without its CRLF")
                        if deadline is not None:
                            deadline.waiting = False
                        yield data[:-2]
                        continue
                    while (await reader.readuntil(b"\r\n")) != b"\r\n":
                        pass  # trailers
                    break
            elif self._length is not None:
                remaining = self._length
                while remaining:
                    if deadline is not None:
                        deadline.wait()
                    data = await reader.read(min(remaining, 1 << 20))
                    if not data:
                        raise asyncio.IncompleteReadError(b"", remaining)
                    if deadline is not None:
                        deadline.waiting = False
                    remaining -= len(data)
                    yield data
            else:
                while True:
                    if deadline is not None:
                        deadline.wait()
                    data = await reader.read(1 << 16)
                    if not data:
                        break
                    if deadline is not None:
                        deadline.waiting = False
                    yield data
                if deadline is not None and deadline.expired:
                    raise asyncio.IncompleteReadError(b"", None)
            self._complete = True
            if deadline is not None:
                deadline.cancel()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            self._raise_expired()
            raise Http1Error(f"the answer's body was cut off or malformed ({type(exc).__name__})") from None
        except OSError as exc:
            self._raise_expired()
            raise Http1Error(f"the connection failed while reading the answer: {exc or type(exc).__name__}") from exc

    def _raise_expired(self) -> None:
        if self._deadline is not None and self._deadline.expired:
            raise Http1Error("the node stopped sending in the middle of its answer", timeout=True) from None

    async def read(self) -> bytes:
        """The whole body."""
        if self._length is not None and not self._chunked:
            reader = self._streams[0]
            deadline = self._deadline
            try:
                if deadline is not None:
                    deadline.wait()
                body = await reader.readexactly(self._length) if self._length else b""
            except asyncio.IncompleteReadError:
                self._raise_expired()
                raise Http1Error("the answer's body was cut off") from None
            except OSError as exc:
                self._raise_expired()
                raise Http1Error(f"the connection failed while reading the answer: {exc}") from exc
            self._complete = True
            if deadline is not None:
                deadline.cancel()
            return body
        return b"".join([piece async for piece in self.pieces()])

    def close(self) -> None:
        """Give the connection back when the body was read whole, else close it."""
        if self._done:
            return
        self._done = True
        if self._deadline is not None:
            self._deadline.cancel()
        if self._complete and self._keep:
            self._pool.give_back(self._origin, self._streams)
        else:
            self._streams[1].close()


def _chunk_size(line: bytes | bytearray) -> int:
    """A chunk-size line's size (hex, surrounding whitespace and CRLF allowed); with a chunk
    extension (`1a;name=value`) the part before `;`. Garbage raises `ValueError`."""
    try:
        return int(line, 16)
    except ValueError:
        return int(bytes(line).split(b";", 1)[0] or b"0", 16)


async def _buffered_chunks(reader: asyncio.StreamReader) -> bytes:
    """The data of every whole non-final chunk already in `reader`'s buffer, joined and
    consumed (b"" when the next chunk is not whole yet, or is the last one)."""
    buffered = reader._buffer  # type: ignore[attr-defined]
    pos = 0
    spans: list[tuple[int, int]] = []
    while True:
        end = buffered.find(b"\r\n", pos)
        if end < 0:
            break
        size = _chunk_size(buffered[pos:end])
        stop = end + 2 + size + 2
        if not size or len(buffered) < stop:
            break
        if not buffered.startswith(b"\r\n", stop - 2):
            raise ValueError("chunk without its CRLF")
        spans.append((end + 2, stop - 2))
        pos = stop
    if not spans:
        return b""
    data = await reader.readexactly(pos)  # all buffered: returns at once
    if len(spans) == 1:
        start, stop = spans[0]
        return data[start:stop]
    view = memoryview(data)
    return b"".join([view[start:stop] for start, stop in spans])


class Http1Pool:
    """Keep-alive connections per origin, LIFO, with one retry when a kept connection went stale."""

    def __init__(self, *, max_idle_per_origin: int = 256, ssl_context: ssl.SSLContext | None = None) -> None:
        self._idle: dict[Origin, list[Streams]] = {}
        self._max_idle = max_idle_per_origin
        self._ssl = ssl_context
        self._closed = False
        #: the loop the connections belong to (`asyncio.get_running_loop()` costs a getpid()
        #: system call in CPython: asked once, not per exchange)
        self._loop: asyncio.AbstractEventLoop | None = None

    def _take(self, origin: Origin) -> Streams | None:
        idle = self._idle.get(origin)
        while idle:
            reader, writer = idle.pop()
            if reader.at_eof() or writer.is_closing() or reader._buffer:  # type: ignore[attr-defined]
                writer.close()
                continue
            return reader, writer
        return None

    def give_back(self, origin: Origin, streams: Streams) -> None:
        """Keep a connection whose answer was read whole."""
        idle = self._idle.setdefault(origin, [])
        if self._closed or len(idle) >= self._max_idle:
            streams[1].close()
        else:
            idle.append(streams)

    async def _open(self, origin: Origin, timeout: float | None) -> Streams:
        scheme, host, port = origin
        context: ssl.SSLContext | None = None
        if scheme == "https":
            context = self._ssl or ssl.create_default_context()
        try:
            async with _deadline(timeout):
                return await asyncio.open_connection(host, port, ssl=context, limit=HEAD_LIMIT)
        except TimeoutError:
            raise Http1Error(f"connecting to {host}:{port} timed out", timeout=True, connect=True) from None
        except OSError as exc:
            raise Http1Error(f"cannot connect to {host}:{port}: {exc}", connect=True) from exc

    async def aclose(self) -> None:
        """Close every idle connection."""
        self._closed = True
        for idle in self._idle.values():
            for _, writer in idle:
                writer.close()
        self._idle.clear()

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
        streams = self._take(origin)
        reused = streams is not None
        while True:
            if streams is None:
                streams = await self._open(origin, connect_timeout)
            try:
                return await self._exchange(origin, streams, payload, read_timeout, head_only)
            except _Stale:
                streams[1].close()
                if not reused:
                    raise Http1Error("the node closed the connection without answering") from None
                streams, reused = None, False  # a kept-alive connection the node had closed: one fresh try

    async def _exchange(
        self, origin: Origin, streams: Streams, payload: bytes, read_timeout: float | None, head_only: bool
    ) -> Answer:
        reader, writer = streams
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        deadline = None if read_timeout is None else _Deadline(read_timeout, writer.transport, loop)
        try:
            writer.write(payload)
            head = await reader.readuntil(b"\r\n\r\n")
            while head.startswith(b"HTTP/1.1 1") and not head.startswith(b"HTTP/1.1 101"):
                head = await reader.readuntil(b"\r\n\r\n")  # 100 Continue and friends
        except BaseException as exc:
            if deadline is not None:
                deadline.cancel()
                if deadline.expired:
                    writer.close()
                    raise Http1Error("the node did not answer in time", timeout=True) from None
            if isinstance(exc, asyncio.IncompleteReadError):
                if not exc.partial:
                    raise _Stale from None
                writer.close()
                raise Http1Error("the connection closed in the middle of the answer's headers") from None
            if isinstance(exc, asyncio.LimitOverrunError):
                writer.close()
                raise Http1Error("the answer's headers are too large") from None
            if isinstance(exc, (ConnectionResetError, BrokenPipeError)):
                raise _Stale from None
            if isinstance(exc, OSError):
                writer.close()
                raise Http1Error(f"the connection failed: {exc or type(exc).__name__}") from exc
            raise
        if deadline is not None:
            deadline.waiting = False
        lines = head[:-4].split(b"\r\n")
        status_line = lines[0].split(b" ", 2)
        try:
            status = int(status_line[1])
        except (IndexError, ValueError):
            if deadline is not None:
                deadline.cancel()
            writer.close()
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
        return Answer(
            self, origin, streams, status, reason, headers, deadline, length=length, chunked=chunked, keep=keep
        )


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

    def pieces(self) -> AsyncIterator[bytes]:
        """The body as it arrives."""
        return self._answer.pieces()


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
