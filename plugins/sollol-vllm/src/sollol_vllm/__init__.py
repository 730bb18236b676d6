"""SOLLOL plugin for vLLM's OpenAI-compatible server."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from sollol import hookimpl
from sollol.codec import Backend
from sollol.detection import Detection, NodeState, ProbeSet
from sollol.http import HttpRequest, HttpResponse
from sollol_vllm.codec import FASTAPI_NOT_FOUND, UNAUTHORIZED, VLLMBackend

__all__ = ["VLLMBackend"]
__version__ = "0.1.0"

PROBES = (
    HttpRequest.get("/v1/models"),
    HttpRequest.get("/version"),
    HttpRequest.get("/health"),
    HttpRequest.get("/info"),
)

#: vLLM's version string: bare PEP 440 (`0.11.0`, `0.6.3.post1`, `0.11.1rc2.dev12+gabc`), never
#: LocalAI's `v4.9.0 (82c191a)` with a commit in parentheses.
_SEMVER = re.compile(r"^\d+\.\d+(?:\.\d+)*(?:[.+\-a-zA-Z0-9]*)$")


@hookimpl
def sollol_register_backends(register: Callable[[Backend], None]) -> None:
    """Register the vLLM codec."""
    register(VLLMBackend())


@hookimpl
def sollol_detection_probes() -> Sequence[HttpRequest]:
    """vLLM is told by its model cards, or (behind `--api-key`) by its open routes."""
    return PROBES


def _version(response: HttpResponse) -> str | None:
    data = response.json_object() if response.ok else None
    version = (data or {}).get("version")
    return version if isinstance(version, str) and _SEMVER.match(version) else None


def _vllm_cards(response: HttpResponse) -> list[str] | None:
    """The model ids when `/v1/models` has vLLM's cards.

    A card is vLLM's when it says `owned_by: vllm`, or says no owner but has `max_model_len` and
    `root`. Another owner (SGLang's cards also have `max_model_len` and `root`) is not vLLM.
    """
    data = response.json_object() if response.ok else None
    cards = [c for c in (data or {}).get("data") or () if isinstance(c, dict) and c.get("id")]
    if not cards:
        return None
    owners = {c.get("owned_by") for c in cards} - {None}
    if owners == {"vllm"} or (not owners and all("max_model_len" in c and "root" in c for c in cards)):
        return [str(c["id"]) for c in cards]
    return None


def _fastapi_404(response: HttpResponse) -> bool:
    return response.status == 404 and response.json_object() == FASTAPI_NOT_FOUND


@hookimpl
def sollol_detect(probes: ProbeSet) -> Detection | None:
    """Claim a vLLM server by its model cards; behind `--api-key`, by its open routes.

    Never claims llama.cpp (its `Server` header), TGI (its `/info`) or LocalAI (its
    `/version` carries a commit in parentheses, which the semver check rejects).
    """
    if probes.any_header("server", "llama.cpp"):
        return None
    info = probes.get("/info")
    if info.ok and "model_id" in (info.json_object() or {}):
        return None
    health = probes.get("/health")
    version = _version(probes.get("/version"))
    models = probes.get("/v1/models")
    state = NodeState.DOWN if health.status == 503 else NodeState.UP
    names = _vllm_cards(models)
    if names is not None:
        return Detection(
            backend="vllm",
            confidence=90,
            state=state,
            version=version,
            models=tuple(names),
            reason="/v1/models has vLLM's model cards (owned_by 'vllm', max_model_len)"
            + ("; /health is 503: the engine is dead" if state is NodeState.DOWN else ""),
        )
    # Behind --api-key only /v1/* is protected; /version, /health and FastAPI's 404 stay open.
    open_routes = version is not None and _fastapi_404(info)
    if not open_routes:
        return None
    if models.status == 401 and models.json_object() == UNAUTHORIZED and health.status == 200 and not health.body:
        return Detection(
            backend="vllm",
            confidence=85,
            state=NodeState.AUTH_REQUIRED,
            version=version,
            reason='/v1/models wants an API key ({"error":"Unauthorized"}); /version, /health and the '
            "FastAPI 404 are vLLM's: give the node the server's --api-key",
        )
    if health.status == 503 and not health.body:
        return Detection(
            backend="vllm",
            confidence=70,
            state=NodeState.DOWN,
            version=version,
            reason="/version and the FastAPI 404 are vLLM's, and /health is 503: the engine is dead",
        )
    return None
