"""The TGI emulator on a loopback port: a pool detects it and serves through the codec; activity is live."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

import pytest

import sollol_tgi
from sollol.errors import AllNodesFailedError, NoNodeForModelError
from sollol.inference import ChatRequest, GenerateRequest
from sollol.node import parse_node
from sollol.plugins import Plugins
from sollol.sync import Pool
from sollol.testing.contract import contract_plugins
from sollol.testing.emulator import EmulatedModel, EmulatorConfig, Fault
from sollol.testing.servers import LoopbackServers, Running
from sollol.transport import Transport
from sollol_tgi.codec import TGIBackend
from sollol_tgi.emulator import TGIEmulator

MODEL = "meta-llama/Llama-3.2-1B-Instruct"


@pytest.fixture
def served() -> Iterator[tuple[TGIEmulator, Running]]:
    app = TGIEmulator(
        EmulatorConfig(models=[EmulatedModel(name=MODEL)], reply="one two three four five six", parallel=1)
    )
    with LoopbackServers() as servers:
        yield app, servers.start(app)


@pytest.fixture
def plugins() -> Plugins:
    return contract_plugins(sollol_tgi)


def test_entry_point_registers_the_backend() -> None:
    loaded = Plugins.load()
    assert "tgi" in loaded.backends
    assert isinstance(loaded.backends["tgi"], TGIBackend)


def test_pool_detects_and_serves(served: tuple[TGIEmulator, Running], plugins: Plugins) -> None:
    app, running = served
    with Pool([running.url], plugins=plugins, refresh_interval=0) as pool:
        chat = pool.chat(MODEL, [{"role": "user", "content": "hi"}], options={"temperature": 0, "top_p": 1.0})
        assert chat.text == "one two three four five six"
        assert chat.done_reason == "stop"
        assert chat.node is not None
        assert chat.node.backend == "tgi"
        streamed = list(pool.chat(MODEL, [{"role": "user", "content": "hi"}], stream=True))
        assert "".join(c.text for c in streamed) == chat.text
        assert streamed[-1].done
        generated = pool.generate(MODEL, "Once", options={"num_predict": 3, "temperature": 0, "top_k": 0})
        assert generated.text == "one two three "
        assert generated.done_reason == "length"
        assert generated.usage.completion_tokens == 3
        pieces = list(pool.generate(MODEL, "Once", stream=True, options={"stop": ["three"]}))
        assert "".join(c.text for c in pieces) == "one two three "
        assert pieces[-1].done_reason == "stop"
        with pytest.raises(NoNodeForModelError, match="embed"):
            pool.embed(MODEL, "text")
        (node,) = pool.nodes()
        assert node["backend"] == "tgi"
    assert ("POST", "/generate") in app.requests
    assert ("POST", "/generate_stream") in app.requests
    assert ("POST", "/v1/chat/completions") in app.requests


def test_pool_with_api_key(plugins: Plugins) -> None:
    app = TGIEmulator(EmulatorConfig(models=[EmulatedModel(name=MODEL)], api_key="secret"))
    with LoopbackServers() as servers:
        running = servers.start(app)
        node = {"url": running.url, "api_key": "secret"}
        with Pool([node], plugins=plugins, refresh_interval=0) as pool:
            assert pool.generate(MODEL, "hi").text
        with (
            Pool([running.url], plugins=plugins, refresh_interval=0, max_attempts=1) as pool,
            pytest.raises(AllNodesFailedError) as caught,
        ):
            pool.generate(MODEL, "hi")
        assert "api_key" in str(caught.value)


def test_dropped_connection_fails_over_to_nothing(served: tuple[TGIEmulator, Running], plugins: Plugins) -> None:
    app, running = served
    app.inject(Fault.drop(paths=("/generate",)))
    with Pool([running.url], plugins=plugins, refresh_interval=0, max_attempts=1) as pool:
        with pytest.raises(AllNodesFailedError):
            pool.generate(MODEL, "hi")


def test_activity_sees_running_and_waiting(served: tuple[TGIEmulator, Running]) -> None:
    app, running = served
    app.config.token_delay = 0.05
    backend = TGIBackend()
    node = parse_node(running.url)

    async def wait_for(condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 2
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.005)

    async def go() -> None:
        transport = Transport()
        try:
            idle = await transport.run(node, backend.activity(), tolerant=True)
            assert (idle.running, idle.waiting, idle.capacity) == (0, 0, 128)

            async def consume(request: GenerateRequest | ChatRequest) -> None:
                plan = (
                    backend.generate_stream(request)
                    if isinstance(request, GenerateRequest)
                    else backend.chat_stream(request)
                )
                async with transport.stream(node, plan.request) as response:
                    decoder = plan.decoder()
                    async for piece in response.pieces():
                        decoder.feed(piece)
                    decoder.close()

            first = asyncio.create_task(consume(GenerateRequest(model=MODEL, prompt="a")))
            second = asyncio.create_task(consume(ChatRequest(model=MODEL, messages=[{"role": "user", "content": "b"}])))
            await wait_for(lambda: app.in_flight == 1 and app.queued == 1, "one running, one queued")
            busy = await transport.run(node, backend.activity(), tolerant=True)
            assert (busy.running, busy.waiting) == (1, 1)
            assert busy.kv_cache_usage is not None
            assert busy.kv_cache_usage > 0
            await asyncio.gather(first, second)
        finally:
            await transport.aclose()

    asyncio.run(go())
