"""Sans-I/O HTTP values: what a backend codec asks for and what it is handed back.

A codec never opens a socket. It describes requests as `HttpRequest` values and reads
`HttpResponse` values; the core's transport does the I/O. Multi-step conversations (a
fallback endpoint, several status endpoints read at once) are written as generators that
yield tuples of requests and receive tuples of responses, see `Exchange`.
"""

from __future__ import annotations

import json as _json
from collections.abc import Generator, Mapping
from typing import Any, TypeVar

import attrs

from sollol.errors import ProtocolError

T = TypeVar("T")

#: A codec conversation: yields batches of requests (sent in parallel), receives the
#: responses in the same order, and returns a value.
Exchange = Generator[tuple["HttpRequest", ...], tuple["HttpResponse", ...], T]


@attrs.frozen(kw_only=True)
class HttpRequest:
    """One HTTP request a codec wants sent to a node."""

    method: str
    path: str
    json: Any = None
    params: tuple[tuple[str, str], ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    stream: bool = False

    @classmethod
    def get(cls, path: str, **kw: Any) -> HttpRequest:
        """A GET for `path`."""
        return cls(method="GET", path=path, **kw)

    @classmethod
    def post(cls, path: str, json: Any = None, **kw: Any) -> HttpRequest:
        """A POST of a JSON body to `path`."""
        return cls(method="POST", path=path, json=json, **kw)


@attrs.frozen(kw_only=True)
class HttpResponse:
    """A complete HTTP response, or the failure to get one (`status == 0`, `error` set)."""

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    error: str | None = None
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        """True for a 2xx answer."""
        return 200 <= self.status < 300

    @property
    def reached(self) -> bool:
        """True when a server answered at all."""
        return self.status != 0

    def header(self, name: str) -> str | None:
        """The first value of header `name` (case-insensitive), or None."""
        lname = name.lower()
        for key, value in self.headers:
            if key.lower() == lname:
                return value
        return None

    @property
    def content_type(self) -> str:
        """The media type without parameters, lower case ("" when absent)."""
        return (self.header("content-type") or "").split(";", 1)[0].strip().lower()

    @property
    def text(self) -> str:
        """The body decoded as UTF-8, with undecodable bytes replaced."""
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        """The body parsed as JSON; a malformed body raises `ProtocolError`."""
        try:
            return parse_json(self.body)
        except ValueError as exc:
            snippet = self.text[:200]
            raise ProtocolError(f"malformed JSON body (HTTP {self.status}): {snippet!r}") from exc

    def json_or_none(self) -> Any:
        """The body parsed as JSON, or None when it is not JSON."""
        if not self.body:
            return None
        try:
            return parse_json(self.body)
        except ValueError:
            return None

    def json_object(self) -> Mapping[str, Any] | None:
        """The body when it is a JSON object, else None."""
        data = self.json_or_none()
        return data if isinstance(data, dict) else None


_decoder = _json.JSONDecoder()
_decode = _decoder.decode
_scan = _decoder.scan_once  # type: ignore[attr-defined]  # the C scanner behind `decode`, minus two Python frames


def parse_json(body: bytes) -> Any:
    """`json.loads` of a UTF-8 body without its encoding detection (HTTP JSON is UTF-8; anything
    else is malformed: `UnicodeDecodeError` is a `ValueError` too).

    The document is scanned straight away; whitespace before it, or anything wrong, goes to the
    full decoder, which says what is wrong as `json.loads` would."""
    text = body.decode("utf-8")
    try:
        value, end = _scan(text, 0)
    except StopIteration:
        return _decode(text)
    if end == len(text) or not text[end:].strip(" \t\n\r"):
        return value
    return _decode(text)


def fetch(request: HttpRequest) -> Exchange[HttpResponse]:
    """Send one request inside an exchange: `resp = yield from fetch(req)`."""
    (response,) = yield (request,)
    return response


def fetch_all(*requests: HttpRequest) -> Exchange[tuple[HttpResponse, ...]]:
    """Send several requests in parallel inside an exchange."""
    responses = yield tuple(requests)
    return responses


def run_offline(exchange: Exchange[T], answer: Any) -> T:
    """Drive an exchange with a function `answer(HttpRequest) -> HttpResponse` (tests, replays)."""
    try:
        batch = next(exchange)
        while True:
            batch = exchange.send(tuple(answer(req) for req in batch))
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
