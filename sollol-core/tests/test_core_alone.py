"""The core installs, imports and reports sensibly with no backend plugin installed."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import pytest

from sollol import AsyncPool
from sollol.errors import ConfigError, PluginError
from sollol.plugins import Plugins


def test_builtins_come_in_through_the_entry_point_group() -> None:
    plugins = Plugins.load()
    names = {info.name for info in plugins.infos}
    assert "builtins" in names
    builtins = next(i for i in plugins.infos if i.name == "builtins")
    assert builtins.distribution == "sollol-core"
    assert {"least_loaded", "round_robin", "random"} <= set(builtins.policies)


def test_import_does_no_plugin_loading() -> None:
    code = "import sys, sollol; print('stevedore' in sys.modules, 'sollol.builtins' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"] or out.split()[1] == "False"


async def test_unknown_backend_names_the_missing_plugin() -> None:
    installed = {ep.name for ep in importlib.metadata.entry_points(group="sollol.plugins")}
    if "nonexistent" in installed:
        pytest.skip("a plugin called nonexistent is installed")
    pool = AsyncPool(["127.0.0.1:9"], backend="nonexistent", refresh_interval=0)
    with pytest.raises(PluginError, match="pip install sollol-nonexistent"):
        await pool.start()


def test_constructing_a_pool_does_no_io() -> None:
    # Port 9 (discard) on loopback: nothing listens; construction must not notice.
    pool = AsyncPool(["127.0.0.1:9"], refresh_interval=0)
    assert pool.nodes()[0]["state"] == "unknown"


def test_no_nodes_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOLLOL_NODES", raising=False)
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    with pytest.raises(ConfigError, match="no nodes"):
        AsyncPool()
