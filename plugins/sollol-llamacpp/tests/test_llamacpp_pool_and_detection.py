"""Detection over the wire and a pool over emulated llama-servers on loopback ports."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sollol import Pool, detect
from sollol.detection import NodeState, ProbeSet
from sollol.errors import AllNodesFailedError, StreamInterruptedError
from sollol.http import HttpResponse
from sollol.testing.emulator import EmulatedModel, EmulatorConfig, Fault
from sollol.testing.servers import LoopbackServers
from sollol_llamacpp import sollol_detect
from sollol_llamacpp.emulator import LlamaCppEmulator

HEADER = (("Server", "llama.cpp"),)


@pytest.fixture
def servers() -> Iterator[LoopbackServers]:
    with LoopbackServers() as running:
        yield running


def chat_node(**kw: object) -> LlamaCppEmulator:
    return LlamaCppEmulator(EmulatorConfig(models=[EmulatedModel(name="gemma-3-270m")], parallel=2), metrics=True, **kw)  # type: ignore[arg-type]


def embed_node() -> LlamaCppEmulator:
    return LlamaCppEmulator(
        EmulatorConfig(models=[EmulatedModel(name="gemma-3-270m-embed", embedding=True, dimensions=16)])
    )


# -- detection -------------------------------------------------------------------------------


def test_detects_a_running_server(servers):
    found = detect(servers.start(chat_node()).url)
    assert (found.backend, found.state, found.version, found.models) == (
        "llamacpp",
        NodeState.UP,
        "b0-unknown",
        ("gemma-3-270m",),
    )


def test_detects_a_loading_server(servers):
    found = detect(servers.start(chat_node(loading=True)).url)
    assert (found.backend, found.state) == ("llamacpp", NodeState.LOADING)


def test_a_2025_build_with_ollama_routes_is_still_llamacpp(servers):
    found = detect(servers.start(chat_node(api_2025=True)).url)
    assert found.backend == "llamacpp"
    assert found.state is NodeState.UP


def test_a_server_wanting_a_key(servers):
    url = servers.start(chat_node(api_key="secret")).url
    assert detect(url).state is NodeState.AUTH_REQUIRED
    assert detect(url.replace("http://", "http://:secret@")).state is NodeState.UP


def test_old_builds_loading_shape_is_loading():
    loading = HttpResponse(status=503, headers=HEADER, body=b'{"status":"loading model"}')
    claim = sollol_detect(probes=ProbeSet({"GET /health": loading}))
    assert claim is not None
    assert claim.state is NodeState.LOADING


def test_owned_by_alone_is_enough_behind_a_proxy_that_drops_headers():
    models = HttpResponse(
        status=200, body=b'{"object":"list","data":[{"id":"m","object":"model","owned_by":"llamacpp"}]}'
    )
    claim = sollol_detect(probes=ProbeSet({"GET /v1/models": models}))
    assert claim is not None
    assert claim.models == ("m",)


def test_a_server_without_any_llamacpp_sign_is_not_claimed():
    models = HttpResponse(status=200, body=b'{"object":"list","data":[{"id":"m","object":"model","owned_by":"vllm"}]}')
    assert sollol_detect(probes=ProbeSet({"GET /v1/models": models, "GET /health": HttpResponse(status=200)})) is None


# -- a pool ----------------------------------------------------------------------------------------


def test_pool_over_a_chat_and_an_embedding_server(servers):
    chat_url, embed_url = servers.start(chat_node()).url, servers.start(embed_node()).url
    with Pool([chat_url, embed_url], refresh_interval=0) as pool:
        assert pool.models() == ["gemma-3-270m", "gemma-3-270m-embed"]
        answer = pool.chat("gemma-3-270m", [{"role": "user", "content": "hi there"}], options={"num_predict": 4})
        assert answer.text
        assert answer.node is not None
        assert answer.node.url == chat_url
        chunks = list(pool.chat("gemma-3-270m", [{"role": "user", "content": "hi"}], stream=True))
        assert chunks[-1].done
        assert "".join(c.text for c in chunks)
        assert pool.generate("gemma-3-270m", "Once upon", options={"num_predict": 3}).done_reason == "length"
        assert list(pool.generate("gemma-3-270m", "Once", stream=True))[-1].done
        vectors = pool.embed("gemma-3-270m-embed", ["a", "b"])
        assert len(vectors.embeddings) == 2
        assert len(vectors.embeddings[0]) == 16
        assert vectors.node is not None
        assert vectors.node.url == embed_url
        nodes = {n["url"]: n for n in pool.nodes()}
        assert nodes[chat_url]["backend"] == "llamacpp"


def test_pool_reads_llamacpp_activity(servers):
    url = servers.start(chat_node()).url
    with Pool([url], refresh_interval=0) as pool:
        (pnode,) = pool.async_pool._nodes
        assert pnode.activity is not None
        assert (pnode.activity.running, pnode.activity.capacity, pnode.activity.waiting) == (0, 2, 0)


def test_pool_skips_a_loading_node_and_uses_it_once_loaded(servers):
    loading = chat_node(loading=True)
    slow_url, ready_url = servers.start(loading).url, servers.start(chat_node()).url
    with Pool([slow_url, ready_url], refresh_interval=0) as pool:
        for _ in range(3):
            assert pool.chat("gemma-3-270m", [{"role": "user", "content": "hi"}]).node.url == ready_url  # type: ignore[union-attr]
        loading.loading = False
        pool.refresh()
        states = {n["url"]: n["state"] for n in pool.nodes()}
        assert states[slow_url] == "up"


def test_pool_fails_over_when_a_stream_fails_before_its_first_result(servers):
    broken = chat_node()
    broken.inject(Fault.stream_error(after=0, times=None))
    urls = [servers.start(broken).url, servers.start(chat_node()).url]
    with Pool(urls, refresh_interval=0, policy="round_robin") as pool:
        for _ in range(2):
            chunks = list(pool.chat("gemma-3-270m", [{"role": "user", "content": "hi"}], stream=True))
            assert chunks[-1].done
            assert chunks[-1].node.url == urls[1]


def test_an_error_after_the_first_chunks_interrupts_the_stream(servers):
    broken = chat_node()
    broken.inject(Fault.stream_error(after=2, message="slot crashed"))
    with Pool([servers.start(broken).url], refresh_interval=0) as pool:
        with pytest.raises(StreamInterruptedError, match="slot crashed"):
            list(pool.chat("gemma-3-270m", [{"role": "user", "content": "hi there friend"}], stream=True))


def test_embeddings_on_a_chat_only_server_say_how_to_enable_them(servers):
    with Pool([servers.start(chat_node()).url], refresh_interval=0) as pool:
        with pytest.raises(AllNodesFailedError, match="--embeddings"):
            pool.embed("gemma-3-270m", "a")
