"""A pool over vLLM emulators on loopback ports: chat, generate, embed, streams, --api-key."""

from __future__ import annotations

import pytest

import sollol_vllm
from sollol import AllNodesFailedError, Pool, VLLMPool
from sollol.testing.contract import contract_plugins
from sollol.testing.emulator import EmulatedModel, EmulatorConfig
from sollol.testing.servers import LoopbackServers
from sollol_vllm.emulator import VLLMEmulator

CHAT = "Qwen/Qwen2.5-0.5B-Instruct"
EMBED = "BAAI/bge-m3"
MESSAGES = [{"role": "user", "content": "Say hello"}]
plugins = contract_plugins(sollol_vllm)


def test_pool_over_a_generation_and_a_pooling_server(loopback_servers: LoopbackServers) -> None:
    chat = loopback_servers.start(VLLMEmulator(EmulatorConfig(models=[EmulatedModel(name=CHAT)], name="chat")))
    embed = loopback_servers.start(
        VLLMEmulator(EmulatorConfig(models=[EmulatedModel(name=EMBED, embedding=True)], name="embed"))
    )
    with VLLMPool([chat.url, embed.url], plugins=plugins, refresh_interval=0) as pool:
        assert pool.models() == sorted([CHAT, EMBED])
        answer = pool.chat(CHAT, MESSAGES)
        assert answer.text.startswith("Hello from chat!")
        assert answer.node is not None
        assert answer.node.url == chat.url
        streamed = list(pool.chat(CHAT, MESSAGES, stream=True))
        assert "".join(c.text for c in streamed) == answer.text
        assert streamed[-1].done
        assert pool.generate(CHAT, "Once upon a time", options={"num_predict": 2}).done_reason == "length"
        assert "".join(c.text for c in pool.generate(CHAT, "Once", stream=True))
        vectors = pool.embed(EMBED, ["a", "b"])
        assert len(vectors.embeddings) == 2
        assert vectors.node is not None
        assert vectors.node.url == embed.url
        assert {n["backend"] for n in pool.nodes()} == {"vllm"}


def test_pool_detects_vllm_and_uses_the_api_key(loopback_servers: LoopbackServers) -> None:
    app = VLLMEmulator(EmulatorConfig(models=[EmulatedModel(name=CHAT)], api_key="secret"))
    running = loopback_servers.start(app)
    keyed = f"http://:secret@{running.address}"
    with Pool([keyed], plugins=plugins, refresh_interval=0) as pool:
        assert pool.models() == [CHAT]
        assert pool.chat(CHAT, MESSAGES).text
        assert pool.nodes()[0]["backend"] == "vllm"


def test_pool_without_the_key_says_to_give_it(loopback_servers: LoopbackServers) -> None:
    running = loopback_servers.start(VLLMEmulator(EmulatorConfig(models=[EmulatedModel(name=CHAT)], api_key="secret")))
    with VLLMPool([running.url], plugins=plugins, refresh_interval=0) as pool:
        with pytest.raises(AllNodesFailedError) as caught:
            pool.chat(CHAT, MESSAGES)
    assert "--api-key" in str(caught.value)


def test_pool_fails_over_when_a_vllm_node_is_down(loopback_servers: LoopbackServers) -> None:
    first = loopback_servers.start(VLLMEmulator(EmulatorConfig(models=[EmulatedModel(name=CHAT)], name="first")))
    second = loopback_servers.start(VLLMEmulator(EmulatorConfig(models=[EmulatedModel(name=CHAT)], name="second")))
    with VLLMPool([first.url, second.url], plugins=plugins, refresh_interval=0) as pool:
        loopback_servers.stop(first)  # a loading or stopped vLLM refuses connections
        for _ in range(3):
            assert pool.chat(CHAT, MESSAGES).text.startswith("Hello from second!")
