"""`AsyncPool.stream_lines`: an Ollama node's NDJSON lines reach an Ollama client as they came."""

from __future__ import annotations

import json
import time

import pytest

import sollol
from sollol.errors import StreamInterruptedError
from sollol.inference import ChatRequest, Chunk, GenerateRequest
from sollol.testing.emulator import EmulatedModel, EmulatorConfig, Fault
from sollol.testing.servers import LoopbackServers
from sollol_ollama.emulator import OllamaEmulator

USER = ({"role": "user", "content": "hello there"},)


@pytest.fixture
def emulator() -> OllamaEmulator:
    return OllamaEmulator(EmulatorConfig(name="node0", models=[EmulatedModel(name="llama3.2:latest")]))


async def test_lines_pass_through_unparsed_and_the_pool_still_learns(
    emulator: OllamaEmulator, loopback_servers: LoopbackServers
) -> None:
    running = loopback_servers.start(emulator)
    async with sollol.AsyncPool([running.address], backend="ollama") as pool:
        expected = [c async for c in await pool.stream(ChatRequest(model="llama3.2", messages=USER))]
        pieces = [p async for p in await pool.stream_lines(ChatRequest(model="llama3.2", messages=USER))]
        assert all(type(p) is bytes and p.endswith(b"\n") for p in pieces)
        lines = [json.loads(line) for line in b"".join(pieces).splitlines()]
        assert [line["message"]["content"] for line in lines] == [c.text for c in expected]
        assert lines[-1]["done"] is True and all(not line["done"] for line in lines[:-1])
        assert lines[-1]["model"] == expected[-1].raw["model"]  # the node's own words, model name included
        node = pool.nodes()[0]
        assert node["served"] == 2
        generated = [p async for p in await pool.stream_lines(GenerateRequest(model="llama3.2", prompt="why"))]
        assert json.loads(b"".join(generated).splitlines()[-1])["done"] is True


async def test_other_kinds_still_give_chunks(emulator: OllamaEmulator, loopback_servers: LoopbackServers) -> None:
    running = loopback_servers.start(emulator)
    async with sollol.AsyncPool([running.address], backend="ollama") as pool:
        chunks = [
            c async for c in await pool.stream_lines(ChatRequest(model="llama3.2", messages=USER), passthrough="vllm")
        ]
        assert all(isinstance(c, Chunk) for c in chunks) and chunks[-1].done


async def test_an_inband_error_after_lines_is_never_passed_on_as_success(
    emulator: OllamaEmulator, loopback_servers: LoopbackServers
) -> None:
    running = loopback_servers.start(emulator)
    emulator.inject(Fault.stream_error(after=2, message="out of memory", paths=("/api/chat",)))
    async with sollol.AsyncPool([running.address], backend="ollama") as pool:
        got: list[bytes] = []
        with pytest.raises(StreamInterruptedError, match="out of memory"):
            async for piece in await pool.stream_lines(ChatRequest(model="llama3.2", messages=USER)):
                got.append(piece)  # type: ignore[arg-type]
        assert b"out of memory" not in b"".join(got)
        assert b"".join(got).count(b"\n") == 2  # the lines before the error were passed on


async def test_a_stream_without_its_done_line_is_an_error(
    emulator: OllamaEmulator, loopback_servers: LoopbackServers
) -> None:
    running = loopback_servers.start(emulator)
    emulator.inject(Fault.truncate(after=2, paths=("/api/chat",)))
    async with sollol.AsyncPool([running.address], backend="ollama") as pool:
        with pytest.raises(StreamInterruptedError):
            async for _ in await pool.stream_lines(ChatRequest(model="llama3.2", messages=USER)):
                pass


def test_only_lines_in_ollamas_own_framing_skip_the_decode() -> None:
    """Lines ending `"done":false}` pass unparsed; the final line, an error anywhere in the piece,
    or a line framed any other way (keys in another order) go to the full decode."""
    from sollol.pool import _ordinary_lines

    line = b'{"model":"m","message":{"role":"assistant","content":"say \\"done\\":true"},"done":false}\n'
    final = b'{"model":"m","message":{"role":"assistant","content":""},"done_reason":"stop","done":true}\n'
    assert _ordinary_lines(line * 3) == 3
    assert _ordinary_lines(line * 2 + final) == 2  # only the last line is decoded
    assert _ordinary_lines(line + b'{"error":"out of memory"}\n' + line) == -1
    assert _ordinary_lines(b'{"done":false,"model":"m"}\n' + line) == 1  # the reordered line is decoded


async def test_a_sink_gets_ordinary_lines_as_they_arrive_in_order(loopback_servers: LoopbackServers) -> None:
    """With `sink`, lines after the first go to it as they arrive; the final line still comes
    from the iterator (decoded, so the pool learns), and together they are the whole stream."""
    import sollol.transport
    from sollol.gateway.http1 import LeanTransport

    slow = OllamaEmulator(
        EmulatorConfig(name="node0", models=[EmulatedModel(name="llama3.2:latest")], token_delay=0.02)
    )
    running = loopback_servers.start(slow)
    arrived: list[tuple[str, bytes]] = []

    def sink(piece: bytes) -> bool:
        arrived.append(("sink", piece))
        return True

    previous = sollol.transport.TRANSPORT_CLASS
    sollol.transport.TRANSPORT_CLASS = LeanTransport
    try:
        async with sollol.AsyncPool([running.address], backend="ollama") as pool:
            async for piece in await pool.stream_lines(ChatRequest(model="llama3.2", messages=USER), sink=sink):
                arrived.append(("iterator", piece))  # type: ignore[arg-type]
            served = pool.nodes()[0]["served"]
    finally:
        sollol.transport.TRANSPORT_CLASS = previous
    lines = [json.loads(line) for _, piece in arrived for line in piece.splitlines()]
    assert arrived[0][0] == "iterator"  # the first piece: the gateway sends the head with it
    assert "sink" in [where for where, _ in arrived]
    assert arrived[-1][0] == "iterator" and lines[-1]["done"] is True
    assert all(not line["done"] for line in lines[:-1]) and len(lines) >= 3
    assert served == 1


async def test_a_stream_that_ends_before_its_announcement_is_delivered_is_one_record(
    loopback_servers: LoopbackServers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream's `request.routed` waits in the journal; when the stream ends before it was
    delivered, its ending takes its place (one record with the decision, at the routing time);
    when it was delivered meanwhile (the dashboard saw it running), the ending follows on its own."""
    import sollol.pool
    from sollol.activity import RequestRecord

    monkeypatch.setattr(sollol.pool, "DELIVERY_DELAY", 60.0)  # nothing goes out unless asked for
    slow = OllamaEmulator(
        EmulatorConfig(name="node0", models=[EmulatedModel(name="llama3.2:latest")], token_delay=0.01)
    )
    running = loopback_servers.start(slow)
    batches: list[list[RequestRecord]] = []

    class Batches:
        @sollol.hookimpl
        def sollol_activity_batch(self, batch: list[RequestRecord]) -> None:
            batches.append([r for r in batch if type(r) is RequestRecord])

    async with sollol.AsyncPool([running.address], backend="ollama") as pool:
        pool.plugins.add_observer(Batches(), name="batches")
        pool.deliver_activity()
        batches.clear()
        request = ChatRequest(model="llama3.2", messages=USER)
        began = time.time()
        async for _ in await pool.stream_lines(request):
            pass
        ended = time.time()
        pool.deliver_activity()
        (whole,) = batches
        assert [(r.kind, r.routed) for r in whole] == [("request.finished", True)]
        record = whole[0]
        assert record.chunks >= 3 and record.ttft is not None and record.latency is not None
        assert began <= record.at <= ended - record.latency + 0.01  # when it was routed, not when it ended

        batches.clear()
        chunks = await pool.stream_lines(request)
        await anext(chunks)
        pool.deliver_activity()  # a delivery while the stream runs: it is shown as running
        async for _ in chunks:
            pass
        pool.deliver_activity()
        assert [[(r.kind, r.routed) for r in batch] for batch in batches] == [
            [("request.routed", True)],
            [("request.finished", False)],
        ]
        assert batches[0][0].route is batches[1][0].route  # paired by their route
