"""What detection learns about a URL: the backend behind it, its version, models and state."""

from __future__ import annotations

import enum
from collections.abc import Mapping

import attrs

from sollol.http import HttpRequest, HttpResponse


class NodeState(str, enum.Enum):
    """How a node is, as far as probing can tell."""

    UP = "up"
    LOADING = "loading"
    AUTH_REQUIRED = "auth-required"
    DOWN = "down"
    UNKNOWN = "unknown"


@attrs.frozen(kw_only=True)
class Detection:
    """A plugin's claim that a server is its kind, with how sure it is (0-100)."""

    backend: str
    confidence: int = 50
    state: NodeState = NodeState.UP
    version: str | None = None
    models: tuple[str, ...] = ()
    reason: str = ""


@attrs.frozen
class ProbeSet:
    """The answers to the probe requests, keyed by "METHOD path"."""

    responses: Mapping[str, HttpResponse]

    def get(self, path: str, method: str = "GET") -> HttpResponse:
        """The answer to a probe; a probe nobody asked for reads as unreached."""
        return self.responses.get(f"{method} {path}") or HttpResponse(status=0, error="not probed")

    def any_header(self, name: str, value: str) -> bool:
        """True when any answer carries header `name` equal to `value` (case-insensitive)."""
        want = value.lower()
        return any((r.header(name) or "").lower() == want for r in self.responses.values())

    @property
    def reached(self) -> bool:
        """True when at least one probe got an HTTP answer."""
        return any(r.reached for r in self.responses.values())


def probe_key(request: HttpRequest) -> str:
    """The key a probe's answer is stored under."""
    return f"{request.method} {request.path}"
