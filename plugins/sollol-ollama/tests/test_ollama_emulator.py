"""The emulator looks like Ollama on the wire."""

from __future__ import annotations

import json

import httpx
import pytest

from sollol.testing.emulator import EmulatedModel, EmulatorConfig
from sollol_ollama.emulator import OllamaEmulator


@pytest.fixture
def client() -> httpx.AsyncClient:
    models = [
        EmulatedModel(name="llama3.2:latest"),
        EmulatedModel(name="all-minilm:latest", embedding=True, loaded=False),
    ]
    app = OllamaEmulator(EmulatorConfig(models=models))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ollama")


async def test_root_and_unknown_routes(client: httpx.AsyncClient) -> None:
    root = await client.get("/")
    assert root.text == "Ollama is running" and root.headers["content-type"].startswith("text/plain")
    assert "server" not in root.headers
    head = await client.head("/")
    assert head.status_code == 200 and head.content == b""
    for path in ("/health", "/readyz", "/healthz", "/info", "/props", "/version", "/metrics"):
        missing = await client.get(path)
        assert (missing.status_code, missing.text) == (404, "404 page not found"), path
    wrong = await client.get("/api/chat")
    assert (wrong.status_code, wrong.text) == (405, "405 method not allowed")


async def test_streams_by_default_as_ndjson_and_leaves_zero_counters_out(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/generate", json={"model": "llama3.2", "prompt": "why is the sky blue"})
    assert response.headers["content-type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert all(not line["done"] for line in lines[:-1]) and lines[-1]["done"] is True
    assert "load_duration" not in lines[-1]  # the model was loaded: left out, not 0
    assert lines[0]["model"] == "llama3.2"  # echoed as sent


async def test_stream_false_gives_one_json_object(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/chat", json={"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "stream": False}
    )
    data = response.json()
    assert response.headers["content-type"].startswith("application/json")
    assert data["done"] and data["message"]["content"].startswith("Hello")


async def test_error_shapes(client: httpx.AsyncClient) -> None:
    nobody = await client.post("/api/chat")
    assert (nobody.status_code, nobody.json()) == (400, {"error": "missing request body"})
    unknown = await client.post("/api/chat", json={"model": "nope", "messages": []})
    assert (unknown.status_code, unknown.json()) == (404, {"error": "model 'nope' not found"})
    wrong_kind = await client.post("/api/chat", json={"model": "all-minilm", "messages": []})
    assert wrong_kind.status_code == 400 and "does not support chat" in wrong_kind.json()["error"]


async def test_embed_and_legacy_embeddings(client: httpx.AsyncClient) -> None:
    embed = (await client.post("/api/embed", json={"model": "all-minilm", "input": ["a", "b"]})).json()
    assert len(embed["embeddings"]) == 2 and "load_duration" in embed  # cold model: it loaded
    legacy = (await client.post("/api/embeddings", json={"model": "all-minilm", "prompt": "a"})).json()
    assert legacy["embedding"] == embed["embeddings"][0]


async def test_tags_and_ps(client: httpx.AsyncClient) -> None:
    tags = (await client.get("/api/tags")).json()
    assert [m["name"] for m in tags["models"]] == ["llama3.2:latest", "all-minilm:latest"]
    ps = (await client.get("/api/ps")).json()
    assert [m["name"] for m in ps["models"]] == ["llama3.2:latest"]
    assert {"size", "size_vram", "expires_at"} <= set(ps["models"][0])
