"""The llama.cpp plugin passes the backend contract suite against its emulator.

llama-server serves one model per process, so the target is two emulated servers, as a real
deployment is: one for chat and completions (`--metrics`), one started with `--embeddings`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import pytest

import sollol_llamacpp
from sollol.testing.contract import BackendContract, ContractTarget
from sollol.testing.emulator import EmulatedModel, EmulatorConfig
from sollol.testing.servers import LoopbackServers
from sollol_llamacpp.codec import LlamaCppBackend
from sollol_llamacpp.emulator import LlamaCppEmulator

#: The error type llama.cpp's `format_error_response` gives each status.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    501: "not_supported_error",
    503: "unavailable_error",
}


def llamacpp_error_body(status: int, message: str) -> Any:
    """llama.cpp's own error envelope."""
    return {"error": {"code": status, "message": message, "type": ERROR_TYPES.get(status, "server_error")}}


class TestLlamaCppContract(BackendContract):
    plugin = sollol_llamacpp
    backend = LlamaCppBackend()
    emulator = LlamaCppEmulator
    activity_reports: ClassVar[frozenset[str]] = frozenset(
        {"loaded", "running", "waiting", "capacity", "context_length"}
    )

    @pytest.fixture(scope="class")
    @classmethod
    def contract_target(cls) -> Iterator[ContractTarget]:
        """A chat server with `--metrics` and an embeddings server, both emulated."""
        chat = LlamaCppEmulator(EmulatorConfig(models=[EmulatedModel(name=cls.chat_model)], parallel=2), metrics=True)
        embed = LlamaCppEmulator(
            EmulatorConfig(models=[EmulatedModel(name=cls.embed_model, embedding=True)]), metrics=True
        )
        with LoopbackServers() as servers:
            chat_url, embed_url = servers.start(chat).url, servers.start(embed).url
            yield ContractTarget(
                chat_url=chat_url,
                chat_model=cls.chat_model,
                embed_url=embed_url,
                embed_model=cls.embed_model,
                emulator=chat,
            )

    def error_body(self, status: int, message: str) -> Any:
        return llamacpp_error_body(status, message)
