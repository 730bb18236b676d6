"""`sollol detect` and `sollol discover`, run in-process against toy servers on loopback."""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest
from test_detect import ToyEmulator, toy_plugins

from sollol import cli
from sollol.testing.servers import LoopbackServers, free_port


@pytest.fixture(autouse=True)
def only_toy_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    """The commands see the toy plugin and the built-in sources, whatever else is installed."""
    plugins = toy_plugins()
    # `sollol.detect` is also the name of the function, so patch the modules themselves
    monkeypatch.setattr(sys.modules["sollol.detect"], "default_plugins", lambda: plugins)
    monkeypatch.setattr(sys.modules["sollol.discovery"], "default_plugins", lambda: plugins)
    monkeypatch.delenv("SOLLOL_NODES", raising=False)
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    monkeypatch.delenv("SOLLOL_CONFIG", raising=False)
    monkeypatch.setenv("COLUMNS", "240")  # rich wraps tables to the terminal width


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))
    return code, capsys.readouterr().out


def test_detect_json(loopback_servers: LoopbackServers, capsys: pytest.CaptureFixture[str]) -> None:
    toy = loopback_servers.start(ToyEmulator(version="4.1"), host="127.0.0.51")
    closed = f"http://127.0.0.52:{free_port('127.0.0.52')}"
    code, out = run(capsys, "detect", toy.url + "/v1", closed, "--json", "--timeout", "1")
    data: list[dict[str, Any]] = json.loads(out)
    assert [(d["url"], d["backend"], d["state"], d["version"]) for d in data] == [
        (toy.url, "toy", "up", "4.1"),
        (closed, None, "down", None),
    ]
    assert data[0]["models"] == ["llama3.2:latest"]
    assert isinstance(data[0]["latency_ms"], float)
    assert code == 1  # one node is down


def test_detect_table_and_named_backend(loopback_servers: LoopbackServers, capsys: pytest.CaptureFixture[str]) -> None:
    toy = loopback_servers.start(ToyEmulator(), host="127.0.0.53")
    code, out = run(capsys, "detect", toy.url, "--backend", "toy", "--no-models")
    assert code == 0
    assert "toy" in out
    assert "up" in out
    assert toy.url in out


def test_discover_scan_json(loopback_servers: LoopbackServers, capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port("127.0.0.57")
    toys = [loopback_servers.start(ToyEmulator(), host=f"127.0.0.{x}", port=port) for x in (57, 60)]
    code, out = run(capsys, "discover", "--scan", "127.0.0.56/29", "--ports", str(port), "--no-localhost", "--json")
    assert code == 0
    data = json.loads(out)
    assert [(d["url"], d["backend"], d["source"]) for d in data] == [(t.url, "toy", "scan") for t in toys]


def test_discover_table(loopback_servers: LoopbackServers, capsys: pytest.CaptureFixture[str]) -> None:
    toy = loopback_servers.start(ToyEmulator(version="7.7"), host="127.0.0.54")
    code, out = run(capsys, "discover", toy.url, "--no-localhost")
    assert code == 0
    for text in ("backend", "version", "models", "state", "latency", toy.url, "7.7", "llama3.2:latest", "explicit"):
        assert text in out


def test_discover_refuses_a_huge_scan(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["discover", "--scan", "127.0.0.0/8", "--ports", "1", "--no-localhost"])
    assert code == 2
    assert "refusing" in capsys.readouterr().err


def test_bad_ports_are_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["discover", "--ports", "80,http"])
    assert "not a port number" in capsys.readouterr().err


def test_nothing_found_says_what_to_do(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, "discover", "--no-localhost")
    assert code == 0
    assert "SOLLOL_NODES" in out
