"""SOLLOL plugin for Hugging Face Text Generation Inference (TGI) servers."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sollol import hookimpl
from sollol.codec import Backend
from sollol.detection import Detection, NodeState, ProbeSet
from sollol.http import HttpRequest
from sollol_tgi.codec import ROUTER_NAME, TGIBackend

__all__ = ["TGIBackend"]
__version__ = "0.1.0"

PROBES = (HttpRequest.get("/info"),)


@hookimpl
def sollol_register_backends(register: Callable[[Backend], None]) -> None:
    """Register the TGI codec."""
    register(TGIBackend())


@hookimpl
def sollol_detection_probes() -> Sequence[HttpRequest]:
    """TGI is told by its `/info`, which stays open even behind `--api-key`."""
    return PROBES


def looks_like_tgi_info(info: Mapping[str, Any] | None) -> bool:
    """True for a TGI `/info` body of any version.

    From v2.0.3 it says `"router": "text-generation-router"`; older versions lack `router`
    but always have `model_id` and `max_total_tokens`. v2.1 renamed `max_input_length`
    to `max_input_tokens`, which does not matter here.
    """
    if not info or not isinstance(info.get("model_id"), str):
        return False
    return info.get("router") == ROUTER_NAME or "max_total_tokens" in info


@hookimpl
def sollol_detect(probes: ProbeSet) -> Detection | None:
    """Claim a server whose `/info` is TGI's (§2.3 step 2); llama.cpp's header vetoes."""
    if probes.any_header("server", "llama.cpp"):
        return None
    response = probes.get("/info")
    if response.status != 200:
        return None
    info = response.json_object()
    if info is None or not looks_like_tgi_info(info):
        return None
    routed = info.get("router") == ROUTER_NAME
    version = info.get("version")
    return Detection(
        backend="tgi",
        confidence=95 if routed else 85,
        state=NodeState.UP,
        version=version if isinstance(version, str) else None,
        models=(str(info["model_id"]),),
        reason="/info names the text-generation-router"
        if routed
        else "/info has model_id and max_total_tokens (TGI before 2.0.3)",
    )
