"""A toy backend and its emulator, so sollol-core's routing tests need no backend plugin.

The toy protocol: `GET /health` (200 up, 503 loading), `GET /models`, `GET /ps`, and
`POST /chat`, `/generate`, `/embed` (NDJSON when `stream` is true). It is registered as
backend "toy" through `Plugins.load(extra=[toy_plugin])`, the same hook real plugins use.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from types import SimpleNamespace
from typing import Any

from sollol import hookimpl
from sollol.activity import Activity, LoadedModel, ModelInfo
from sollol.codec import NdjsonEvents, StreamPlan, http_error, inband_error
from sollol.detection import NodeState
from sollol.errors import BackendError, ProtocolError
from sollol.http import Exchange, HttpRequest, HttpResponse, fetch
from sollol.inference import (
    ChatRequest,
    ChatResult,
    Chunk,
    EmbedRequest,
    EmbedResult,
    GenerateRequest,
    GenerateResult,
    Usage,
)
from sollol.plugins import Plugins
from sollol.testing.emulator import (
    EmulatedModel,
    Emulator,
    EmulatorConfig,
    EmuRequest,
    EmuResponse,
    json_response,
    route,
    stream_response,
    text_response,
)

# -- the codec ---------------------------------------------------------------------------------


def _usage(data: Mapping[str, Any]) -> Usage:
    return Usage(completion_tokens=data.get("tokens"), load_duration=data.get("load"))


class ToyStream:
    def __init__(self) -> None:
        self._events = NdjsonEvents()
        self._done = False

    def _chunk(self, data: Any) -> Chunk:
        error = inband_error(data)
        if error is not None:
            raise error
        if data.get("done"):
            self._done = True
            return Chunk(done=True, usage=_usage(data), model=data.get("model"), raw=data)
        return Chunk(text=data.get("text", ""), model=data.get("model"), raw=data)

    def feed(self, data: bytes) -> list[Chunk]:
        return [self._chunk(e) for e in self._events.feed(data)]

    def close(self) -> list[Chunk]:
        chunks = [self._chunk(e) for e in self._events.close()]
        if not self._done:
            raise ProtocolError("the stream ended before its final line")
        return chunks


class ToyBackend:
    name = "toy"
    default_ports = (9999,)
    operations = frozenset({"chat", "generate", "embed"})

    def health(self) -> HttpRequest:
        return HttpRequest.get("/health")

    def health_state(self, response: HttpResponse) -> NodeState:
        if not response.reached:
            return NodeState.DOWN
        if response.ok:
            return NodeState.UP
        if response.status == 503:
            return NodeState.LOADING
        return NodeState.DOWN

    def error(self, response: HttpResponse) -> BackendError:
        return http_error(response)

    def _ok(self, response: HttpResponse) -> Mapping[str, Any]:
        if not response.ok:
            raise self.error(response)
        data = response.json()
        assert isinstance(data, Mapping)
        return data

    def models(self) -> Exchange[Sequence[ModelInfo]]:
        data = self._ok((yield from fetch(HttpRequest.get("/models"))))
        return [
            ModelInfo(
                name=m["name"],
                size=m.get("size"),
                capabilities=frozenset(m["caps"]) if m.get("caps") is not None else None,
            )
            for m in data["models"]
        ]

    def activity(self) -> Exchange[Activity]:
        response = yield from fetch(HttpRequest.get("/ps"))
        if not response.ok:
            return Activity()
        data = response.json()
        return Activity(
            loaded=tuple(LoadedModel(name=n) for n in data["loaded"]),
            running=data.get("running"),
            waiting=data.get("waiting"),
            vram_total=data.get("vram_total"),
            vram_used=data.get("vram_used"),
        )

    def _body(self, request: ChatRequest | GenerateRequest, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"model": request.model, "stream": stream, **request.params}
        if isinstance(request, ChatRequest):
            body["messages"] = list(request.messages)
        else:
            body["prompt"] = request.prompt
        if request.options:
            body["options"] = dict(request.options)
        return body

    def chat(self, request: ChatRequest) -> Exchange[ChatResult]:
        data = self._ok((yield from fetch(HttpRequest.post("/chat", json=self._body(request, False)))))
        return ChatResult(model=data["model"], text=data["text"], usage=_usage(data), raw=data)

    def chat_stream(self, request: ChatRequest) -> StreamPlan:
        return StreamPlan(
            request=HttpRequest.post("/chat", json=self._body(request, True), stream=True), decoder=ToyStream
        )

    def generate(self, request: GenerateRequest) -> Exchange[GenerateResult]:
        data = self._ok((yield from fetch(HttpRequest.post("/generate", json=self._body(request, False)))))
        return GenerateResult(model=data["model"], text=data["text"], usage=_usage(data), raw=data)

    def generate_stream(self, request: GenerateRequest) -> StreamPlan:
        return StreamPlan(
            request=HttpRequest.post("/generate", json=self._body(request, True), stream=True), decoder=ToyStream
        )

    def embed(self, request: EmbedRequest) -> Exchange[EmbedResult]:
        body = {"model": request.model, "input": list(request.inputs), **request.params}
        data = self._ok((yield from fetch(HttpRequest.post("/embed", json=body))))
        return EmbedResult(model=data["model"], embeddings=data["embeddings"], raw=data)


@hookimpl
def sollol_register_backends(register: Callable[[Any], None]) -> None:
    register(ToyBackend())


toy_plugin = SimpleNamespace(__name__="toy_plugin", sollol_register_backends=sollol_register_backends)


def toy_plugins(*extra: object) -> Plugins:
    """The installed plugins plus the toy backend (and `extra` plugin objects)."""
    return Plugins.load(extra=[toy_plugin, *extra])


# -- the emulator --------------------------------------------------------------------------------


class ToyEmulator(Emulator):
    """Serves the toy protocol. `bodies` keeps every generation request body."""

    generation_paths = ("/chat", "/generate", "/embed")

    def __init__(self, config: EmulatorConfig | None = None, **settings: Any) -> None:
        super().__init__(config, **settings)
        self.bodies: list[dict[str, Any]] = []
        self.loading = False
        self.gate: asyncio.Event | None = None  # when set, generations wait for it
        self.started = 0
        # (count, the waiter's loop, its future): `arrived()` waiters, woken from the servers' thread
        self._arrivals: list[tuple[int, asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._arrivals_lock = threading.Lock()

    async def arrived(self, count: int = 1, timeout: float = 5.0) -> None:
        """Wait (on any loop) until `count` generations have reached this node."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        with self._arrivals_lock:
            if self.started >= count:
                return
            self._arrivals.append((count, loop, waiter))
        try:
            await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            raise AssertionError(f"{count} requests did not reach {self.config.name} in time") from None

    @route("GET", "/health")
    async def health(self, request: EmuRequest) -> EmuResponse:
        if self.loading:
            return json_response({"error": "loading model"}, 503)
        return text_response("ok")

    @route("GET", "/models")
    async def models(self, request: EmuRequest) -> EmuResponse:
        return json_response(
            {
                "models": [
                    {"name": m.name, "size": m.size, "caps": list(m.capabilities) if m.capabilities else None}
                    for m in self.config.models
                ]
            }
        )

    @route("GET", "/ps")
    async def ps(self, request: EmuRequest) -> EmuResponse:
        return json_response(
            {"loaded": [m.name for m in self.config.models if m.loaded], "running": self.in_flight, "waiting": 0}
        )

    async def _run(self, model: EmulatedModel) -> float:
        with self._arrivals_lock:
            self.started += 1
            due = [(loop, waiter) for count, loop, waiter in self._arrivals if count <= self.started]
            self._arrivals = [entry for entry in self._arrivals if entry[0] > self.started]
        for loop, waiter in due:
            loop.call_soon_threadsafe(_wake, waiter)
        if self.gate is not None:
            await self.gate.wait()
        return await self.work(model)

    @route("POST", "/chat", "/generate")
    async def generation(self, request: EmuRequest) -> EmuResponse:
        body = request.json()
        self.bodies.append(body)
        model = self.model(body.get("model"))
        if model is None:
            return json_response({"error": f"model '{body.get('model')}' not found"}, 404)
        tokens = self.reply_tokens(str(body.get("prompt") or body.get("messages")))
        fault = request.fault
        name = body["model"]
        if not body.get("stream"):
            async with self.slots():
                self.enter()
                try:
                    load = await self._run(model)
                    for _ in tokens:
                        await self.pace()
                finally:
                    self.leave()
            return json_response({"model": name, "text": "".join(tokens), "tokens": len(tokens), "load": load})

        async def lines() -> AsyncIterator[bytes]:
            async with self.slots():
                self.enter()
                try:
                    load = await self._run(model)
                    for index, token in enumerate(tokens):
                        if fault is not None and fault.kind in ("stream_error", "truncate") and index == fault.after:
                            if fault.kind == "stream_error":
                                yield (json.dumps({"error": fault.message}) + "\n").encode()
                            return
                        await self.pace()
                        yield (json.dumps({"model": name, "text": token}) + "\n").encode()
                    yield (
                        json.dumps({"model": name, "done": True, "tokens": len(tokens), "load": load}) + "\n"
                    ).encode()
                finally:
                    self.leave()

        return stream_response(lines(), "application/x-ndjson")

    @route("POST", "/embed")
    async def embed(self, request: EmuRequest) -> EmuResponse:
        body = request.json()
        self.bodies.append(body)
        model = self.model(body.get("model"))
        if model is None:
            return json_response({"error": "model not found"}, 404)
        return json_response({"model": body["model"], "embeddings": [self.vector(t, 4) for t in body["input"]]})


def toy(name: str, *models: str | EmulatedModel, **settings: Any) -> ToyEmulator:
    """A toy emulator called `name` serving `models` (names or EmulatedModels)."""
    built = [m if isinstance(m, EmulatedModel) else EmulatedModel(name=m) for m in models] or [
        EmulatedModel(name="llama3.2:latest")
    ]
    return ToyEmulator(EmulatorConfig(name=name, models=built, **settings))


def cluster_nodes(servers: Any, *emulators: ToyEmulator, limits: Sequence[int | None] = ()) -> Iterator[dict[str, Any]]:
    """Start each emulator on loopback; yield node specs named like the emulators."""
    for index, emulator in enumerate(emulators):
        running = servers.start(emulator)
        spec: dict[str, Any] = {"url": running.url, "backend": "toy", "name": emulator.config.name}
        if index < len(limits) and limits[index] is not None:
            spec["max_concurrency"] = limits[index]
        yield spec


# -- observing the pool ----------------------------------------------------------------------------


class Recorder:
    """An activity observer that keeps every event and lets a test wait for one."""

    __name__ = "recorder"

    def __init__(self) -> None:
        self.events: list[Any] = []
        self._changed: asyncio.Event | None = None

    @hookimpl
    def sollol_activity_event(self, event: Any) -> None:
        self.events.append(event)
        if self._changed is not None:
            self._changed.set()

    def kinds(self, kind: str) -> list[Any]:
        return [e for e in self.events if e.kind == kind]

    async def wait_for(self, check: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until `check()` holds (re-checked on each event), failing after `timeout`."""
        if self._changed is None:
            self._changed = asyncio.Event()
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while not check():
            self._changed.clear()
            remaining = end - loop.time()
            if remaining <= 0:
                raise AssertionError("the condition did not hold in time")
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    async def wait_kind(self, kind: str, count: int = 1, timeout: float = 5.0) -> None:
        await self.wait_for(lambda: len(self.kinds(kind)) >= count, timeout)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def release(servers: Any, emulator: ToyEmulator) -> None:
    """Open an emulator's gate from any thread (it lives on the servers' loop)."""
    gate = emulator.gate
    assert gate is not None
    servers._loop.call_soon_threadsafe(gate.set)


def gated(emulator: ToyEmulator) -> ToyEmulator:
    """Make generations on `emulator` wait until `release` is called."""
    emulator.gate = asyncio.Event()
    return emulator


class Ordered:
    """A policy for tests: the candidate whose id sorts first."""

    name = "ordered"

    def choose(self, candidates: Sequence[Any], request: Any, rng: Any) -> Any:
        from sollol.routing import Choice

        return Choice(node=min(candidates, key=lambda p: p.id))
