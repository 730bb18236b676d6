"""Recorded answers of the five known servers to detection probes, as static `ProbeSet`s.

A detection hook must claim its own server and leave the four others alone. These canned
servers let a plugin's tests check the second half without installing any other plugin or
running any other server. Each one answers the paths it serves with the bodies, headers and
content types `reference/backend-protocols.md` section 2 gives (llama.cpp's are recorded
from a real `llama-server`), and every other path with its framework's own 404.

Where a server can imitate another, the canned one does, to make the test hard: LocalAI
here has its Ollama-compatible API and the `Ollama is running` root turned on, and answers
`/api/version` with `0.9.0`, as LocalAI >= 4.2 does.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from sollol.detection import ProbeSet, probe_key
from sollol.http import HttpRequest, HttpResponse

JSON = "application/json"
GIN_JSON = "application/json; charset=utf-8"

#: The kinds with a canned server, in the order detection decides them.
CANONICAL_KINDS = ("llamacpp", "tgi", "localai", "vllm", "ollama")

#: Paths every canned probe set answers (the union of what detection recipes ask for).
CANONICAL_PATHS = (
    "/",
    "/api/version",
    "/api/tags",
    "/api/ps",
    "/info",
    "/props",
    "/slots",
    "/version",
    "/health",
    "/healthz",
    "/readyz",
    "/ping",
    "/metrics",
    "/system",
    "/.well-known/localai.json",
    "/v1/models",
    "/models",
)


def _json(obj: Any, status: int = 200, content_type: str = JSON) -> tuple[int, str | None, bytes]:
    return status, content_type, json.dumps(obj, separators=(",", ":")).encode()


def _text(
    text: str, status: int = 200, content_type: str | None = "text/plain; charset=utf-8"
) -> tuple[int, str | None, bytes]:
    return status, content_type, text.encode()


def _empty(status: int = 200) -> tuple[int, str | None, bytes]:
    return status, None, b""


@attrs.frozen(kw_only=True)
class CannedServer:
    """A server reduced to its answers to GET requests: known paths, a 404, common headers."""

    kind: str
    routes: Mapping[str, tuple[int, str | None, bytes]]
    not_found: tuple[int, str | None, bytes]
    headers: tuple[tuple[str, str], ...] = ()

    def answer(self, request: HttpRequest) -> HttpResponse:
        """The answer to one request (anything but a known GET path gets the 404)."""
        known = self.routes.get(request.path) if request.method in ("GET", "HEAD") else None
        status, content_type, body = known or self.not_found
        headers = list(self.headers)
        if content_type:
            headers.append(("content-type", content_type))
        headers.append(("content-length", str(len(body))))
        return HttpResponse(status=status, headers=tuple(headers), body=body)

    def probe_set(self, probes: Iterable[HttpRequest] = ()) -> ProbeSet:
        """Answers to `CANONICAL_PATHS` and to any further `probes`."""
        requests = {probe_key(HttpRequest.get(p)): HttpRequest.get(p) for p in CANONICAL_PATHS}
        requests.update({probe_key(r): r for r in probes})
        return ProbeSet({key: self.answer(request) for key, request in requests.items()})


# -- Ollama 0.12.6 (gin) -----------------------------------------------------------------------

_OLLAMA_TAG = {
    "name": "llama3.2:latest",
    "model": "llama3.2:latest",
    "modified_at": "2025-05-04T17:37:44.706015396-07:00",
    "size": 2019393189,
    "digest": "a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72",
    "details": {
        "parent_model": "",
        "format": "gguf",
        "family": "llama",
        "families": ["llama"],
        "parameter_size": "3.2B",
        "quantization_level": "Q4_K_M",
    },
}

OLLAMA = CannedServer(
    kind="ollama",
    routes={
        "/": _text("Ollama is running"),
        "/api/version": _json({"version": "0.12.6"}, content_type=GIN_JSON),
        "/api/tags": _json({"models": [_OLLAMA_TAG]}, content_type=GIN_JSON),
        "/api/ps": _json({"models": []}, content_type=GIN_JSON),
        "/v1/models": _json(
            {
                "object": "list",
                "data": [{"id": "llama3.2:latest", "object": "model", "created": 1746405464, "owned_by": "library"}],
            },
            content_type=GIN_JSON,
        ),
    },
    not_found=_text("404 page not found", 404),
)

# -- vLLM 0.11.0 (FastAPI on uvicorn) -----------------------------------------------------------

_VLLM_MODEL = "meta-llama/Llama-3.1-8B-Instruct"

VLLM = CannedServer(
    kind="vllm",
    routes={
        "/health": _empty(),
        "/ping": _empty(),
        "/version": _json({"version": "0.11.0"}),
        "/load": _json({"server_load": 0}),
        "/v1/models": _json(
            {
                "object": "list",
                "data": [
                    {
                        "id": _VLLM_MODEL,
                        "object": "model",
                        "created": 1733001000,
                        "owned_by": "vllm",
                        "root": _VLLM_MODEL,
                        "parent": None,
                        "max_model_len": 131072,
                        "permission": [],
                    }
                ],
            }
        ),
        "/metrics": _text(
            "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
            "# TYPE vllm:num_requests_running gauge\n"
            f'vllm:num_requests_running{{engine="0",model_name="{_VLLM_MODEL}"}} 0.0\n'
            "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
            "# TYPE vllm:num_requests_waiting gauge\n"
            f'vllm:num_requests_waiting{{engine="0",model_name="{_VLLM_MODEL}"}} 0.0\n',
            content_type="text/plain; version=0.0.4; charset=utf-8",
        ),
    },
    not_found=_json({"detail": "Not Found"}, 404),
    headers=(("server", "uvicorn"),),
)

# -- TGI 3.3.6 (axum) --------------------------------------------------------------------------------

_TGI_MODEL = "meta-llama/Llama-3.1-8B-Instruct"

TGI = CannedServer(
    kind="tgi",
    routes={
        "/": _empty(),
        "/health": _empty(),
        "/ping": _empty(),
        "/info": _json(
            {
                "model_id": _TGI_MODEL,
                "model_sha": "0e9e39f249a16976918f6564b8830bc894c89659",
                "model_pipeline_tag": "text-generation",
                "max_concurrent_requests": 128,
                "max_best_of": 2,
                "max_stop_sequences": 4,
                "max_input_tokens": 8191,
                "max_total_tokens": 8192,
                "validation_workers": 2,
                "max_client_batch_size": 4,
                "router": "text-generation-router",
                "version": "3.3.6",
                "sha": "a1b2c3d",
                "docker_label": "sha-a1b2c3d",
            }
        ),
        "/v1/models": _json(
            {"object": "list", "data": [{"id": _TGI_MODEL, "object": "model", "created": 0, "owned_by": _TGI_MODEL}]}
        ),
        "/metrics": _text(
            "# TYPE tgi_queue_size gauge\ntgi_queue_size 0\n"
            "# TYPE tgi_batch_current_size gauge\ntgi_batch_current_size 0\n"
        ),
    },
    not_found=_empty(404),
)

# -- llama.cpp llama-server (cpp-httplib), recorded from a real server ----------------------------

_LLAMA_MODELS = {
    "models": [
        {
            "name": "gemma-3-270m",
            "model": "gemma-3-270m",
            "modified_at": "",
            "size": "",
            "digest": "",
            "type": "model",
            "description": "",
            "tags": [""],
            "capabilities": ["completion"],
            "parameters": "",
            "details": {
                "parent_model": "",
                "format": "gguf",
                "family": "",
                "families": [""],
                "parameter_size": "",
                "quantization_level": "",
            },
        }
    ],
    "object": "list",
    "data": [
        {
            "id": "gemma-3-270m",
            "aliases": ["gemma-3-270m"],
            "tags": [],
            "object": "model",
            "architecture": {"input_modalities": ["text"], "output_modalities": ["text"]},
            "created": 1795962847,
            "owned_by": "llamacpp",
            "meta": {
                "vocab_type": 1,
                "n_vocab": 262144,
                "n_ctx": 1024,
                "n_ctx_train": 32768,
                "n_embd": 640,
                "n_params": 268098176,
                "size": 246587904,
                "ftype": "Q4_K - Medium",
            },
        }
    ],
}

LLAMACPP = CannedServer(
    kind="llamacpp",
    routes={
        "/": _text(
            "<!doctype html><html><head><title>llama.cpp - chat</title></head><body></body></html>",
            content_type="text/html",
        ),
        "/health": _json({"status": "ok"}, content_type=GIN_JSON),
        "/props": _json(
            {
                "default_generation_settings": {
                    "params": {"temperature": 0.800000011920929, "top_k": 40, "n_predict": -1},
                    "n_ctx": 1024,
                },
                "total_slots": 2,
                "model_alias": "gemma-3-270m",
                "model_path": "MODEL_DIR/gemma-3-270m-q4_k_m.gguf",
                "modalities": {"vision": False, "video": False, "audio": False},
                "endpoint_slots": True,
                "endpoint_props": False,
                "endpoint_metrics": True,
                "bos_token": "<bos>",
                "eos_token": "<eos>",
                "build_info": "b0-unknown",
                "is_sleeping": False,
            },
            content_type=GIN_JSON,
        ),
        "/v1/models": _json(_LLAMA_MODELS, content_type=GIN_JSON),
        "/models": _json(_LLAMA_MODELS, content_type=GIN_JSON),
        "/slots": _json(
            [
                {"id": 0, "n_ctx": 1024, "speculative": False, "is_processing": False},
                {"id": 1, "n_ctx": 1024, "speculative": False, "is_processing": False},
            ],
            content_type=GIN_JSON,
        ),
        "/metrics": _text(
            "# TYPE llamacpp:requests_processing gauge\nllamacpp:requests_processing 0\n"
            "# TYPE llamacpp:requests_deferred gauge\nllamacpp:requests_deferred 0\n",
            content_type="text/plain; version=0.0.4",
        ),
    },
    not_found=_json({"error": {"message": "File Not Found", "type": "not_found_error", "code": 404}}, 404, GIN_JSON),
    headers=(("server", "llama.cpp"), ("access-control-allow-origin", "")),
)

# -- LocalAI 4.9.0 (Echo), with its Ollama imitation switched on ----------------------------------

LOCALAI = CannedServer(
    kind="localai",
    routes={
        "/": _text("Ollama is running"),  # LOCALAI_OLLAMA_API_ROOT_ENDPOINT=true
        "/healthz": _empty(),
        "/readyz": _empty(),
        "/version": _json({"version": "v4.9.0 (82c191afadf5)"}),
        "/.well-known/localai.json": _json(
            {
                "version": "v4.9.0 (82c191afadf5)",
                "endpoints": {
                    "openai": ["/v1/chat/completions", "/v1/embeddings", "/v1/models"],
                    "ollama": ["/api/chat", "/api/tags"],
                },
                "endpoint_groups": ["openai", "ollama", "localai"],
            }
        ),
        "/system": _json(
            {
                "backends": ["llama-cpp", "whisper"],
                "loaded_models": [{"id": "qwen2.5-7b-instruct", "backend": "llama-cpp"}],
            }
        ),
        "/v1/models": _json(
            {
                "object": "list",
                "data": [{"id": "qwen2.5-7b-instruct", "object": "model"}, {"id": "whisper-1", "object": "model"}],
            }
        ),
        "/api/version": _json({"version": "0.9.0"}),
        "/api/tags": _json(
            {
                "models": [
                    {
                        "name": "qwen2.5-7b-instruct",
                        "model": "qwen2.5-7b-instruct",
                        "size": 0,
                        "digest": "",
                        "details": {},
                    }
                ]
            }
        ),
        "/api/ps": _json({"models": []}),
        "/metrics": _text(
            "# TYPE localai_api_call histogram\n", content_type="text/plain; version=0.0.4; charset=utf-8"
        ),
    },
    not_found=_json({"error": {"code": 404, "message": "Resource not found", "type": ""}}, 404),
)

#: The canned servers by kind.
CANNED_SERVERS: Mapping[str, CannedServer] = {s.kind: s for s in (LLAMACPP, TGI, LOCALAI, VLLM, OLLAMA)}


def canonical_probes(kind: str, probes: Iterable[HttpRequest] = ()) -> ProbeSet:
    """The canned answers of server `kind` to `CANONICAL_PATHS` plus `probes`."""
    try:
        server = CANNED_SERVERS[kind]
    except KeyError:
        raise KeyError(f"no canned server {kind!r}; known: {', '.join(CANONICAL_KINDS)}") from None
    return server.probe_set(probes)


#: Static probe sets, one per kind, answering `CANONICAL_PATHS`.
CANONICAL_PROBE_SETS: Mapping[str, ProbeSet] = {kind: canonical_probes(kind) for kind in CANONICAL_KINDS}
