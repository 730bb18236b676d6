"""The LocalAI codec: the shared OpenAI codec, plus LocalAI's health, errors and activity.

LocalAI is a multi-model gateway: `/v1/models` lists every configured model (LLM, TTS,
image...), models load lazily, and what is resident is read from `/system` and the
per-model `/backend/monitor`. See `reference/backend-protocols.md` section 7.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sollol.activity import Activity, LoadedModel
from sollol.codec import http_error, int_or_none
from sollol.detection import NodeState
from sollol.errors import (
    AuthenticationError,
    BackendError,
    NotSupportedError,
    UnavailableError,
    error_for_status,
)
from sollol.http import Exchange, HttpRequest, HttpResponse, fetch, fetch_all
from sollol.openai_compat import OpenAICompatibleBackend

#: `/backend/monitor` `state` values (the backend's gRPC StatusResponse; 0 is omitted).
STATE_UNINITIALIZED = 0
STATE_BUSY = 1
STATE_READY = 2
STATE_ERROR = -1

#: The message of LocalAI's 404 for a route it does not have.
ROUTE_NOT_FOUND = "Resource not found"


def error_fields(body: Any) -> tuple[str | None, Any, str | None]:
    """(message, code, type) from `{"error": {"code", "message", "type"}}`; Nones where absent."""
    err = body.get("error") if isinstance(body, Mapping) else None
    if not isinstance(err, Mapping):
        return None, None, None
    message = err.get("message")
    kind = err.get("type")
    return (str(message) if message else None), err.get("code"), (str(kind) if kind else None)


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def loaded_names(system: Any) -> list[str]:
    """Model ids from `/system` `loaded_models` (entries with or without `backend`)."""
    entries = system.get("loaded_models") if isinstance(system, Mapping) else None
    names = []
    for entry in entries or ():
        if isinstance(entry, Mapping) and entry.get("id"):
            names.append(str(entry["id"]))
        elif isinstance(entry, str) and entry:
            names.append(entry)
    return names


class LocalAIBackend(OpenAICompatibleBackend):
    """LocalAI over its OpenAI routes, with `/readyz` for health and `/system` for activity."""

    name = "localai"
    default_ports: tuple[int, ...] = (8080,)
    health_path = "/readyz"

    # -- health ----------------------------------------------------------------------------

    def health_state(self, response: HttpResponse) -> NodeState:
        """`/readyz`: 200 up; 503 (`{"status":"starting"}` on >= 4.8) loading."""
        if not response.reached:
            return NodeState.DOWN
        if response.ok:
            return NodeState.UP
        if response.status == 503:
            return NodeState.LOADING
        if response.status in (401, 403):
            return NodeState.AUTH_REQUIRED
        return NodeState.DOWN

    # -- errors ----------------------------------------------------------------------------

    def error(self, response: HttpResponse) -> BackendError:
        """LocalAI's envelope: `code` an int or a string, `type` possibly ""; bodies may be empty."""
        if not response.reached:
            return http_error(response)
        body = response.json_or_none()
        message, code, kind = error_fields(body)
        kind = kind or (code if isinstance(code, str) and code else None)
        status = response.status
        if not response.body.strip():
            hint = " (LocalAI with LOCALAI_OPAQUE_ERRORS=true sends errors without a body; see its log)"
            if status in (401, 403):
                return AuthenticationError(
                    f"LocalAI refused the request (HTTP {status}); "
                    f"set the node's api_key to a key from LOCALAI_API_KEY{hint}",
                    status=status,
                )
            return error_for_status(status, f"HTTP {status} with an empty body{hint}")
        if message is None:
            return http_error(response)
        if status in (401, 403):
            return AuthenticationError(
                f"{message}: LocalAI needs an API key; set the node's api_key (LOCALAI_API_KEY on the server)",
                status=status,
                error_type=kind,
                body=body,
            )
        if status == 503 or code == "model_loading":
            retry = response.header("retry-after")
            after = f"; retry after {retry} s" if retry else ""
            return UnavailableError(f"{message}{after}", status=status, error_type=kind, body=body)
        if status == 404 and message == ROUTE_NOT_FOUND:
            return NotSupportedError(
                "this LocalAI build has no such route (404 Resource not found)",
                status=status,
                error_type=kind,
                body=body,
            )
        return error_for_status(status, message, error_type=kind, body=body)

    # -- activity --------------------------------------------------------------------------

    def activity(self) -> Exchange[Activity]:
        """Resident models from `/system`, and each one's state from `/backend/monitor`.

        LocalAI has no queue metric: `running` counts the loaded models that are BUSY (each
        serves one or more requests), `waiting` is unknown. Memory is what the monitors give.
        """
        system_answer = yield from fetch(HttpRequest.get("/system"))
        if not system_answer.reached or system_answer.status == 404:
            return Activity()  # unreachable, or a LocalAI from before /system: nothing known
        if not system_answer.ok:
            raise self.error(system_answer)
        system = system_answer.json_object() or {}
        names = loaded_names(system)
        monitors: Sequence[HttpResponse] = ()
        if names:
            monitors = yield from fetch_all(
                *(HttpRequest.get("/backend/monitor", params=(("model", n),)) for n in names)
            )
        loaded: list[LoadedModel] = []
        raw_monitors: dict[str, Any] = {}
        busy = 0
        unknown = 0
        vram: int | None = None
        for name, answer in zip(names, monitors, strict=True):
            data = answer.json_object() if answer.ok else None
            if data is None:
                message, _, _ = error_fields(answer.json_or_none())
                if answer.status == 500 and message and "not currently loaded" in message:
                    continue  # unloaded between the two reads
                unknown += 1
                loaded.append(LoadedModel(name=name))
                continue
            raw_monitors[name] = dict(data)
            state = int_or_none(data.get("state"))
            if state is None:
                state = STATE_UNINITIALIZED
            if state == STATE_BUSY:
                busy += 1
            memory = _mapping(data.get("memory"))
            total = int_or_none(memory.get("total"))
            gpu = int_or_none(_mapping(memory.get("breakdown")).get("gpu"))
            if gpu is not None:
                vram = (vram or 0) + gpu
            loaded.append(LoadedModel(name=name, size=total or None, size_vram=gpu))
        return Activity(
            loaded=tuple(loaded),
            vram_used=vram,
            running=None if unknown else busy,
            waiting=None,
            raw={"system": dict(system), "monitor": raw_monitors},
        )
