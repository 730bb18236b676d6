"""A small ASGI toolkit that the backend emulators are built on.

It gives each emulator routing with the server's own 404/405 shapes, configurable models,
token speed, latency, cold-load cost and parallel capacity, and injected failures: an
error answer, a hang, a dropped connection, an error line in the middle of a stream, or a
stream cut off without its final event.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar

import attrs

Scope = Mapping[str, Any]
Receive = Callable[[], Awaitable[Mapping[str, Any]]]
Send = Callable[[Mapping[str, Any]], Awaitable[None]]


@attrs.define(kw_only=True)
class EmulatedModel:
    """A model an emulator serves."""

    name: str
    embedding: bool = False
    loaded: bool = True
    size: int = 1_000_000_000
    family: str = "llama"
    parameter_size: str = "1B"
    quantization: str = "Q4_K_M"
    context_length: int = 4096
    capabilities: tuple[str, ...] = ()
    dimensions: int = 8

    @property
    def caps(self) -> tuple[str, ...]:
        """Capabilities, defaulting by kind."""
        if self.capabilities:
            return self.capabilities
        return ("embedding",) if self.embedding else ("completion", "tools")


@attrs.define(kw_only=True)
class Fault:
    """An injected failure. `paths` None means the generation routes of the emulator.

    kinds: "error" (answer `status`/`body` at once), "hang" (wait `seconds` first),
    "drop" (send headers, then break the connection), "stream_error" (an in-band error
    after `after` chunks), "truncate" (end the stream after `after` chunks, without the
    final event).
    """

    kind: str
    status: int = 500
    body: Any = None
    content_type: str = "application/json; charset=utf-8"
    seconds: float = 3600.0
    after: int = 1
    message: str = "injected failure"
    paths: tuple[str, ...] | None = None
    times: int | None = 1  # None = until cleared

    @classmethod
    def error(cls, status: int, body: Any = None, **kw: Any) -> Fault:
        """Answer with an error status and body."""
        return cls(kind="error", status=status, body=body, **kw)

    @classmethod
    def hang(cls, seconds: float = 3600.0, **kw: Any) -> Fault:
        """Wait before answering."""
        return cls(kind="hang", seconds=seconds, **kw)

    @classmethod
    def drop(cls, **kw: Any) -> Fault:
        """Send the status line and headers, then break the connection."""
        return cls(kind="drop", **kw)

    @classmethod
    def stream_error(cls, after: int = 1, message: str = "injected failure", **kw: Any) -> Fault:
        """Put an error event in the stream after `after` chunks."""
        return cls(kind="stream_error", after=after, message=message, **kw)

    @classmethod
    def truncate(cls, after: int = 1, **kw: Any) -> Fault:
        """End the stream after `after` chunks without the final event."""
        return cls(kind="truncate", after=after, **kw)


@attrs.define(kw_only=True)
class EmulatorConfig:
    """How an emulated server behaves."""

    models: list[EmulatedModel] = attrs.field(factory=lambda: [EmulatedModel(name="llama3.2:latest")])
    name: str = "emulator"
    version: str | None = None
    token_delay: float = 0.0  # seconds between tokens
    latency: float = 0.0  # seconds before the first byte
    load_time: float = 0.0  # seconds to load a model that is not loaded
    parallel: int | None = None  # requests served at once; the rest queue
    reply: str | None = None  # fixed reply text; default echoes the node name and prompt
    max_tokens: int = 8  # tokens in a default reply
    api_key: str | None = None


class DroppedConnection(Exception):
    """Raised inside the app to break the connection after the headers went out."""


@attrs.define
class EmuRequest:
    """A request as the emulator sees it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    fault: Fault | None = None

    def json(self) -> Any:
        """The body as JSON (raises ValueError when it is not)."""
        return json.loads(self.body)


@attrs.define
class EmuResponse:
    """A whole answer, or a streamed one when `stream` is set."""

    status: int = 200
    body: bytes = b""
    content_type: str | None = "application/json; charset=utf-8"
    headers: list[tuple[str, str]] = attrs.field(factory=list)
    stream: AsyncIterator[bytes] | None = None


def json_response(
    obj: Any,
    status: int = 200,
    content_type: str = "application/json; charset=utf-8",
    headers: Iterable[tuple[str, str]] = (),
) -> EmuResponse:
    """A JSON answer, compact like Go's and C++'s encoders."""
    body = json.dumps(obj, separators=(",", ":")).encode()
    return EmuResponse(status=status, body=body, content_type=content_type, headers=list(headers))


def text_response(text: str, status: int = 200, content_type: str | None = "text/plain; charset=utf-8") -> EmuResponse:
    """A text answer (or an empty one with content_type None)."""
    return EmuResponse(status=status, body=text.encode(), content_type=content_type)


def stream_response(
    chunks: AsyncIterator[bytes], content_type: str, headers: Iterable[tuple[str, str]] = ()
) -> EmuResponse:
    """A streamed answer."""
    return EmuResponse(status=200, content_type=content_type, stream=chunks, headers=list(headers))


Handler = Callable[[EmuRequest], Awaitable[EmuResponse]]


#: A handler as written in a subclass: a method (self, request), typed as it is.
RouteFn = TypeVar("RouteFn", bound=Callable[..., Awaitable[EmuResponse]])


def route(method: str, *paths: str) -> Callable[[RouteFn], RouteFn]:
    """Mark an emulator method as the handler of `method` on `paths`."""

    def mark(fn: RouteFn) -> RouteFn:
        existing = getattr(fn, "_routes", [])
        fn._routes = existing + [(method, p) for p in paths]  # type: ignore[attr-defined]
        return fn

    return mark


class Emulator:
    """Base ASGI app. Subclasses mark handlers with `@route` and override the hooks below."""

    #: Paths that faults with `paths=None` apply to.
    generation_paths: tuple[str, ...] = ()
    #: Headers on every answer (llama.cpp's `Server: llama.cpp`, for instance).
    default_headers: tuple[tuple[str, str], ...] = ()

    def __init__(self, config: EmulatorConfig | None = None, **settings: Any) -> None:
        self.config = config or EmulatorConfig(**settings)
        self.faults: list[Fault] = []
        self.requests: list[tuple[str, str]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.served = 0
        self._slots: asyncio.Semaphore | None = None
        self._load_lock: asyncio.Lock | None = None
        self._routes: dict[tuple[str, str], Handler] = {}
        for klass in reversed(type(self).__mro__):
            for attr, value in vars(klass).items():
                for method, path in getattr(value, "_routes", []):
                    self._routes[(method, path)] = getattr(self, attr)

    # -- configuration -------------------------------------------------------------------

    def inject(self, fault: Fault) -> None:
        """Add a failure to inject."""
        self.faults.append(fault)

    def clear_faults(self) -> None:
        """Remove every injected failure."""
        self.faults.clear()

    def model(self, name: str | None) -> EmulatedModel | None:
        """The configured model called `name` (tag-insensitive), or None."""
        if not name:
            return None
        want = name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"
        for model in self.config.models:
            have = model.name if ":" in model.name.rsplit("/", 1)[-1] else f"{model.name}:latest"
            if have == want:
                return model
        return None

    # -- hooks for subclasses --------------------------------------------------------------

    async def not_found(self, request: EmuRequest) -> EmuResponse:
        """The answer for an unknown route."""
        return text_response("404 page not found", 404)

    async def method_not_allowed(self, request: EmuRequest) -> EmuResponse:
        """The answer for a known route with the wrong method."""
        return text_response("405 method not allowed", 405)

    async def unauthorized(self, request: EmuRequest) -> EmuResponse | None:
        """An answer when the request lacks a needed API key, else None."""
        return None

    # -- behaviour helpers -----------------------------------------------------------------

    def reply_tokens(self, prompt: str, limit: int | None = None) -> list[str]:
        """The tokens of the reply to `prompt` (deterministic)."""
        text = self.config.reply
        if text is None:
            words = prompt.split()[:3]
            text = f"Hello from {self.config.name}! You said: {' '.join(words) or 'nothing'}."
        tokens = [w + " " for w in text.split(" ")]
        tokens[-1] = tokens[-1].rstrip()
        count = self.config.max_tokens if limit is None or limit < 0 else limit
        return tokens[: max(count, 0)] if count is not None else tokens

    def prompt_tokens(self, text: str) -> int:
        """A token count for a prompt (words, at least 1)."""
        return max(1, len(text.split()))

    def vector(self, text: str, dimensions: int) -> list[float]:
        """A deterministic unit vector for `text`."""
        digest = hashlib.sha256(text.encode()).digest()
        raw = [(digest[i % len(digest)] - 127.5) / 127.5 for i in range(dimensions)]
        norm = math.sqrt(sum(v * v for v in raw)) or 1.0
        return [round(v / norm, 6) for v in raw]

    async def work(self, model: EmulatedModel | None) -> float:
        """Wait for a slot and the model to load; returns the load time spent (seconds)."""
        if self.config.latency:
            await asyncio.sleep(self.config.latency)
        spent = 0.0
        if model is not None and not model.loaded:
            if self._load_lock is None:
                self._load_lock = asyncio.Lock()
            async with self._load_lock:
                if not model.loaded:
                    started = time.perf_counter()
                    if self.config.load_time:
                        await asyncio.sleep(self.config.load_time)
                    model.loaded = True
                    spent = time.perf_counter() - started
        return spent

    def slots(self) -> asyncio.Semaphore:
        """The parallel-capacity semaphore."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.config.parallel or 1_000_000)
        return self._slots

    async def pace(self) -> None:
        """Wait one token's time."""
        if self.config.token_delay:
            await asyncio.sleep(self.config.token_delay)

    # -- ASGI ------------------------------------------------------------------------------

    def _take_fault(self, path: str) -> Fault | None:
        for fault in self.faults:
            paths = fault.paths if fault.paths is not None else self.generation_paths
            if path in paths:
                if fault.times is not None:
                    fault.times -= 1
                    if fault.times <= 0:
                        self.faults.remove(fault)
                return fault
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        query: dict[str, str] = {}
        for pair in scope.get("query_string", b"").decode().split("&"):
            if pair:
                key, _, value = pair.partition("=")
                query[key] = value
        headers = {k.decode().lower(): v.decode() for k, v in scope.get("headers", [])}
        request = EmuRequest(scope["method"], scope["path"], query, headers, body)
        self.requests.append((request.method, request.path))
        request.fault = self._take_fault(request.path)
        response = await self._dispatch(request)
        await self._send(send, request, response)

    async def _dispatch(self, request: EmuRequest) -> EmuResponse:
        method = "GET" if request.method == "HEAD" else request.method
        handler = self._routes.get((request.method, request.path)) or self._routes.get((method, request.path))
        if handler is None:
            if any(path == request.path for _, path in self._routes):
                return await self.method_not_allowed(request)
            return await self.not_found(request)
        denied = await self.unauthorized(request)
        if denied is not None:
            return denied
        fault = request.fault
        if fault is not None:
            if fault.kind == "error":
                body = (
                    fault.body
                    if isinstance(fault.body, bytes)
                    else json.dumps(fault.body).encode()
                    if fault.body is not None
                    else b""
                )
                return EmuResponse(status=fault.status, body=body, content_type=fault.content_type if body else None)
            if fault.kind == "hang":
                await asyncio.sleep(fault.seconds)
                request.fault = None
        return await handler(request)

    async def _send(self, send: Send, request: EmuRequest, response: EmuResponse) -> None:
        headers = [(k.lower().encode(), v.encode()) for k, v in self.default_headers]
        if response.content_type:
            headers.append((b"content-type", response.content_type.encode()))
        headers += [(k.lower().encode(), v.encode()) for k, v in response.headers]
        if response.stream is None:
            headers.append((b"content-length", str(len(response.body)).encode()))
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        if request.fault is not None and request.fault.kind == "drop":
            raise DroppedConnection("injected: connection dropped after the headers")
        if request.method == "HEAD":
            await send({"type": "http.response.body", "body": b""})
            return
        if response.stream is None:
            await send({"type": "http.response.body", "body": response.body})
            return
        async for piece in response.stream:
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    # -- counting ----------------------------------------------------------------------------

    def enter(self) -> None:
        """Count a generation starting."""
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def leave(self) -> None:
        """Count a generation ending."""
        self.in_flight -= 1
        self.served += 1


def now_rfc3339() -> str:
    """The time now as Go writes it (RFC 3339 with nanoseconds, UTC)."""
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int((t % 1) * 1e9):09d}Z"
