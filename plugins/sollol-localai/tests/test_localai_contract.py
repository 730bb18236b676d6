"""The backend contract suite, against the LocalAI emulator."""

from __future__ import annotations

import functools
from typing import Any

import sollol_localai
from sollol.testing.contract import BackendContract
from sollol_localai import LocalAIBackend
from sollol_localai.emulator import LocalAIEmulator


class TestLocalAIContract(BackendContract):
    plugin = sollol_localai
    backend = LocalAIBackend()
    emulator = LocalAIEmulator
    #: `/system` names the resident models, `/backend/monitor` their state and GPU memory.
    activity_reports = frozenset({"loaded", "vram_used", "running"})

    def error_body(self, status: int, message: str) -> Any:
        return {"error": {"code": status, "message": message, "type": ""}}


class TestLocalAIWithOllamaAPIContract(TestLocalAIContract):
    """LocalAI >= 4.2 with the Ollama API and the `Ollama is running` root: still LocalAI, same contract."""

    emulator = functools.partial(LocalAIEmulator, ollama_root=True)
