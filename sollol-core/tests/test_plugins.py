"""The plugin system in-process: loading, reporting broken plugins, conflicts, every hook.

Installed plugins are imitated by writing a module and a `.dist-info` directory (metadata
and `entry_points.txt`) into a temporary directory on `sys.path`, which is all
`importlib.metadata` and stevedore look at. The same scenarios with real `pip install`s run in
`tests/test_throwaway_plugins.py`.
"""

from __future__ import annotations

import itertools
import json
import logging
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from stevedore import ExtensionManager

from sollol import cli, hookimpl
from sollol.activity import ActivityEvent
from sollol.detection import Detection, ProbeSet
from sollol.discovery import DiscoveryContext
from sollol.errors import DuplicateBackendError, PluginError
from sollol.http import HttpRequest
from sollol.openai_compat import OpenAICompatibleBackend
from sollol.plugins import STRICT_ENV, Plugins

_serial = itertools.count()


class FakeInstall:
    """Writes plugin distributions into a directory on `sys.path`."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root = root
        self.monkeypatch = monkeypatch
        monkeypatch.syspath_prepend(str(root))
        # stevedore remembers each group's entry points for the life of the process.
        monkeypatch.setattr(ExtensionManager, "ENTRY_POINT_CACHE", {})

    def add(self, dist: str, source: str, *, entry: str | None = None) -> str:
        """Install distribution `dist` whose plugin module has `source`; returns the entry-point name."""
        module = f"fake_{dist.replace('-', '_')}_{next(_serial)}"
        entry = entry or dist
        (self.root / f"{module}.py").write_text(textwrap.dedent(source), encoding="utf-8")
        info = self.root / f"{dist.replace('-', '_')}-0.4.2.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.4.2\n", encoding="utf-8")
        (info / "entry_points.txt").write_text(f"[sollol.plugins]\n{entry} = {module}\n", encoding="utf-8")
        self.monkeypatch.delitem(sys.modules, module, raising=False)
        import importlib

        importlib.invalidate_caches()
        return entry


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeInstall:
    monkeypatch.delenv(STRICT_ENV, raising=False)
    return FakeInstall(tmp_path, monkeypatch)


BACKEND_PLUGIN = """
from sollol import hookimpl
from sollol.openai_compat import OpenAICompatibleBackend

@hookimpl
def sollol_register_backends(register):
    register(OpenAICompatibleBackend("{name}", default_ports=(4242,)))
"""


def only(plugins: Plugins, name: str) -> Any:
    (info,) = [i for i in plugins.infos if i.name == name]
    return info


# -- loading installed plugins -------------------------------------------------------------------


def test_an_installed_plugin_is_listed_with_its_distribution(installed: FakeInstall) -> None:
    entry = installed.add("sollol-throwaway", BACKEND_PLUGIN.format(name="throwaway"))
    plugins = Plugins.load()
    info = only(plugins, entry)
    assert (info.distribution, info.version, info.backends) == ("sollol-throwaway", "0.4.2", ("throwaway",))
    assert info.hooks == ("sollol_register_backends",)
    assert plugins.backend("throwaway").default_ports == (4242,)
    assert "builtins" in {i.name for i in plugins.infos}


def test_a_plugin_that_fails_to_import_is_reported_and_the_rest_work(installed: FakeInstall) -> None:
    installed.add("sollol-good", BACKEND_PLUGIN.format(name="good"))
    broken = installed.add("sollol-broken", "import a_module_that_is_not_installed\n")
    plugins = Plugins.load()
    (failure,) = [f for f in plugins.failures if f.name == broken]
    assert failure.distribution == "sollol-broken"
    assert "ModuleNotFoundError" in failure.reason
    assert "a_module_that_is_not_installed" in failure.reason
    assert "good" in plugins.backends
    assert "least_loaded" in plugins.policies  # the built-ins still load


def test_a_broken_plugin_is_fatal_when_strict(installed: FakeInstall, monkeypatch: pytest.MonkeyPatch) -> None:
    broken = installed.add("sollol-broken", "raise RuntimeError('this plugin is broken on purpose')\n")
    with pytest.raises(PluginError, match=f"{broken}: RuntimeError: this plugin is broken on purpose"):
        Plugins.load(strict=True)
    monkeypatch.setenv(STRICT_ENV, "1")
    with pytest.raises(PluginError, match=STRICT_ENV):
        Plugins.load()


def test_a_misspelled_hook_is_reported(installed: FakeInstall) -> None:
    typo = installed.add(
        "sollol-typo",
        """
        from sollol import hookimpl

        @hookimpl
        def sollol_register_backend(register):
            pass
        """,
    )
    installed.add("sollol-good", BACKEND_PLUGIN.format(name="good"))
    plugins = Plugins.load()
    (failure,) = [f for f in plugins.failures if f.name == typo]
    assert "sollol_register_backend" in failure.reason
    assert failure.distribution == "sollol-typo"
    assert typo not in {i.name for i in plugins.infos}
    assert "good" in plugins.backends
    with pytest.raises(PluginError, match="sollol_register_backend"):
        Plugins.load(strict=True)


def test_two_plugins_claiming_one_backend_name_both_named(installed: FakeInstall) -> None:
    first = installed.add("sollol-first", BACKEND_PLUGIN.format(name="twin"))
    second = installed.add("sollol-second", BACKEND_PLUGIN.format(name="twin"))
    with pytest.raises(DuplicateBackendError) as caught:
        Plugins.load()
    message = str(caught.value)
    assert f"{first} (from sollol-first)" in message
    assert f"{second} (from sollol-second)" in message
    assert "'twin'" in message


def test_sollol_plugins_json_lists_installed_plugins_and_failures(
    installed: FakeInstall, capsys: pytest.CaptureFixture[str]
) -> None:
    entry = installed.add("sollol-listed", BACKEND_PLUGIN.format(name="listed"))
    broken = installed.add("sollol-broken", "import nowhere_to_be_found\n")
    assert cli.main(["plugins", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    (plugin,) = [p for p in listing["plugins"] if p["name"] == entry]
    assert plugin["distribution"] == "sollol-listed"
    assert plugin["backends"] == ["listed"]
    (failure,) = [f for f in listing["failures"] if f["name"] == broken]
    assert "nowhere_to_be_found" in failure["reason"]


def test_sollol_plugins_table_names_broken_plugins(installed: FakeInstall, capsys: pytest.CaptureFixture[str]) -> None:
    broken = installed.add("sollol-broken", "import nowhere_to_be_found\n")
    assert cli.main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert f"plugin {broken} (sollol-broken) failed to load" in " ".join(out.split())


def test_importing_sollol_loads_no_plugin() -> None:
    code = "import sollol, sollol.pool, sollol.plugins as p; assert p._default is None, 'plugins loaded at import'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# -- each hook, through `extra` plugins ------------------------------------------------------------


class Backends:
    def __init__(self, *names: str) -> None:
        self.names = names

    @hookimpl
    def sollol_register_backends(self, register: Callable[[Any], None]) -> None:
        for name in self.names:
            register(OpenAICompatibleBackend(name))


def test_sollol_register_backends_from_extra_plugins() -> None:
    plugins = Plugins.load(extra=[Backends("alpha", "beta")])
    assert {"alpha", "beta"} <= set(plugins.backends)
    (info,) = [i for i in plugins.infos if i.backends == ("alpha", "beta")]
    assert info.hooks == ("sollol_register_backends",)


def test_sollol_register_backends_duplicate_in_extra_plugins() -> None:
    with pytest.raises(DuplicateBackendError, match="'same' is provided by two plugins") as caught:
        Plugins.load(extra=[Backends("same"), Backends("same")])
    assert set(caught.value.plugins) == {"extra-0", "extra-1"}


def test_unknown_backend_says_what_is_installed() -> None:
    plugins = Plugins.load(extra=[Backends("alpha")])
    with pytest.raises(PluginError, match=r"no plugin provides backend 'omega' \(installed: .*alpha"):
        plugins.backend("omega")


class Policies:
    def __init__(self, name: str) -> None:
        self.name = name

    @hookimpl
    def sollol_register_policies(self, register: Callable[[str, Callable[..., Any]], None]) -> None:
        register(self.name, dict)


def test_sollol_register_policies_adds_a_policy_and_refuses_a_second_owner() -> None:
    assert Plugins.load(extra=[Policies("mine")]).policies["mine"] is dict
    with pytest.raises(PluginError, match="policy 'least_loaded' is registered by two plugins") as caught:
        Plugins.load(extra=[Policies("least_loaded")])
    assert "builtins (from sollol-core)" in str(caught.value)
    assert "extra-0" in str(caught.value)


class Detector:
    def __init__(self, path: str, confidence: int | None, fail: bool = False) -> None:
        self.path, self.confidence, self.fail = path, confidence, fail

    @hookimpl
    def sollol_detection_probes(self) -> tuple[HttpRequest, ...]:
        return (HttpRequest.get(self.path), HttpRequest.get("/shared"))

    @hookimpl
    def sollol_detect(self, probes: ProbeSet) -> Detection | None:
        if self.fail:
            raise ValueError("a detection bug")
        return None if self.confidence is None else Detection(backend=self.path.strip("/"), confidence=self.confidence)


def test_sollol_detection_probes_are_sent_once_each() -> None:
    plugins = Plugins.load(extra=[Detector("/one", None), Detector("/two", None)])
    paths = [p.path for p in plugins.detection_probes()]
    assert paths.count("/shared") == 1
    assert {"/one", "/two"} <= set(paths)


def test_sollol_detect_most_confident_first_and_a_raising_hook_is_skipped(caplog: pytest.LogCaptureFixture) -> None:
    plugins = Plugins.load(extra=[Detector("/low", 20), Detector("/high", 80), Detector("/bug", 99, fail=True)])
    with caplog.at_level(logging.ERROR, logger="sollol.plugins"):
        claims = plugins.detect(ProbeSet({}))
    assert [c.backend for c in claims] == ["high", "low"]
    assert "detection hook of plugin" in caplog.text


class Source:
    name = "from-test"

    def candidates(self, context: DiscoveryContext) -> list[str]:
        return ["127.0.0.1:1"]


class Sources:
    @hookimpl
    def sollol_register_discovery_sources(self, register: Callable[[Any], None]) -> None:
        register(Source())


def test_sollol_register_discovery_sources() -> None:
    plugins = Plugins.load(extra=[Sources()])
    assert list(plugins.sources["from-test"].candidates(DiscoveryContext())) == ["127.0.0.1:1"]
    assert {"explicit", "environment"} <= set(plugins.sources)  # the built-ins, through the same hook
    with pytest.raises(PluginError, match="discovery source 'from-test' is registered by two plugins"):
        Plugins.load(extra=[Sources(), Sources()])


class Observer:
    def __init__(self, fail: bool = False) -> None:
        self.seen: list[str] = []
        self.fail = fail

    @hookimpl
    def sollol_activity_event(self, event: ActivityEvent) -> None:
        if self.fail:
            raise RuntimeError("observer bug")
        self.seen.append(event.kind)


def test_sollol_activity_event_reaches_observers_and_a_raising_one_is_skipped(caplog: pytest.LogCaptureFixture) -> None:
    good, bad = Observer(), Observer(fail=True)
    plugins = Plugins.load(extra=[good, bad])
    with caplog.at_level(logging.ERROR, logger="sollol.plugins"):
        plugins.emit(ActivityEvent(kind="node.up", node="n"))
    assert good.seen == ["node.up"]
    assert "activity observer" in caplog.text
    late = Observer()
    plugins.add_observer(late, name="late")
    plugins.emit(ActivityEvent(kind="node.down"))
    plugins.remove_observer(late)
    plugins.emit(ActivityEvent(kind="node.up"))
    assert late.seen == ["node.down"]
    assert good.seen == ["node.up", "node.down", "node.up"]
