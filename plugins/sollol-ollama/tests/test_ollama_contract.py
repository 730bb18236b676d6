"""The Ollama plugin passes the backend contract suite against its emulator."""

from __future__ import annotations

from typing import Any

import sollol_ollama
from sollol.testing.contract import BackendContract
from sollol_ollama.codec import OllamaBackend
from sollol_ollama.emulator import OllamaEmulator


class TestOllamaContract(BackendContract):
    plugin = sollol_ollama
    backend = OllamaBackend()
    emulator = OllamaEmulator
    activity_reports = frozenset({"loaded", "vram_used"})

    def error_body(self, status: int, message: str) -> Any:
        return {"error": message}
