"""TGI detection: old and new `/info` shapes claimed, the four other kinds and odd answers left alone."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

import sollol_tgi
from sollol.detect import detect_async
from sollol.detection import NodeState, ProbeSet
from sollol.http import HttpResponse
from sollol.plugins import Plugins
from sollol.testing.canonical import CANONICAL_KINDS, canonical_probes
from sollol.testing.contract import contract_plugins
from sollol.testing.emulator import EmulatedModel, EmulatorConfig
from sollol.testing.servers import LoopbackServers
from sollol_tgi.emulator import TGIEmulator

VERSIONS = ("3.3.6", "2.2.0", "2.0.4", "2.0.2", "1.4.5")


def info_probes(info: Any, headers: tuple[tuple[str, str], ...] = (("content-type", "application/json"),)) -> ProbeSet:
    body = info if isinstance(info, bytes) else json.dumps(info).encode()
    return ProbeSet({"GET /info": HttpResponse(status=200, headers=headers, body=body)})


def emulated_info(version: str) -> dict[str, Any]:
    config = EmulatorConfig(models=[EmulatedModel(name="bigscience/bloom-560m", context_length=2048)])
    return TGIEmulator(config, tgi_version=version).info()


def test_probes() -> None:
    assert [(p.method, p.path) for p in sollol_tgi.sollol_detection_probes()] == [("GET", "/info")]


@pytest.mark.parametrize("version", VERSIONS)
def test_claims_every_info_shape(version: str) -> None:
    found = sollol_tgi.sollol_detect(probes=info_probes(emulated_info(version)))
    assert found is not None
    assert found.backend == "tgi"
    assert found.version == version
    assert found.models == ("bigscience/bloom-560m",)
    assert found.state is NodeState.UP
    routed = version >= "2.0.3"
    assert found.confidence == (95 if routed else 85)


def test_claims_the_canned_tgi() -> None:
    found = sollol_tgi.sollol_detect(probes=canonical_probes("tgi"))
    assert found is not None
    assert found.backend == "tgi"


@pytest.mark.parametrize("kind", [k for k in CANONICAL_KINDS if k != "tgi"])
def test_leaves_the_other_kinds_alone(kind: str) -> None:
    assert sollol_tgi.sollol_detect(probes=canonical_probes(kind)) is None


@pytest.mark.parametrize(
    "info",
    [
        {"model_id": "x"},  # neither router nor max_total_tokens
        {"router": "text-generation-router"},  # no model_id
        {"model_id": 3, "max_total_tokens": 10},
        {"model_id": "x", "router": "some-other-router"},
        [1, 2],
        b"<html>not json</html>",
    ],
)
def test_ignores_lookalikes(info: Any) -> None:
    assert sollol_tgi.sollol_detect(probes=info_probes(info)) is None


def test_llamacpp_header_vetoes() -> None:
    headers = (("content-type", "application/json"), ("server", "llama.cpp"))
    assert sollol_tgi.sollol_detect(probes=info_probes(emulated_info("3.3.6"), headers)) is None


def test_non_200_info_is_not_claimed() -> None:
    probes = ProbeSet({"GET /info": HttpResponse(status=404)})
    assert sollol_tgi.sollol_detect(probes=probes) is None
    assert sollol_tgi.sollol_detect(probes=ProbeSet({})) is None


@pytest.mark.parametrize("version", ["3.3.6", "2.0.2"])
def test_detects_emulated_tgi_over_loopback_even_with_api_key(version: str) -> None:
    plugins: Plugins = contract_plugins(sollol_tgi)
    app = TGIEmulator(EmulatorConfig(models=[EmulatedModel(name="org/model")], api_key="secret"), tgi_version=version)
    with LoopbackServers() as servers:
        running = servers.start(app)
        (found,) = asyncio.run(detect_async(running.url, plugins=plugins))
    assert found.backend == "tgi"
    assert found.version == version
    assert found.state is NodeState.UP
    assert "org/model" in found.models
