"""The LocalAI emulator on loopback ports, used through a Pool (detection, requests, activity)."""

from __future__ import annotations

import asyncio
import threading

import httpx
import pytest

from sollol.activity import Activity
from sollol.errors import AllNodesFailedError, AuthenticationError, StreamInterruptedError
from sollol.sync import Pool
from sollol.testing.emulator import EmulatedModel, EmulatorConfig, Fault
from sollol.testing.servers import LoopbackServers
from sollol_localai import LocalAIBackend
from sollol_localai.emulator import LocalAIEmulator


def emulator(**settings: object) -> LocalAIEmulator:
    models = [EmulatedModel(name="qwen2.5-7b-instruct"), EmulatedModel(name="embedder", embedding=True)]
    knobs = {k: settings.pop(k) for k in list(settings) if k in ("ollama_root", "framework", "well_known", "starting")}
    return LocalAIEmulator(EmulatorConfig(models=models, **settings), **knobs)  # type: ignore[arg-type]


def test_pool_detects_and_serves(loopback_servers: LoopbackServers) -> None:
    app = emulator(name="localai-a", ollama_root=True)
    running = loopback_servers.start(app)
    with Pool([running.url], refresh_interval=0) as pool:
        (node,) = pool.nodes()
        assert (node["backend"], node["state"]) == ("localai", "up")
        assert set(pool.models()) == {"qwen2.5-7b-instruct", "embedder"}
        result = pool.chat("qwen2.5-7b-instruct", [{"role": "user", "content": "hello there"}])
        assert "localai-a" in result.text
        assert result.done_reason == "stop"
        chunks = list(pool.chat("qwen2.5-7b-instruct", [{"role": "user", "content": "hi"}], stream=True))
        assert chunks[-1].done
        assert "".join(c.text for c in chunks).startswith("Hello from localai-a")
        assert chunks[-1].usage.completion_tokens == len([c for c in chunks if c.text])
        assert pool.generate("qwen2.5-7b-instruct", "once upon").text
        assert "".join(c.text for c in pool.generate("qwen2.5-7b-instruct", "once", stream=True))
        vectors = pool.embed("embedder", ["a", "b"]).embeddings
        assert len(vectors) == 2
        assert len(vectors[0]) == 8
    assert ("POST", "/v1/chat/completions") in app.requests
    assert not any(path.startswith("/api/") and method == "POST" for method, path in app.requests)


def test_pool_fails_over_from_a_broken_node(loopback_servers: LoopbackServers) -> None:
    bad, good = emulator(name="bad"), emulator(name="good")
    bad.inject(
        Fault.error(
            500, {"error": {"code": "server_error", "message": "rpc error: backend crashed", "type": ""}}, times=None
        )
    )
    urls = [loopback_servers.start(bad).url, loopback_servers.start(good).url]
    with Pool(urls, refresh_interval=0, seed=1) as pool:
        for _ in range(3):
            assert "good" in pool.chat("qwen2.5-7b-instruct", [{"role": "user", "content": "x"}]).text


def test_mid_stream_error_reaches_the_caller(loopback_servers: LoopbackServers) -> None:
    app = emulator()
    app.inject(Fault.stream_error(after=2, message="backend died"))
    running = loopback_servers.start(app)
    with Pool([running.url], refresh_interval=0) as pool:
        with pytest.raises((StreamInterruptedError, AllNodesFailedError), match="backend died"):
            list(pool.chat("qwen2.5-7b-instruct", [{"role": "user", "content": "x"}], stream=True))


def test_api_key_through_the_pool(loopback_servers: LoopbackServers) -> None:
    running = loopback_servers.start(emulator(api_key="sekret"))
    with Pool([{"url": running.url, "api_key": "sekret"}], refresh_interval=0) as pool:
        assert pool.nodes()[0]["state"] == "up"
        assert pool.chat("qwen2.5-7b-instruct", [{"role": "user", "content": "x"}]).text
    with Pool([running.url], refresh_interval=0) as pool:
        # /readyz is public, so the node reads as up; what it refuses is everything else.
        with pytest.raises(AllNodesFailedError) as caught:
            pool.chat("qwen2.5-7b-instruct", [{"role": "user", "content": "x"}])
        assert isinstance(caught.value.last, AuthenticationError)
        assert "api_key" in str(caught.value)


def test_activity_sees_a_busy_model(loopback_servers: LoopbackServers) -> None:
    """While a stream is open, `/backend/monitor` says BUSY and the codec counts it as running."""
    release = threading.Event()

    class Gated(LocalAIEmulator):
        async def pace(self) -> None:  # every token waits until the test lets it go
            await asyncio.to_thread(release.wait, 5)

    app = Gated(
        EmulatorConfig(
            models=[EmulatedModel(name="qwen2.5-7b-instruct"), EmulatedModel(name="embedder", embedding=True)]
        )
    )
    running = loopback_servers.start(app)
    backend = LocalAIBackend()
    started = threading.Event()
    texts: list[bytes] = []

    def stream() -> None:
        body = {"model": "qwen2.5-7b-instruct", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        with httpx.stream("POST", running.url + "/v1/chat/completions", json=body, timeout=10) as answer:
            for piece in answer.iter_bytes():
                started.set()  # the role chunk came before the first token
                texts.append(piece)

    worker = threading.Thread(target=stream)
    worker.start()
    try:
        assert started.wait(5)
        activity = run_sync(running.url, backend)
        assert activity.loaded_names == frozenset({"qwen2.5-7b-instruct", "embedder"})
        assert activity.running == 1
        assert activity.waiting is None
        assert activity.vram_used == 2 * 1_000_000_000
    finally:
        release.set()
        worker.join(10)
    assert b"[DONE]" in b"".join(texts)
    assert run_sync(running.url, backend).running == 0


def run_sync(url: str, backend: LocalAIBackend) -> Activity:
    """Drive the codec's activity exchange with plain blocking httpx."""
    from sollol.http import HttpResponse

    exchange = backend.activity()
    try:
        batch = next(exchange)
        while True:
            answers = []
            for request in batch:
                got = httpx.request(request.method, url + request.path, params=list(request.params), timeout=5)
                answers.append(
                    HttpResponse(status=got.status_code, headers=tuple(got.headers.multi_items()), body=got.content)
                )
            batch = exchange.send(tuple(answers))
    except StopIteration as stop:
        value: Activity = stop.value
        return value
