"""SOLLOL plugin for llama.cpp's `llama-server`."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from sollol import hookimpl
from sollol.codec import Backend
from sollol.detection import Detection, NodeState, ProbeSet
from sollol.http import HttpRequest, HttpResponse
from sollol_llamacpp.codec import SERVER_HEADER, LlamaCppBackend

__all__ = ["LlamaCppBackend"]
__version__ = "0.1.0"

PROBES = (
    HttpRequest.get("/health"),
    HttpRequest.get("/props"),
    HttpRequest.get("/v1/models"),
)

#: Above the Ollama plugin's 90: llama.cpp builds of 2025 also answer `/api/tags`, `/api/show` and
#: `/api/chat`, and §2.3 of the protocol reference decides llama.cpp first for that reason.
CONFIDENCE = 100


@hookimpl
def sollol_register_backends(register: Callable[[Backend], None]) -> None:
    """Register the llama.cpp codec."""
    register(LlamaCppBackend())


@hookimpl
def sollol_detection_probes() -> Sequence[HttpRequest]:
    """llama.cpp is told by its `Server` header, `/props`, and `owned_by` in `/v1/models`."""
    return PROBES


def _loading(response: HttpResponse) -> bool:
    if response.status != 503:
        return False
    body = response.json_object() or {}
    err = body.get("error")
    if isinstance(err, Mapping):
        return err.get("type") == "unavailable_error"
    return body.get("status") == "loading model"


def _model_ids(response: HttpResponse) -> tuple[str, ...]:
    data = response.json_object() or {}
    entries = data.get("data")
    if not isinstance(entries, list):
        return ()
    return tuple(str(e["id"]) for e in entries if isinstance(e, Mapping) and e.get("id"))


@hookimpl
def sollol_detect(probes: ProbeSet) -> Detection | None:
    """Claim a server with the `Server: llama.cpp` header, llama.cpp's `/props`, or `owned_by: llamacpp`.

    The header is on every answer (404, 401 and 503 included), so a server that is loading or
    wants a key is still recognised; its state says which.
    """
    props_r, models_r, health_r = probes.get("/props"), probes.get("/v1/models"), probes.get("/health")
    props = props_r.json_object() if props_r.ok else None
    entries = (models_r.json_object() or {}).get("data") if models_r.ok else None
    reasons = []
    if probes.any_header("server", SERVER_HEADER):
        reasons.append(f"'Server: {SERVER_HEADER}' header")
    if props is not None and ("default_generation_settings" in props or props.get("role") == "router"):
        reasons.append("/props has default_generation_settings")
    if isinstance(entries, list) and any(isinstance(e, Mapping) and e.get("owned_by") == "llamacpp" for e in entries):
        reasons.append("/v1/models owned_by llamacpp")
    if not reasons:
        return None
    state = NodeState.UP
    if any(_loading(r) for r in (health_r, props_r)):
        state = NodeState.LOADING
    elif props_r.status in (401, 403) or health_r.status in (401, 403):
        state = NodeState.AUTH_REQUIRED
    elif not health_r.reached and not props_r.reached:
        state = NodeState.UNKNOWN
    version = props.get("build_info") if props else None
    models = _model_ids(models_r)
    if not models and props and isinstance(props.get("model_alias"), str) and props.get("role") != "router":
        models = (props["model_alias"],)
    return Detection(
        backend="llamacpp",
        confidence=CONFIDENCE,
        state=state,
        version=version if isinstance(version, str) else None,
        models=models,
        reason="llama.cpp: " + ", ".join(reasons),
    )
