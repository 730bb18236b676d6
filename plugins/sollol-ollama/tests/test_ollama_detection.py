"""Ollama detection, including LocalAI's imitation of Ollama."""

from __future__ import annotations

from sollol.detection import ProbeSet
from sollol.http import HttpResponse
from sollol_ollama import sollol_detect

TEXT = (("content-type", "text/plain; charset=utf-8"),)
JSON = (("content-type", "application/json; charset=utf-8"),)


def probes(**answers: HttpResponse) -> ProbeSet:
    gin404 = HttpResponse(status=404, headers=TEXT, body=b"404 page not found")
    paths = {
        "root": "/",
        "version": "/api/version",
        "readyz": "/readyz",
        "healthz": "/healthz",
        "wk": "/.well-known/localai.json",
    }
    return ProbeSet({f"GET {path}": answers.get(name, gin404) for name, path in paths.items()})


ROOT = HttpResponse(status=200, headers=TEXT, body=b"Ollama is running")
VERSION = HttpResponse(status=200, headers=JSON, body=b'{"version":"0.12.6"}')


def test_detects_ollama() -> None:
    found = sollol_detect(probes=probes(root=ROOT, version=VERSION))
    assert found is not None and found.backend == "ollama" and found.version == "0.12.6"


def test_localai_with_ollama_root_is_not_ollama() -> None:
    empty200 = HttpResponse(status=200)
    localai_version = HttpResponse(status=200, headers=JSON, body=b'{"version":"0.9.0"}')
    assert sollol_detect(probes=probes(root=ROOT, version=localai_version, readyz=empty200, healthz=empty200)) is None


def test_llamacpp_header_is_not_ollama() -> None:
    root = HttpResponse(status=200, headers=(*TEXT, ("server", "llama.cpp")), body=b"Ollama is running")
    assert sollol_detect(probes=probes(root=root, version=VERSION)) is None


def test_nothing_answering_is_not_ollama() -> None:
    down = HttpResponse(status=0, error="refused")
    assert sollol_detect(probes=ProbeSet({"GET /": down})) is None
