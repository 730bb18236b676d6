"""Observability: activity observers (Prometheus metrics, the dashboard's feed, structured
logs), the generic status document, and the gateway routes that serve them.

```python
from sollol import AsyncPool
from sollol.gateway import Gateway

app = Gateway(AsyncPool(["127.0.0.1:11435", "127.0.0.1:8000"]))
# /metrics, /dashboard, /api/sollol/nodes and /api/sollol/events are on by default
```

Every observer here subscribes through the `sollol_activity_batch` hook
(`Plugins.add_observer`), the same way a third-party plugin would.
"""

from __future__ import annotations

from sollol.activity import PROTOCOL
from sollol.observe.endpoints import PATHS, Observability, mount
from sollol.observe.logs import EventLog
from sollol.observe.status import StatusFeed, node_status, redact, status_document

__all__ = [
    "PATHS",
    "PROTOCOL",
    "EventLog",
    "Observability",
    "StatusFeed",
    "mount",
    "node_status",
    "redact",
    "status_document",
]
