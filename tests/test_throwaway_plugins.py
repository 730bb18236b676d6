"""Plugin distributions built in a temporary directory, pip-installed, listed and used by `sollol`.

- a working plugin shows up in `sollol plugins` and its backend (found by its own detection
  hook) serves a chat through a `Pool`;
- a plugin that fails to import is reported by name with the reason, the others keep working,
  and `SOLLOL_STRICT_PLUGINS=1` makes it fatal;
- two plugins claiming one backend name is an error naming both;
- a misspelled hook implementation is reported.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import pytest
from plugin_installs import (
    finish,
    need_hatchling,
    pip_install,
    plugin_named,
    plugins_json,
    run_python,
    write_distribution,
)

WORKING = """
from sollol import hookimpl
from sollol.detection import Detection
from sollol.http import HttpRequest
from sollol.openai_compat import OpenAICompatibleBackend


class ThrowawayBackend(OpenAICompatibleBackend):
    name = "throwaway"
    operations = frozenset({"chat"})


@hookimpl
def sollol_register_backends(register):
    register(ThrowawayBackend())


@hookimpl
def sollol_detection_probes():
    return (HttpRequest.get("/throwaway"),)


@hookimpl
def sollol_detect(probes):
    answer = probes.get("/throwaway")
    if answer.status == 200 and (answer.json_object() or {}).get("throwaway") is True:
        return Detection(backend="throwaway", confidence=95, reason="/throwaway says so")
    return None
"""

TWIN = """
from sollol import hookimpl
from sollol.openai_compat import OpenAICompatibleBackend


@hookimpl
def sollol_register_backends(register):
    register(OpenAICompatibleBackend("twin"))
"""

TYPO = """
from sollol import hookimpl


@hookimpl
def sollol_register_backend(register):
    pass
"""

# A tiny server for the throwaway backend, and a pool that finds it by detection and chats.
SERVE = """
import json, sys
from sollol import Pool
from sollol.testing.emulator import EmuResponse, Emulator, json_response, route
from sollol.testing.servers import LoopbackServers


class Throwaway(Emulator):
    @route("GET", "/throwaway")
    async def me(self, request):
        return json_response({"throwaway": True})

    @route("GET", "/health")
    async def health(self, request):
        return EmuResponse(status=200, body=b"", content_type=None)

    @route("GET", "/v1/models")
    async def models(self, request):
        return json_response({"object": "list", "data": [{"id": "tiny", "object": "model"}]})

    @route("POST", "/v1/chat/completions")
    async def chat(self, request):
        message = {"role": "assistant", "content": "thrown away"}
        return json_response({"model": "tiny", "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]})


with LoopbackServers() as servers:
    running = servers.start(Throwaway())
    with Pool([f"127.0.0.1:{running.port}"], refresh_interval=0) as pool:
        result = pool.chat("tiny", [{"role": "user", "content": "hi"}])
    print(json.dumps({"text": result.text, "backend": result.node.backend, "node": result.node.id}))
"""


@pytest.fixture(scope="module")
def targets(tmp_path_factory: pytest.TempPathFactory) -> Mapping[str, Path]:
    """Install directories: working, broken, twins (two distributions) and typo, built in parallel."""
    need_hatchling()
    root = tmp_path_factory.mktemp("throwaway")
    sources = root / "src"
    plan = {
        "working": [write_distribution(sources, "sollol-throwaway", "sollol_throwaway", WORKING, entry="throwaway")],
        "broken": [write_distribution(sources, "sollol-broken", "sollol_broken", "import sollol_no_such_module\n")],
        "twins": [
            write_distribution(sources, "sollol-twin-a", "sollol_twin_a", TWIN),
            write_distribution(sources, "sollol-twin-b", "sollol_twin_b", TWIN),
        ],
        "typo": [write_distribution(sources, "sollol-typo", "sollol_typo", TYPO)],
    }
    installs = {name: pip_install(projects, root / name) for name, projects in plan.items()}
    for process in installs.values():
        finish(process)
    return {name: root / name for name in plan}


def test_a_throwaway_plugin_is_listed(targets: Mapping[str, Path]) -> None:
    plugin = plugin_named(plugins_json([targets["working"]]), "throwaway")
    assert plugin["distribution"] == "sollol-throwaway"
    assert plugin["version"] == "0.0.1"
    assert plugin["backends"] == ["throwaway"]
    assert set(plugin["hooks"]) == {"sollol_register_backends", "sollol_detection_probes", "sollol_detect"}


def test_a_throwaway_plugin_serves_through_a_pool(targets: Mapping[str, Path]) -> None:
    done = run_python(["-c", SERVE], [targets["working"]])
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["text"] == "thrown away"
    assert answer["backend"] == "throwaway"  # found by the plugin's own detection hook


def test_a_broken_plugin_is_reported_and_the_rest_work(targets: Mapping[str, Path]) -> None:
    paths = [targets["working"], targets["broken"]]
    listing = plugins_json(paths)
    (failure,) = [f for f in listing["failures"] if f["name"] == "sollol-broken"]
    assert failure["distribution"] == "sollol-broken"
    assert "ModuleNotFoundError" in failure["reason"]
    assert "sollol_no_such_module" in failure["reason"]
    assert plugin_named(listing, "throwaway")["backends"] == ["throwaway"]
    served = run_python(["-c", SERVE], paths)
    assert served.returncode == 0, served.stderr
    assert json.loads(served.stdout.strip().splitlines()[-1])["text"] == "thrown away"


def test_a_broken_plugin_is_fatal_when_strict(targets: Mapping[str, Path]) -> None:
    done = run_python(
        ["-m", "sollol.cli", "plugins"], [targets["working"], targets["broken"]], {"SOLLOL_STRICT_PLUGINS": "1"}
    )
    assert done.returncode != 0
    assert "SOLLOL_STRICT_PLUGINS" in done.stderr
    assert "sollol-broken: ModuleNotFoundError" in done.stderr


def test_two_plugins_with_one_backend_name_are_both_named(targets: Mapping[str, Path]) -> None:
    done = run_python(["-m", "sollol.cli", "plugins"], [targets["twins"]])
    assert done.returncode != 0
    assert "'twin' is provided by two plugins" in done.stderr
    assert "sollol-twin-a (from sollol-twin-a)" in done.stderr
    assert "sollol-twin-b (from sollol-twin-b)" in done.stderr


def test_a_misspelled_hook_is_reported(targets: Mapping[str, Path]) -> None:
    listing = plugins_json([targets["working"], targets["typo"]])
    (failure,) = [f for f in listing["failures"] if f["name"] == "sollol-typo"]
    assert "sollol_register_backend" in failure["reason"]
    assert failure["distribution"] == "sollol-typo"
    assert plugin_named(listing, "throwaway")["backends"] == ["throwaway"]
