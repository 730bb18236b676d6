"""The shape of a backend codec, and the shared pieces codecs are built from.

A backend is any object with the attributes of `Backend` (duck typing; the Protocol only
documents and type-checks the shape). It builds requests and reads responses, and never
does I/O: see `sollol.http`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import attrs

from sollol.activity import Activity, ModelInfo
from sollol.detection import NodeState
from sollol.errors import BackendError, ProtocolError, StreamError, error_for_status
from sollol.http import Exchange, HttpRequest, HttpResponse, parse_json
from sollol.inference import (
    ChatRequest,
    ChatResult,
    Chunk,
    EmbedRequest,
    EmbedResult,
    GenerateRequest,
    GenerateResult,
    ToolCall,
)


class StreamDecoder(Protocol):
    """Turns the bytes of a streamed body into chunks, incrementally."""

    def feed(self, data: bytes) -> list[Chunk]:
        """Chunks completed by `data`. An in-band error raises `StreamError`."""

    def close(self) -> list[Chunk]:
        """Chunks left at the end. A stream without its final event raises `ProtocolError`."""


@attrs.frozen(kw_only=True)
class StreamPlan:
    """How to stream: the request to send and a factory for the decoder of its body."""

    request: HttpRequest
    decoder: Callable[[], StreamDecoder]


@runtime_checkable
class Backend(Protocol):
    """A backend codec. `name` is the kind ("ollama"); `operations` what it can serve."""

    name: str
    default_ports: tuple[int, ...]
    operations: frozenset[str]

    def health(self) -> HttpRequest:
        """The cheap liveness request; it must never run a generation or load a model."""

    def health_state(self, response: HttpResponse) -> NodeState:
        """Read the liveness answer."""

    def models(self) -> Exchange[Sequence[ModelInfo]]:
        """The models the node can serve."""

    def activity(self) -> Exchange[Activity]:
        """What the node has loaded and is doing."""

    def chat(self, request: ChatRequest) -> Exchange[ChatResult]:
        """A non-streamed chat."""

    def chat_stream(self, request: ChatRequest) -> StreamPlan:
        """A streamed chat."""

    def generate(self, request: GenerateRequest) -> Exchange[GenerateResult]:
        """A non-streamed completion."""

    def generate_stream(self, request: GenerateRequest) -> StreamPlan:
        """A streamed completion."""

    def embed(self, request: EmbedRequest) -> Exchange[EmbedResult]:
        """Embeddings."""

    def error(self, response: HttpResponse) -> BackendError:
        """The error a non-2xx answer means."""


# ---------------------------------------------------------------------------------------
# Incremental framing decoders


class LineSplitter:
    """Splits a byte stream into lines, keeping a partial line until its end arrives."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[bytes]:
        """Complete lines in `data` (without their line ends)."""
        if not self._buffer and data.endswith(b"\n") and data.count(b"\n") == 1:
            return [data[:-1].rstrip(b"\r")]  # one whole line, the usual case
        self._buffer += data
        if b"\n" not in self._buffer:
            return []
        *lines, self._buffer = self._buffer.split(b"\n")
        return [line.rstrip(b"\r") for line in lines]

    def rest(self) -> bytes:
        """What is left after the last line end."""
        rest, self._buffer = self._buffer, b""
        return rest


class NdjsonEvents:
    """Newline-delimited JSON: one object per line, blank lines ignored."""

    def __init__(self) -> None:
        self._lines = LineSplitter()

    def feed(self, data: bytes) -> list[Any]:
        """Objects completed by `data`."""
        return [_loads(line) for line in self._lines.feed(data) if line.strip()]

    def close(self) -> list[Any]:
        """An object left on a last line without a newline."""
        rest = self._lines.rest()
        return [_loads(rest)] if rest.strip() else []


@attrs.frozen
class SseEvent:
    """One server-sent event."""

    data: str
    event: str | None = None


class SseEvents:
    """Server-sent events per the spec: `data:` with or without a space, comments skipped.

    TGI writes `data:{...}` without the space and sends `:` keep-alive comments; a parser
    that looks for `data: ` drops all of its events.
    """

    def __init__(self) -> None:
        self._lines = LineSplitter()
        self._data: list[str] = []
        self._event: str | None = None

    def feed(self, data: bytes) -> list[SseEvent]:
        """Events completed by `data`."""
        events: list[SseEvent] = []
        for raw in self._lines.feed(data):
            event = self._line(raw.decode("utf-8", "replace"))
            if event is not None:
                events.append(event)
        return events

    def close(self) -> list[SseEvent]:
        """An event left without its closing blank line."""
        rest = self._lines.rest()
        events = []
        if rest:
            event = self._line(rest.decode("utf-8", "replace"))
            if event is not None:
                events.append(event)
        event = self._line("")
        if event is not None:
            events.append(event)
        return events

    def _line(self, line: str) -> SseEvent | None:
        if line == "":
            if not self._data:
                self._event = None
                return None
            event = SseEvent(data="\n".join(self._data), event=self._event)
            self._data, self._event = [], None
            return event
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        return None


def _loads(line: bytes | str) -> Any:
    try:
        return parse_json(line) if type(line) is bytes else json.loads(line)
    except ValueError:
        text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
        raise ProtocolError(f"malformed stream line: {text[:200]!r}") from None


def sse_json(event: SseEvent) -> Any:
    """The JSON payload of an SSE event."""
    return _loads(event.data)


# ---------------------------------------------------------------------------------------
# Errors


def error_message(body: Any, fallback: str) -> tuple[str, str | None]:
    """(message, type) from any of the error envelopes the five servers use.

    Handles `{"error": "msg"}`, `{"error": "msg", "error_type": t}`, nested
    `{"error": {"message", "type", "code"}}`, vLLM's flat `{"object": "error", ...}`,
    FastAPI's `{"detail": ...}`, and TGI's `{"error": {"message", "http_status_code"}}`.
    """
    if isinstance(body, Mapping):
        err = body.get("error")
        if isinstance(err, str):
            kind = body.get("error_type")
            return err, kind if isinstance(kind, str) else None
        if isinstance(err, Mapping):
            msg = err.get("message")
            kind = err.get("type")
            return (str(msg) if msg else fallback), (str(kind) if kind else None)
        if body.get("object") == "error" and body.get("message"):
            kind = body.get("type")
            return str(body["message"]), str(kind) if kind else None
        if "detail" in body:
            return str(body["detail"]), None
        if "message" in body:
            return str(body["message"]), None
    return fallback, None


def http_error(response: HttpResponse) -> BackendError:
    """A `BackendError` for a non-2xx answer, from whatever envelope it carries."""
    if not response.reached:
        from sollol.errors import ConnectError

        return ConnectError(response.error or "no answer")
    text = response.text.strip()
    body = response.json_or_none()
    message, kind = error_message(body, text[:300] or f"HTTP {response.status} with an empty body")
    return error_for_status(response.status, message, error_type=kind, body=body)


def inband_error(payload: Any) -> BackendError | None:
    """The error carried by a stream event, or None for a normal event."""
    if type(payload) is dict:  # what JSON gives: no ABC check (it costs a Python call)
        if payload.get("error") is None:
            return None
    elif not isinstance(payload, Mapping) or payload.get("error") is None:
        return None
    message, kind = error_message(payload, "error in stream")
    status = 0
    err = payload.get("error")
    if isinstance(err, Mapping):
        for key in ("http_status_code", "code"):
            if isinstance(err.get(key), int):
                status = int(err[key])
                break
    elif isinstance(payload.get("code"), int):
        status = int(payload["code"])
    return StreamError(message, status=status, error_type=kind, body=payload)


# ---------------------------------------------------------------------------------------
# Model names


def model_key(name: str) -> str:
    """The form names are compared in: `llama3.2` and `llama3.2:latest` are one model."""
    name = name.strip()
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last else f"{name}:latest"


def same_model(a: str, b: str) -> bool:
    """True when two names denote the same model, the way users write them."""
    return model_key(a) == model_key(b)


def json_object(response: HttpResponse, error: Callable[[HttpResponse], BackendError]) -> Mapping[str, Any]:
    """The JSON object of a 2xx answer. A non-2xx answer raises `error(response)`, a body
    that is not an object raises `ProtocolError`, an error inside a 200 raises it."""
    if not response.ok:
        raise error(response)
    data = response.json()
    if not isinstance(data, Mapping):
        raise ProtocolError(f"expected a JSON object, got {type(data).__name__}")
    found = inband_error(data)
    if found is not None:
        raise found
    return data


def tool_calls_of(message: Mapping[str, Any]) -> tuple[ToolCall, ...]:
    """A message's tool calls as `ToolCall`s, whether `arguments` is a JSON object
    (Ollama) or a JSON string (the OpenAI API); unparsable strings are kept under `_raw`."""
    calls = []
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except ValueError:
                arguments = {"_raw": arguments}
        calls.append(
            ToolCall(
                name=str(function.get("name", "")),
                arguments=arguments if isinstance(arguments, Mapping) else {},
                id=call.get("id"),
            )
        )
    return tuple(calls)


def seconds_from_ns(value: Any) -> float | None:
    """Nanoseconds (Ollama's unit) to seconds; None when absent."""
    return value / 1e9 if isinstance(value, (int, float)) else None


def int_or_none(value: Any) -> int | None:
    """An int when the value is a number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return int(value)


def iter_chunks(decoder: StreamDecoder, body: bytes, piece: int = 7) -> Iterator[Chunk]:
    """Feed `body` to `decoder` in small pieces (tests of incremental decoding)."""
    for start in range(0, len(body), piece):
        yield from decoder.feed(body[start : start + piece])
    yield from decoder.close()
