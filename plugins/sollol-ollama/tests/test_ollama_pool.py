"""Pools over emulated Ollama nodes on loopback ports."""

from __future__ import annotations

import asyncio
import threading

import pytest

import sollol
from sollol.errors import NoNodeForModelError, StreamInterruptedError
from sollol.testing.emulator import EmulatedModel, EmulatorConfig, Fault
from sollol.testing.servers import LoopbackServers, Running
from sollol_ollama.emulator import OllamaEmulator

USER = [{"role": "user", "content": "hello there"}]


def models() -> list[EmulatedModel]:
    return [EmulatedModel(name="llama3.2:latest"), EmulatedModel(name="all-minilm:latest", embedding=True)]


@pytest.fixture
def cluster(loopback_servers: LoopbackServers) -> tuple[list[OllamaEmulator], list[Running]]:
    emulators = [OllamaEmulator(EmulatorConfig(name=f"node{i}", models=models())) for i in range(3)]
    running = [loopback_servers.start(e, host=f"127.0.0.{i + 1}") for i, e in enumerate(emulators)]
    return emulators, running


def test_seed_form_chat_generate_embed_streamed_and_not(cluster: tuple[list[OllamaEmulator], list[Running]]) -> None:
    _, running = cluster
    nodes = [{"host": r.host, "port": str(r.port), "backend": "ollama"} for r in running]
    with sollol.OllamaPool(nodes) as pool:
        chat = pool.chat("llama3.2", USER)
        assert chat.text.startswith("Hello from node") and chat.node is not None
        assert chat.route is not None and chat.route.node == chat.node.id
        streamed = list(pool.chat("llama3.2", USER, stream=True))
        assert "".join(c.text for c in streamed).startswith("Hello from node") and streamed[-1].done
        assert pool.generate("llama3.2", "why").text.endswith("why.")
        assert "".join(c.text for c in pool.generate("llama3.2", "why", stream=True)).endswith("why.")
        vectors = pool.embed("all-minilm", ["a", "b"]).embeddings
        assert len(vectors) == 2 and len(vectors[0]) == 8


def test_mixed_pool_detects_kind_on_first_use(cluster: tuple[list[OllamaEmulator], list[Running]]) -> None:
    _, running = cluster
    with sollol.Pool([r.url for r in running]) as pool:
        assert {n["backend"] for n in pool.nodes()} == {"ollama"}
        assert pool.chat("llama3.2:latest", USER).text


async def test_concurrent_requests_spread_across_nodes(cluster: tuple[list[OllamaEmulator], list[Running]]) -> None:
    emulators, running = cluster
    for emulator in emulators:
        emulator.config.token_delay = 0.01
    async with sollol.AsyncPool([r.address for r in running], backend="ollama") as pool:
        results = await asyncio.gather(*(pool.chat("llama3.2", USER) for _ in range(30)))
    served = [e.served for e in emulators]
    assert sum(served) == 30 and len({r.node.id for r in results if r.node}) == 3
    assert min(served) >= 5, served  # least in-flight spreads concurrent work


async def test_every_request_answered_when_a_node_dies_mid_run(
    cluster: tuple[list[OllamaEmulator], list[Running]], loopback_servers: LoopbackServers
) -> None:
    emulators, running = cluster
    for emulator in emulators:
        emulator.config.token_delay = 0.005
    async with sollol.AsyncPool([r.address for r in running], backend="ollama", refresh_interval=0) as pool:
        first = [asyncio.create_task(pool.chat("llama3.2", USER)) for _ in range(12)]
        await asyncio.sleep(0)  # let them be routed before the kill
        await asyncio.to_thread(loopback_servers.stop, running[0])
        rest = [asyncio.create_task(pool.chat("llama3.2", USER)) for _ in range(24)]
        streams = [await pool.chat("llama3.2", USER, stream=True) for _ in range(6)]
        texts = [(await t).text for t in first + rest]
        for stream in streams:
            texts.append("".join([c.text async for c in stream]))
    assert len(texts) == 42 and all(t.startswith("Hello from node") for t in texts)


async def test_failover_on_error_before_first_byte(cluster: tuple[list[OllamaEmulator], list[Running]]) -> None:
    emulators, running = cluster
    for emulator in emulators:
        emulator.inject(Fault.error(500, {"error": "runner crashed"}, times=None, paths=("/api/chat",)))
    emulators[2].clear_faults()
    async with sollol.AsyncPool([r.address for r in running], backend="ollama", refresh_interval=0) as pool:
        for _ in range(5):
            result = await pool.chat("llama3.2", USER)
            assert result.node is not None and result.node.host == "127.0.0.3"
        stream = await pool.chat("llama3.2", USER, stream=True)
        chunks = [c async for c in stream]
        assert chunks[-1].node is not None and chunks[-1].node.host == "127.0.0.3"


async def test_stream_error_after_first_chunk_is_never_silent(
    cluster: tuple[list[OllamaEmulator], list[Running]],
) -> None:
    emulators, running = cluster
    emulators[0].inject(Fault.stream_error(after=2, message="out of memory", paths=("/api/chat",)))
    async with sollol.AsyncPool([running[0].address], backend="ollama", refresh_interval=0) as pool:
        stream = await pool.chat("llama3.2", USER, stream=True)
        got = []
        with pytest.raises(StreamInterruptedError, match="out of memory"):
            async for chunk in stream:
                got.append(chunk)
        assert len(got) == 2


async def test_unknown_model_lists_what_the_cluster_offers(cluster: tuple[list[OllamaEmulator], list[Running]]) -> None:
    _, running = cluster
    async with sollol.AsyncPool([r.address for r in running], backend="ollama", refresh_interval=0) as pool:
        with pytest.raises(NoNodeForModelError, match=r"all-minilm:latest, llama3.2:latest"):
            await pool.chat("mistral", USER)


async def test_sync_pool_works_inside_a_running_event_loop(cluster: tuple[list[OllamaEmulator], list[Running]]) -> None:
    # As in Jupyter: the calling thread already runs a loop.
    _, running = cluster
    asyncio.get_running_loop()
    pool = sollol.OllamaPool([r.address for r in running])
    try:
        assert pool.chat("llama3.2", USER).text
        assert "".join(c.text for c in pool.generate("llama3.2", "x", stream=True))
    finally:
        pool.close()
    assert not any(t.name == "sollol-pool" for t in threading.enumerate())


def test_abandoned_sync_stream_gives_its_slot_back(cluster: tuple[list[OllamaEmulator], list[Running]]) -> None:
    _, running = cluster
    with sollol.OllamaPool([running[0].address]) as pool:
        stream = pool.chat("llama3.2", USER, stream=True)
        next(stream)
        stream.close()
        assert [n["in_flight"] for n in pool.nodes()] == [0]


async def test_a_hanging_node_times_out_and_a_dropped_connection_is_an_error(
    cluster: tuple[list[OllamaEmulator], list[Running]],
) -> None:
    from sollol.errors import AllNodesFailedError, BackendError, NodeTimeoutError
    from sollol.transport import Timeouts

    emulators, running = cluster
    emulators[0].inject(Fault.hang(seconds=30, times=None, paths=("/api/chat",)))
    emulators[1].inject(Fault.drop(times=None, paths=("/api/chat",)))
    for index, expected in ((0, NodeTimeoutError), (1, BackendError)):
        node = running[index].address
        async with sollol.AsyncPool([node], backend="ollama", refresh_interval=0, timeouts=Timeouts(read=0.5)) as pool:
            with pytest.raises(AllNodesFailedError) as failed:
                await pool.chat("llama3.2", USER)
        assert isinstance(failed.value.last, expected), failed.value
    # With a healthy node beside them, every request is answered.
    nodes = [r.address for r in running]
    async with sollol.AsyncPool(nodes, backend="ollama", refresh_interval=0, timeouts=Timeouts(read=0.5)) as pool:
        for _ in range(4):
            result = await pool.chat("llama3.2", USER)
            assert result.node is not None and result.node.host == "127.0.0.3"
