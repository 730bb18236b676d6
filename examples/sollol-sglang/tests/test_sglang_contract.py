"""The SGLang plugin passes SOLLOL's backend contract suite against its emulator.

Subclassing `BackendContract` is all a plugin needs: the suite serves the emulator on a
loopback port and runs some forty tests against it (detection, chat, generate, embed,
streams, error mapping, inventory, activity, a pool).
"""

from __future__ import annotations

from typing import Any

import sollol_sglang
from sollol_sglang.codec import SGLangBackend
from sollol_sglang.emulator import SGLangEmulator

from sollol.testing.contract import BackendContract


class TestSGLangContract(BackendContract):
    plugin = sollol_sglang
    backend = SGLangBackend()
    emulator = SGLangEmulator
    # What SGLang's /metrics tells; every other Activity figure must stay None.
    activity_reports = frozenset({"running", "waiting", "kv_cache_usage"})

    def error_body(self, status: int, message: str) -> Any:
        # SGLang's flat error envelope.
        return {"object": "error", "message": message, "type": "BadRequestError", "param": None, "code": status}
