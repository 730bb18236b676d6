"""SOLLOL plugin for LocalAI servers."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from sollol import hookimpl
from sollol.codec import Backend
from sollol.detection import Detection, NodeState, ProbeSet
from sollol.http import HttpRequest, HttpResponse
from sollol_localai.codec import ROUTE_NOT_FOUND, LocalAIBackend, error_fields

__all__ = ["LocalAIBackend", "detect_localai"]
__version__ = "0.1.0"

PROBES = (
    HttpRequest.get("/readyz"),
    HttpRequest.get("/healthz"),
    HttpRequest.get("/.well-known/localai.json"),
    HttpRequest.get("/version"),
    HttpRequest.get("/system"),
    HttpRequest.get("/v1/models"),
)

#: Bodies of `/healthz` and `/readyz`: empty on Echo (>= v3.8), "OK" on Fiber before.
HEALTH_BODIES = ("", "OK")


@hookimpl
def sollol_register_backends(register: Callable[[Backend], None]) -> None:
    """Register the LocalAI codec."""
    register(LocalAIBackend())


@hookimpl
def sollol_detection_probes() -> Sequence[HttpRequest]:
    """LocalAI is told by its discovery document, its health routes, `/system` and `/version`."""
    return PROBES


@hookimpl
def sollol_detect(probes: ProbeSet) -> Detection | None:
    """Claim a LocalAI server (section 2.3 step 3 of the protocol reference)."""
    return detect_localai(probes)


def _health_like(response: HttpResponse) -> bool:
    return response.status == 200 and response.text.strip() in HEALTH_BODIES


def _starting(response: HttpResponse) -> bool:
    data = response.json_object() or {}
    return response.status == 503 and data.get("status") == "starting"


def _localai_401(response: HttpResponse) -> bool:
    """LocalAI's 401: `{"error": {"code": 401, "message": ..., "type": ...}}`."""
    if response.status != 401:
        return False
    message, code, _ = error_fields(response.json_or_none())
    return message is not None and code in (401, "401")


def _discovery_document(response: HttpResponse) -> bool:
    data = response.json_object() or {}
    return response.status == 200 and ("endpoints" in data or "endpoint_groups" in data)


def detect_localai(probes: ProbeSet) -> Detection | None:
    """A LocalAI claim from the probe answers, or None.

    The discovery document (>= v4.1.1, public even with API keys) is proof. Without it,
    `/readyz` and `/healthz` must answer like LocalAI's (empty or "OK", or 503 "starting")
    and one more LocalAI trait must show: `/system` with `loaded_models` (or LocalAI's 401),
    a `/version` of the form "v4.9.0 (commit)", `/v1/models` entries without `owned_by`.
    LocalAI's Ollama imitation (`/api/version` 0.9.0, the root text) changes none of this.
    """
    if probes.any_header("server", "llama.cpp"):
        return None
    readyz, healthz = probes.get("/readyz"), probes.get("/healthz")
    system, models = probes.get("/system"), probes.get("/v1/models")
    version_data = probes.get("/version").json_object() or {}
    raw_version = version_data.get("version")
    version = raw_version if isinstance(raw_version, str) and probes.get("/version").ok else None

    traits: list[str] = []
    system_data = system.json_object() or {}
    if system.ok and "loaded_models" in system_data:
        traits.append("/system lists loaded_models")
    auth = _localai_401(system) or _localai_401(models)
    if auth:
        traits.append("LocalAI's 401 shape")
    if version is not None and " (" in version:
        traits.append(f"/version {version!r}")
    items = (models.json_object() or {}).get("data") if models.ok else None
    if (
        isinstance(items, list)
        and items
        and all(isinstance(i, Mapping) and "id" in i and "owned_by" not in i for i in items)
    ):
        traits.append("/v1/models entries without owned_by")
    for response in probes.responses.values():
        if response.status == 404 and error_fields(response.json_or_none())[0] == ROUTE_NOT_FOUND:
            traits.append("404 'Resource not found'")
            break

    starting = _starting(readyz)
    if _discovery_document(probes.get("/.well-known/localai.json")):
        confidence, reason = 95, "/.well-known/localai.json answers"
    elif (_health_like(readyz) or starting) and _health_like(healthz) and traits:
        confidence, reason = 90, "/readyz and /healthz answer like LocalAI"
    elif (_health_like(readyz) or starting) and _health_like(healthz):
        confidence, reason = 40, "/readyz and /healthz answer like LocalAI, nothing else confirms it"
    else:
        return None
    if traits:
        reason += "; " + ", ".join(traits)
    state = NodeState.LOADING if starting else NodeState.AUTH_REQUIRED if auth else NodeState.UP
    names: tuple[str, ...] = ()
    if isinstance(items, list):
        names = tuple(str(i["id"]) for i in items if isinstance(i, Mapping) and i.get("id"))
    return Detection(
        backend="localai", confidence=confidence, state=state, version=version, models=names, reason=reason
    )
