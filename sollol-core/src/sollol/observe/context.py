"""Which client protocol a request came in by, for observers that label by it.

The gateway's routes set `PROTOCOL` around each request; the pool emits its events in the
same task, so an observer reads the protocol there. Outside the gateway it is "python".
"""

from __future__ import annotations

from contextvars import ContextVar

PROTOCOL: ContextVar[str] = ContextVar("sollol_protocol", default="python")
