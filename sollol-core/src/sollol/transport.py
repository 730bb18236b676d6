"""All of SOLLOL's network I/O: one long-lived `httpx.AsyncClient` per pool.

Codecs describe requests (`sollol.http`); this module sends them, with explicit timeouts
and connection limits, adds credentials, and turns network failures into SOLLOL errors.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import attrs
import httpx

from sollol.errors import ConnectError, NodeTimeoutError
from sollol.http import Exchange, HttpRequest, HttpResponse
from sollol.node import Node

T = TypeVar("T")

PROBE_BODY_LIMIT = 64 * 1024


@attrs.frozen(kw_only=True)
class Timeouts:
    """Timeouts in seconds. `read` bounds the wait between two pieces of an answer."""

    connect: float = 3.0
    read: float = 300.0
    write: float = 30.0
    pool: float = 30.0
    probe: float = 2.5

    def httpx(self) -> httpx.Timeout:
        """As an httpx value."""
        return httpx.Timeout(connect=self.connect, read=self.read, write=self.write, pool=self.pool)


@functools.cache
def tls_context() -> ssl.SSLContext:
    """One TLS context for the process: building one costs 0.1-0.3 s, far more than a request."""
    return ssl.create_default_context()


def _headers(node: Node, request: HttpRequest) -> dict[str, str]:
    headers = {"accept": "application/json"} if not request.stream else {}
    headers.update(request.headers)
    if node.api_key:
        headers["authorization"] = f"Bearer {node.api_key}"
    return headers


#: The class `Transport(...)` builds; None means `Transport` itself. `sollol serve` installs
#: `sollol.gateway.http1.LeanTransport`, which sends node requests without httpx's objects.
TRANSPORT_CLASS: type[Transport] | None = None


class Transport:
    """Sends requests to nodes. Create one per pool; `aclose()` it when done."""

    def __new__(cls, *args: Any, **kw: Any) -> Transport:
        chosen = TRANSPORT_CLASS if cls is Transport and TRANSPORT_CLASS is not None else cls
        return super().__new__(chosen)

    def __init__(
        self,
        *,
        timeouts: Timeouts | None = None,
        max_connections: int = 512,
        max_keepalive: int = 128,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.timeouts = timeouts or Timeouts()
        self._client = client or httpx.AsyncClient(
            timeout=self.timeouts.httpx(),
            limits=httpx.Limits(
                max_connections=max_connections,
                max_keepalive_connections=max_keepalive,
                # Below llama.cpp's 5 s idle timeout, so a kept connection is rarely stale.
                keepalive_expiry=4.0,
            ),
            follow_redirects=False,
            trust_env=False,
            verify=tls_context(),
        )

    async def aclose(self) -> None:
        """Close every connection."""
        await self._client.aclose()

    def _build(self, node: Node, request: HttpRequest, timeout: httpx.Timeout | None) -> httpx.Request:
        return self._client.build_request(
            request.method,
            node.url + request.path,
            json=request.json if request.json is not None else None,
            params=list(request.params) or None,
            headers=_headers(node, request),
            timeout=timeout if timeout is not None else self.timeouts.httpx(),
        )

    async def _open(self, built: httpx.Request) -> httpx.Response:
        """Send a request and wait for the status line and headers.

        Only a disconnect before any answer is retried, once: that is a kept-alive
        connection the server had already closed. A break after the headers is the node's.
        """
        try:
            return await self._client.send(built, stream=True)
        except httpx.RemoteProtocolError:
            return await self._client.send(built, stream=True)

    async def send(self, node: Node, request: HttpRequest, *, timeout: float | None = None) -> HttpResponse:
        """Send one request and read the whole answer. Network failures raise."""
        started = time.perf_counter()
        limit = httpx.Timeout(timeout) if timeout is not None else None
        try:
            response = await self._open(self._build(node, request, limit))
            try:
                body = await response.aread()  # a failure here is the node's, never retried
            finally:
                await response.aclose()
        except httpx.TimeoutException as exc:
            raise NodeTimeoutError(
                f"{request.method} {request.path} timed out ({type(exc).__name__})", node=node.id
            ) from exc
        except httpx.HTTPError as exc:
            raise ConnectError(f"{request.method} {request.path}: {_describe(exc)}", node=node.id) from exc
        return HttpResponse(
            status=response.status_code,
            headers=tuple(response.headers.multi_items()),
            body=body,
            elapsed=time.perf_counter() - started,
        )

    async def probe(self, node: Node, request: HttpRequest, *, timeout: float | None = None) -> HttpResponse:
        """Like `send`, but never raises: a failure is a response with status 0 and `error`.

        Bodies are capped at 64 KiB; probes only need to recognise a server.
        """
        started = time.perf_counter()
        limit = httpx.Timeout(timeout if timeout is not None else self.timeouts.probe)
        try:
            async with self._client.stream(
                request.method,
                node.url + request.path,
                params=list(request.params) or None,
                headers=_headers(node, request),
                timeout=limit,
            ) as response:
                body = b""
                async for piece in response.aiter_bytes():
                    body += piece
                    if len(body) >= PROBE_BODY_LIMIT:
                        break
                return HttpResponse(
                    status=response.status_code,
                    headers=tuple(response.headers.multi_items()),
                    body=body[:PROBE_BODY_LIMIT],
                    elapsed=time.perf_counter() - started,
                )
        except httpx.HTTPError as exc:
            return HttpResponse(status=0, error=_describe(exc), elapsed=time.perf_counter() - started)

    async def run(self, node: Node, exchange: Exchange[T], *, tolerant: bool = False) -> T:
        """Drive a codec's exchange against `node`.

        With `tolerant`, network failures reach the codec as status-0 responses (status
        endpoints that may be missing); otherwise they raise.
        """

        async def one(request: HttpRequest) -> HttpResponse:
            if tolerant:
                return await self.probe(node, request, timeout=self.timeouts.probe * 2)
            return await self.send(node, request)

        try:
            batch = next(exchange)
            while True:
                if len(batch) == 1:
                    answers: Sequence[HttpResponse] = (await one(batch[0]),)
                else:
                    answers = await asyncio.gather(*(one(r) for r in batch))
                batch = exchange.send(tuple(answers))
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        finally:
            exchange.close()

    @asynccontextmanager
    async def stream(self, node: Node, request: HttpRequest) -> AsyncIterator[StreamedResponse]:
        """Open a streamed request; the body is read piece by piece."""
        try:
            response = await self._open(self._build(node, request, None))
            try:
                yield StreamedResponse(response, node)
            finally:
                await response.aclose()
        except httpx.TimeoutException as exc:
            raise NodeTimeoutError(
                f"{request.method} {request.path} timed out ({type(exc).__name__})", node=node.id
            ) from exc
        except httpx.HTTPError as exc:
            raise ConnectError(f"{request.method} {request.path}: {_describe(exc)}", node=node.id) from exc


class StreamedResponse:
    """An open streamed answer."""

    def __init__(self, response: httpx.Response, node: Node) -> None:
        self._response = response
        self._node = node
        self.status = response.status_code
        self.headers = tuple(response.headers.multi_items())

    async def read(self) -> HttpResponse:
        """Read the rest as a whole response (used for error answers)."""
        body = await self._response.aread()
        return HttpResponse(status=self.status, headers=self.headers, body=body)

    def pieces(self, take: Callable[[bytes], bool] | None = None) -> AsyncIterator[bytes]:
        """The body as it arrives. (`take`, which lets a transport hand pieces on as they arrive
        (see `sollol.gateway.http1.Answer.pieces`), is not used here: every piece comes from
        the iterator, which is always correct.)"""
        return self._response.aiter_bytes()


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    cause = exc.__cause__ or exc.__context__
    if cause is not None and str(cause) and str(cause) not in text:
        text = f"{text} ({cause})"
    return f"{type(exc).__name__}: {text}"
