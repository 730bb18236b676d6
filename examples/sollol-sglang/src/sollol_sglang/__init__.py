"""SOLLOL plugin for SGLang servers: the three hooks a backend plugin implements."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sollol import hookimpl
from sollol.codec import Backend
from sollol.detection import Detection, NodeState, ProbeSet
from sollol.http import HttpRequest
from sollol_sglang.codec import SGLangBackend

__all__ = ["SGLangBackend"]
__version__ = "0.1.0"

#: What detection needs answered: SGLang's own model route, and the OpenAI model list.
PROBES = (HttpRequest.get("/get_model_info"), HttpRequest.get("/v1/models"))


@hookimpl
def sollol_register_backends(register: Callable[[Backend], None]) -> None:
    """Register the SGLang codec under the name "sglang"."""
    register(SGLangBackend())


@hookimpl
def sollol_detection_probes() -> Sequence[HttpRequest]:
    """The GETs that tell an SGLang server apart."""
    return PROBES


@hookimpl
def sollol_detect(probes: ProbeSet) -> Detection | None:
    """Claim a server whose `/get_model_info` or `/v1/models` says SGLang; None otherwise.

    `/get_model_info` (`model_path` and `is_generation`) is SGLang's own route; the OpenAI
    model cards of SGLang say `owned_by: "sglang"`. Anything odd is "not mine", never an error.
    """
    if probes.any_header("server", "llama.cpp"):
        return None
    info = probes.get("/get_model_info")
    data = info.json_object() if info.status == 200 else None
    if data is not None and "model_path" in data and "is_generation" in data:
        return Detection(
            backend="sglang", confidence=90, state=NodeState.UP, reason="/get_model_info answers like SGLang"
        )
    cards = (probes.get("/v1/models").json_object() or {}).get("data")
    if isinstance(cards, list) and cards and all(isinstance(c, dict) and c.get("owned_by") == "sglang" for c in cards):
        names = tuple(str(c["id"]) for c in cards if c.get("id"))
        return Detection(backend="sglang", confidence=80, models=names, reason="/v1/models cards are owned by sglang")
    return None
