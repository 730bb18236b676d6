"""ASGI plumbing the gateway's routes share: reading bodies, writing JSON, text and errors.

Kept to plain ASGI messages (no framework objects per request) so a request costs little
more than the JSON it carries.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from typing import Any

from sollol.http import parse_json

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON_TYPE = b"application/json; charset=utf-8"
NDJSON_TYPE = b"application/x-ndjson"
SSE_TYPE = b"text/event-stream; charset=utf-8"
TEXT_TYPE = b"text/plain; charset=utf-8"

_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False).encode


class ApiError(Exception):
    """An answer other than success, raised before the response began.

    The gateway renders it in the protocol of the route: Ollama `{"error": "..."}` or OpenAI
    `{"error": {"message", "type", "param", "code"}}`.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        kind: str | None = None,
        code: str | None = None,
        param: str | None = None,
        headers: Iterable[tuple[bytes, bytes]] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.code = code
        self.param = param
        self.headers = tuple(headers)


def dumps(obj: Any) -> bytes:
    """Compact JSON as UTF-8, the way Go's encoder frames it (no spaces)."""
    return _encode(obj).encode()


def rfc3339_now() -> str:
    """Now as RFC 3339 with nanoseconds, in UTC (Ollama's `created_at`)."""
    now = time.time_ns()
    seconds, nanos = divmod(now, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanos:09d}Z"


async def send_body(
    send: Send, status: int, body: bytes, content_type: bytes, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    """A complete response."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def send_json(send: Send, obj: Any, status: int = 200, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    """A JSON response."""
    await send_body(send, status, dumps(obj), JSON_TYPE, headers)


_SSE_HEADERS = ((b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no"))
#: a stream's headers per content type, one constant tuple each (a server may build its head once)
_STREAM_HEADERS = {
    NDJSON_TYPE: ((b"content-type", NDJSON_TYPE),),
    SSE_TYPE: ((b"content-type", SSE_TYPE), *_SSE_HEADERS),
}


async def start_stream(send: Send, content_type: bytes, extra: Iterable[tuple[bytes, bytes]] = ()) -> None:
    """Begin a 200 streamed response (chunked)."""
    headers = _STREAM_HEADERS.get(content_type) if not extra else None
    if headers is None:
        headers = ((b"content-type", content_type), *extra, *(_SSE_HEADERS if content_type == SSE_TYPE else ()))
    await send({"type": "http.response.start", "status": 200, "headers": headers})


async def send_piece(send: Send, data: bytes) -> None:
    """One piece of a streamed body."""
    await send({"type": "http.response.body", "body": data, "more_body": True})


def piece_sender(send: Send) -> Callable[[bytes], Awaitable[None]]:
    """What sends a stream's pieces: the server's own `piece` when `send` is a method of an
    object that has one (sollol.gateway.fastserver's exchanges: no ASGI message per piece),
    else `send_piece`."""
    piece: Callable[[bytes], Awaitable[None]] | None = _beside(send, "piece")
    return piece if piece is not None else functools.partial(send_piece, send)


def direct_sender(send: Send) -> Callable[[bytes], bool] | None:
    """The server's way to write a started stream's piece from plain code, when `send` is a
    method of an object that offers one (`piece_now`: sollol.gateway.fastserver), else None.
    It returns False for a piece it cannot write at once (which then goes through `send`)."""
    direct: Callable[[bytes], bool] | None = _beside(send, "piece_now")
    return direct


def _beside(send: Send, name: str) -> Any:
    """The attribute `name` of the object `send` is a method of (None when it has none)."""
    return getattr(getattr(send, "__self__", None), name, None)


async def end_stream(send: Send) -> None:
    """Finish a streamed body."""
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def header_values(scope: Scope) -> tuple[bytes | None, bytes | None, bytes | None]:
    """(content-length, authorization, x-api-key) from the request headers, in one pass."""
    length = auth = key = None
    for name, value in scope["headers"]:
        if name == b"content-length":
            length = value
        elif name == b"authorization":
            auth = value
        elif name == b"x-api-key":
            key = value
    return length, auth, key


async def read_body(receive: Receive, declared: bytes | None, limit: int) -> bytes:
    """The whole request body, refusing (413) anything above `limit` bytes."""
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise ApiError(400, "invalid Content-Length header") from None
        if size > limit:
            raise ApiError(413, f"request body is {size} bytes; the limit is {limit} bytes (raise it with --max-body)")
    message = await receive()
    body = message.get("body", b"")
    if not message.get("more_body", False):
        if len(body) > limit:
            raise ApiError(413, f"request body exceeds the limit of {limit} bytes (raise it with --max-body)")
        return bytes(body)
    parts = [body]
    total = len(body)
    while message.get("more_body", False):
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ApiError(499, "request canceled")
        piece = message.get("body", b"")
        total += len(piece)
        if total > limit:
            raise ApiError(413, f"request body exceeds the limit of {limit} bytes (raise it with --max-body)")
        parts.append(piece)
    return b"".join(parts)


def parse_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object; 400 with the reason otherwise."""
    if not body.strip():
        raise ApiError(400, "missing request body")
    try:
        data = parse_json(body)
    except ValueError as exc:
        raise ApiError(400, f"invalid JSON in the request body: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"the request body must be a JSON object, not {type(data).__name__}")
    return data


def require_model(body: Mapping[str, Any]) -> str:
    """The `model` field, which every generation route needs."""
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise ApiError(400, "model is required", param="model")
    return model
