"""The example plugin, examples/sollol-sglang, installs from its own directory, shows up in
`sollol plugins`, and serves requests through a pool.

It is pip-installed into a temporary directory (not the editable copy a dev environment may
have), and a subprocess with that directory first on its path lists the plugins and runs a
`Pool` over two emulated SGLang servers found by the plugin's own detection.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from plugin_installs import finish, need_hatchling, pip_install, plugin_named, plugins_json, run_python

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sollol-sglang"

SERVE = """
import json
import sollol_sglang
from sollol import Pool
from sollol.testing.emulator import EmulatedModel, EmulatorConfig
from sollol.testing.servers import LoopbackServers
from sollol_sglang.emulator import SGLangEmulator

models = [EmulatedModel(name="qwen2.5-7b"), EmulatedModel(name="bge-small", embedding=True)]
with LoopbackServers() as servers:
    urls = [servers.start(SGLangEmulator(EmulatorConfig(models=models, name=f"sglang-{i}"))).url for i in range(2)]
    with Pool(urls, refresh_interval=0) as pool:
        messages = [{"role": "user", "content": "hello there"}]
        chat = pool.chat("qwen2.5-7b", messages)
        chunks = list(pool.chat("qwen2.5-7b", messages, stream=True))
        generate = pool.generate("qwen2.5-7b", "Once upon")
        embed = pool.embed("bge-small", ["a", "b"])
        nodes = pool.nodes()
    print(json.dumps({
        "module": sollol_sglang.__file__,
        "chat": chat.text,
        "backend": chat.node.backend,
        "stream": "".join(c.text for c in chunks),
        "stream_done": chunks[-1].done,
        "generate": generate.text,
        "vectors": len(embed.embeddings),
        "nodes": [n.get("backend") for n in nodes],
    }))
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need_hatchling()
    target = tmp_path_factory.mktemp("example-plugin")
    finish(pip_install([EXAMPLE], target))
    return target


def test_the_example_installs_from_its_own_directory(installed: Path) -> None:
    assert (installed / "sollol_sglang" / "__init__.py").is_file()
    assert list(installed.glob("sollol_sglang-*.dist-info/entry_points.txt"))


def test_the_example_shows_up_in_sollol_plugins(installed: Path) -> None:
    plugin = plugin_named(plugins_json([installed]), "sglang")
    assert plugin["distribution"] == "sollol-sglang"
    assert plugin["version"] == "0.1.0"
    assert plugin["backends"] == ["sglang"]
    assert set(plugin["hooks"]) == {"sollol_register_backends", "sollol_detection_probes", "sollol_detect"}


def test_the_example_serves_requests_through_a_pool(installed: Path) -> None:
    done = run_python(["-c", SERVE], [installed])
    assert done.returncode == 0, done.stderr
    answer: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["module"].startswith(str(installed)), "the pool did not use the installed copy"
    assert answer["backend"] == "sglang"
    assert answer["nodes"] == ["sglang", "sglang"]
    assert "hello there" in answer["chat"]
    assert answer["stream"] == answer["chat"]
    assert answer["stream_done"] is True
    assert answer["generate"]
    assert answer["vectors"] == 2
