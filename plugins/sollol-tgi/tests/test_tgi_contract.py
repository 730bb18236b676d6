"""The TGI plugin passes the backend contract suite against its emulator."""

from __future__ import annotations

from typing import Any

import sollol_tgi
from sollol.testing.contract import BackendContract
from sollol_tgi.codec import TGIBackend
from sollol_tgi.emulator import TGIEmulator

ERROR_TYPES = {400: "validation", 422: "validation", 429: "overloaded", 503: "unhealthy"}


class TestTGIContract(BackendContract):
    plugin = sollol_tgi
    backend = TGIBackend()
    emulator = TGIEmulator
    activity_reports = frozenset({"loaded", "running", "waiting", "capacity", "kv_cache_usage", "context_length"})

    def error_body(self, status: int, message: str) -> Any:
        # axum answers 401 and 404 with an empty body; TGI's own errors are {"error", "error_type"}.
        if status in (401, 404):
            return None
        return {"error": message, "error_type": ERROR_TYPES.get(status, "generation")}
