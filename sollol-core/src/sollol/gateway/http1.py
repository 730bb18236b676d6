"""A lean HTTP/1.1 keep-alive transport for httpx, for the gateway's hot path.

httpx's default pool (httpcore) walks every pooled connection on each request and asks each
socket for its attributes, which costs about a millisecond of CPU per request once a pool
holds a dozen connections. This transport keeps idle connections in a LIFO list per origin
(O(1) to take and give back), writes the request in one call, and reads the answer with
asyncio streams: Content-Length, chunked and read-to-close bodies, streamed piece by piece.
Failures are raised as httpx's own exceptions, so callers see no difference.
"""

from __future__ import annotations

import asyncio
import ssl
import sys
from collections.abc import AsyncIterator
from typing import Any

import httpx

if sys.version_info >= (3, 11):
    from asyncio import timeout as _deadline
else:  # pragma: no cover - Python 3.10
    from contextlib import asynccontextmanager

    @asynccontextmanager
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


class Http1Transport(httpx.AsyncBaseTransport):
    """An `httpx.AsyncBaseTransport` with a small, fast connection pool (HTTP/1.1 only)."""

    def __init__(self, *, max_idle_per_origin: int = 256, ssl_context: ssl.SSLContext | None = None) -> None:
        self._idle: dict[Origin, list[Streams]] = {}
        self._max_idle = max_idle_per_origin
        self._ssl = ssl_context
        self._closed = False

    # -- the pool --------------------------------------------------------------------------------

    def _take(self, origin: Origin) -> Streams | None:
        idle = self._idle.get(origin)
        while idle:
            reader, writer = idle.pop()
            if reader.at_eof() or writer.is_closing() or reader._buffer:  # type: ignore[attr-defined]
                writer.close()
                continue
            return reader, writer
        return None

    def _give_back(self, origin: Origin, streams: Streams) -> None:
        idle = self._idle.setdefault(origin, [])
        if self._closed or len(idle) >= self._max_idle:
            streams[1].close()
        else:
            idle.append(streams)

    async def _open(self, request: httpx.Request, origin: Origin, timeout: float | None) -> Streams:
        scheme, host, port = origin
        context: ssl.SSLContext | None = None
        if scheme == "https":
            context = self._ssl or ssl.create_default_context()
        try:
            async with _deadline(timeout):
                return await asyncio.open_connection(host, port, ssl=context, limit=HEAD_LIMIT)
        except TimeoutError:
            raise httpx.ConnectTimeout(f"connecting to {host}:{port} timed out", request=request) from None
        except OSError as exc:
            raise httpx.ConnectError(f"cannot connect to {host}:{port}: {exc}", request=request) from exc

    async def aclose(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for _, writer in idle:
                writer.close()
        self._idle.clear()

    # -- one exchange ----------------------------------------------------------------------------

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
        payload = bytes(head) + body if body else bytes(head)
        streams = self._take(origin)
        reused = streams is not None
        while True:
            if streams is None:
                streams = await self._open(request, origin, timeouts.get("connect"))
            try:
                return await self._exchange(request, origin, streams, payload, timeouts.get("read"))
            except _Stale:
                # The server closed a kept-alive connection before answering; one fresh try.
                streams[1].close()
                if not reused:
                    raise httpx.RemoteProtocolError(
                        "the server closed the connection without answering", request=request
                    ) from None
                streams, reused = None, False

    async def _exchange(
        self, request: httpx.Request, origin: Origin, streams: Streams, payload: bytes, read_timeout: float | None
    ) -> httpx.Response:
        reader, writer = streams
        try:
            writer.write(payload)
            async with _deadline(read_timeout):
                head = await reader.readuntil(b"\r\n\r\n")
                while head.startswith(b"HTTP/1.1 1") and not head.startswith(b"HTTP/1.1 101"):
                    head = await reader.readuntil(b"\r\n\r\n")  # skip 100 Continue and friends
        except TimeoutError:
            writer.close()
            raise httpx.ReadTimeout("the node did not answer in time", request=request) from None
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                raise _Stale from None
            writer.close()
            raise httpx.RemoteProtocolError(
                "the connection closed in the middle of the answer's headers", request=request
            ) from None
        except asyncio.LimitOverrunError:
            writer.close()
            raise httpx.RemoteProtocolError("the answer's headers are too large", request=request) from None
        except (ConnectionResetError, BrokenPipeError):
            raise _Stale from None
        except OSError as exc:
            writer.close()
            raise httpx.ReadError(str(exc) or type(exc).__name__, request=request) from exc
        lines = head[:-4].split(b"\r\n")
        status_line = lines[0].split(b" ", 2)
        try:
            status = int(status_line[1])
        except (IndexError, ValueError):
            writer.close()
            raise httpx.RemoteProtocolError(f"malformed status line {lines[0][:80]!r}", request=request) from None
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
        if request.method == "HEAD" or status in (204, 304):
            length, chunked = 0, False
        stream = _Body(self, origin, streams, request, read_timeout, length=length, chunked=chunked, keep=keep)
        reason = status_line[2].decode("latin-1") if len(status_line) > 2 else ""
        return httpx.Response(
            status,
            headers=headers,
            stream=stream,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": reason.encode()},
        )


class _Stale(Exception):
    """A reused connection turned out closed before any answer byte arrived."""


class _Body(httpx.AsyncByteStream):
    """An answer's body, read as it arrives; the connection goes back to the pool when it ends."""

    def __init__(
        self,
        transport: Http1Transport,
        origin: Origin,
        streams: Streams,
        request: httpx.Request,
        read_timeout: float | None,
        *,
        length: int | None,
        chunked: bool,
        keep: bool,
    ) -> None:
        self._transport = transport
        self._origin = origin
        self._streams = streams
        self._request = request
        self._timeout = read_timeout
        self._length = length
        self._chunked = chunked
        self._keep = keep and (chunked or length is not None)
        self._complete = False
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        reader = self._streams[0]
        try:
            if self._chunked:
                while True:
                    async with _deadline(self._timeout):
                        size_line = await reader.readuntil(b"\r\n")
                        size = int(size_line.split(b";", 1)[0], 16)
                        if size == 0:
                            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                                pass  # trailers
                            break
                        data = await reader.readexactly(size + 2)
                    yield data[:-2]
            elif self._length is not None:
                remaining = self._length
                while remaining:
                    async with _deadline(self._timeout):
                        data = await reader.read(min(remaining, 1 << 20))
                    if not data:
                        raise asyncio.IncompleteReadError(b"", remaining)
                    remaining -= len(data)
                    yield data
            else:
                while True:
                    async with _deadline(self._timeout):
                        data = await reader.read(1 << 16)
                    if not data:
                        break
                    yield data
            self._complete = True
        except TimeoutError:
            raise httpx.ReadTimeout(
                "the node stopped sending in the middle of its answer", request=self._request
            ) from None
        except (asyncio.IncompleteReadError, ValueError) as exc:
            raise httpx.RemoteProtocolError(
                f"the answer's body was cut off or malformed: {exc}", request=self._request
            ) from None
        except OSError as exc:
            raise httpx.ReadError(str(exc) or type(exc).__name__, request=self._request) from exc

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._complete and self._keep:
            self._transport._give_back(self._origin, self._streams)
        else:
            self._streams[1].close()
