"""Structured logs of routing decisions and node state changes: an activity observer.

Each event is one record on the `sollol.events` logger, at a level fitting what happened
(a node going down or a circuit opening is a warning; a routing decision is info; a served
request is debug). The message is logfmt (`event=request.routed node=gpu1 ...`) or one
JSON object, and the event's JSON is attached as `record.sollol_event` for formatters.
`level` is the flag: events below it cost one comparison and are not formatted.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from operator import attrgetter
from typing import Any

from sollol.activity import PROTOCOL, ActivityEvent, RequestRecord
from sollol.errors import ConfigError
from sollol.observe.status import redact
from sollol.plugins import hookimpl

#: The environment variable `sollol serve` reads for the level (debug, info, warning, error, off).
LEVEL_ENV = "SOLLOL_EVENT_LOG"

OFF = logging.CRITICAL + 10

EVENT_LEVELS: Mapping[str, int] = {
    "node.up": logging.INFO,
    "node.down": logging.WARNING,
    "node.loading": logging.INFO,
    "node.auth_required": logging.WARNING,
    "node.unknown": logging.INFO,
    "circuit.opened": logging.WARNING,
    "circuit.half_open": logging.INFO,
    "circuit.closed": logging.INFO,
    "model.loaded": logging.INFO,
    "model.unloaded": logging.INFO,
    "request.routed": logging.INFO,
    "request.queued": logging.INFO,
    "request.failed": logging.WARNING,
    "request.finished": logging.DEBUG,
}

_kind = attrgetter("kind")  # of an event or a record, in C

_NAMES = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR, "off": OFF}


def parse_level(value: str | int | None, default: int = logging.WARNING) -> int:
    """A level from a flag or the environment: a name (debug ... error, off) or a number."""
    if value is None or value == "":
        return default
    if isinstance(value, int):
        return value
    text = value.strip().lower()
    if text in _NAMES:
        return _NAMES[text]
    if text.isdigit():
        return int(text)
    raise ConfigError(f"unknown event log level {value!r}; use one of {', '.join(_NAMES)}")


def _value(value: Any) -> str:
    if isinstance(value, float):
        text = f"{value:.6g}"
    elif isinstance(value, (list, tuple)):
        text = ",".join(map(str, value))
    else:
        text = str(value)
    if not text or any(c in text for c in ' "=\n'):
        return json.dumps(text)
    return text


def logfmt(fields: Mapping[str, Any]) -> str:
    """`key=value` pairs; nested mappings flattened as `key.sub=value`; None left out."""
    out: list[str] = []
    for key, value in fields.items():
        if value is None:
            continue
        if isinstance(value, Mapping):
            out.extend(f"{key}.{k}={_value(v)}" for k, v in value.items() if v is not None)
        else:
            out.append(f"{key}={_value(value)}")
    return " ".join(out)


class EventLog:
    """Logs activity events at or above `level` (a name, a number, or "off")."""

    def __init__(
        self, level: str | int | None = None, *, logger: logging.Logger | None = None, json_lines: bool = False
    ) -> None:
        self.level = parse_level(level if level is not None else os.environ.get(LEVEL_ENV))
        self.logger = logger or logging.getLogger("sollol.events")
        if self.level < OFF and (self.logger.level == logging.NOTSET or self.logger.level > self.level):
            # The flag decides what is logged, whatever the root logger's level is.
            self.logger.setLevel(self.level)
        self.json_lines = json_lines
        #: kinds logged at this level (above INFO a request's routing decision is never among them)
        self._loud = frozenset(kind for kind, level in EVENT_LEVELS.items() if level >= self.level)

    @hookimpl
    def sollol_activity_batch(self, batch: Sequence[RequestRecord | ActivityEvent]) -> None:
        """Log each event at or above the flag (records below it are never turned into events)."""
        threshold = self.level
        if threshold >= OFF:
            return
        if threshold > logging.INFO and self._loud.isdisjoint(map(_kind, batch)):
            return  # nothing at or above the flag: one pass in C, nothing built
        for entry in batch:
            kind = entry.kind
            level = EVENT_LEVELS.get(kind, logging.INFO)
            if type(entry) is RequestRecord:
                if level < logging.INFO and entry.routed:
                    level = logging.INFO  # a request.finished that carries its routing decision
                if level >= threshold:
                    self.log(entry.event(), level)
            else:
                if level < logging.INFO and entry.data.get("routed"):  # type: ignore[union-attr]
                    level = logging.INFO
                if level >= threshold:
                    self.log(entry, level)  # type: ignore[arg-type]

    def take(self, event: ActivityEvent | RequestRecord) -> None:
        """One event or record, as a batch of one."""
        self.sollol_activity_batch((event,))

    def log(self, event: ActivityEvent, level: int) -> None:
        """One event as one record at `level`."""
        if not self.logger.isEnabledFor(level):
            return
        fields: dict[str, Any] = {"event": event.kind, "node": event.node, "model": event.model}
        if event.kind.startswith("request."):
            # the pool's records carry it; an event built elsewhere is labelled where it is logged
            fields["protocol"] = event.data.get("protocol") or PROTOCOL.get()
        for key, value in event.data.items():
            if key == "protocol":
                continue
            if key == "parts" and isinstance(value, tuple):
                value = dict(value)  # (name, value) pairs as the route holds them
            fields[key] = redact(value) if isinstance(value, str) else value
        message = json.dumps(fields, default=str) if self.json_lines else logfmt(fields)
        self.logger.log(level, "%s", message, extra={"sollol_event": {**event.to_json(), **fields}})
