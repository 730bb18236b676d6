"""SOLLOL plugin for Ollama servers."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sollol import hookimpl
from sollol.codec import Backend
from sollol.detection import Detection, NodeState, ProbeSet
from sollol.http import HttpRequest
from sollol_ollama.codec import ROOT_TEXT, OllamaBackend

__all__ = ["OllamaBackend"]
__version__ = "0.1.0"

PROBES = (
    HttpRequest.get("/"),
    HttpRequest.get("/api/version"),
    HttpRequest.get("/readyz"),
    HttpRequest.get("/healthz"),
    HttpRequest.get("/.well-known/localai.json"),
)


@hookimpl
def sollol_register_backends(register: Callable[[Backend], None]) -> None:
    """Register the Ollama codec."""
    register(OllamaBackend())


@hookimpl
def sollol_detection_probes() -> Sequence[HttpRequest]:
    """Ollama is told by its root text, its version route, and LocalAI's routes missing."""
    return PROBES


@hookimpl
def sollol_detect(probes: ProbeSet) -> Detection | None:
    """Claim a server that says "Ollama is running" and is not LocalAI or llama.cpp.

    LocalAI can answer the root text and `/api/version`, so its own routes (`/readyz`,
    `/healthz`, `/.well-known/localai.json`) must be missing, as on a real Ollama.
    """
    if probes.any_header("server", "llama.cpp"):
        return None
    root = probes.get("/")
    if root.status != 200 or root.text.strip() != ROOT_TEXT:
        return None
    for path in ("/readyz", "/healthz", "/.well-known/localai.json"):
        if probes.get(path).status == 200:
            return None
    version_data = probes.get("/api/version").json_object() or {}
    version = version_data.get("version")
    if not isinstance(version, str):
        return None
    return Detection(
        backend="ollama",
        confidence=90,
        state=NodeState.UP,
        version=version,
        reason="root says 'Ollama is running', /api/version answers, no LocalAI routes",
    )
