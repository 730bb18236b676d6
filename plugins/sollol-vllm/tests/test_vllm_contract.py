"""The vLLM plugin passes the backend contract suite against its emulator."""

from __future__ import annotations

from typing import Any

import sollol_vllm
from sollol.testing.contract import BackendContract
from sollol_vllm.codec import VLLMBackend
from sollol_vllm.emulator import VLLMEmulator


class TestVLLMContract(BackendContract):
    plugin = sollol_vllm
    backend = VLLMBackend()
    emulator = VLLMEmulator
    activity_reports = frozenset({"loaded", "running", "waiting", "kv_cache_usage", "context_length"})

    def error_body(self, status: int, message: str) -> Any:
        # vLLM >= 0.10.1: nested, with the integer status as `code`.
        return {"error": {"message": message, "type": "BadRequestError", "param": None, "code": status}}


class TestOldVLLMContract(TestVLLMContract):
    """vLLM <= 0.10.0: the flat error object, in answers and inside streams; the old metric names."""

    @staticmethod
    def emulator(config: Any) -> VLLMEmulator:  # type: ignore[override]
        return VLLMEmulator(config, flat_errors=True, old_metrics=True)

    def error_body(self, status: int, message: str) -> Any:
        return {"object": "error", "message": message, "type": "BadRequestError", "param": None, "code": status}
