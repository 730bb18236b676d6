"""Finding, loading and calling plugins.

Plugins are modules named in the entry-point group `sollol.plugins`. They are found with
stevedore and registered in one pluggy `PluginManager("sollol")`; SOLLOL's own built-ins
come in through the same group. The rest of the code calls hooks through `Plugins`, never
`pm.hook.<name>` by string.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import ModuleType
from typing import Any

import attrs
import pluggy
from stevedore import ExtensionManager

from sollol import hookspecs
from sollol.activity import ActivityEvent, RequestRecord
from sollol.codec import Backend
from sollol.detection import Detection, ProbeSet, probe_key
from sollol.errors import DuplicateBackendError, PluginError
from sollol.http import HttpRequest

log = logging.getLogger(__name__)

GROUP = "sollol.plugins"
STRICT_ENV = "SOLLOL_STRICT_PLUGINS"

hookimpl = pluggy.HookimplMarker("sollol")


@attrs.frozen(kw_only=True)
class PluginInfo:
    """An installed plugin and what it provides."""

    name: str
    module: str
    distribution: str | None
    version: str | None
    backends: tuple[str, ...] = ()
    policies: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    hooks: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """A JSON object for `sollol plugins --json`."""
        return attrs.asdict(self)


@attrs.frozen(kw_only=True)
class PluginFailure:
    """A plugin that could not be loaded, and why."""

    name: str
    distribution: str | None
    reason: str

    def to_json(self) -> dict[str, Any]:
        """A JSON object for `sollol plugins --json`."""
        return attrs.asdict(self)


def _distributions() -> dict[tuple[str, str], tuple[str, str]]:
    found: dict[tuple[str, str], tuple[str, str]] = {}
    for ep in importlib.metadata.entry_points(group=GROUP):
        dist = getattr(ep, "dist", None)
        if dist is not None:
            found[(ep.name, ep.value)] = (dist.metadata["Name"], dist.version)
    return found


class Plugins:
    """The loaded plugins, and a typed face over their hooks."""

    def __init__(
        self,
        pm: pluggy.PluginManager,
        infos: Sequence[PluginInfo] = (),
        failures: Sequence[PluginFailure] = (),
    ) -> None:
        self.pm = pm
        self.failures = tuple(failures)
        self.backends: dict[str, Backend] = {}
        self.policies: dict[str, Callable[..., Any]] = {}
        self.sources: dict[str, Any] = {}
        self._probes: tuple[HttpRequest, ...] | None = None
        #: (function, plugin name, takes batches) of every activity observer, batch ones first:
        #: listed once (`deliver` runs for every pass of a busy pool), again on `add_observer`
        #: and `remove_observer`
        self.observers = self._list_observers()
        provided = self._collect()
        self.infos = tuple(
            attrs.evolve(
                info,
                backends=tuple(provided["backends"].get(info.name, ())),
                policies=tuple(provided["policies"].get(info.name, ())),
                sources=tuple(provided["sources"].get(info.name, ())),
                hooks=tuple(sorted(self._hooks_of(info.name))),
            )
            for info in infos
        )

    # -- loading -------------------------------------------------------------------------

    @classmethod
    def load(cls, *, strict: bool | None = None, extra: Iterable[ModuleType | object] = ()) -> Plugins:
        """Find the installed plugins and register them, plus any `extra` plugin objects.

        A plugin that fails to import, or implements a hook that does not exist, is
        reported in `failures` with the reason and left out; with `strict` (or
        SOLLOL_STRICT_PLUGINS=1) it is fatal.
        """
        if strict is None:
            strict = os.environ.get(STRICT_ENV, "").strip().lower() in ("1", "true", "yes")
        pm = pluggy.PluginManager("sollol")
        pm.add_hookspecs(hookspecs)
        dists = _distributions()
        infos: list[PluginInfo] = []
        failures: list[PluginFailure] = []

        def on_failure(_manager: Any, entrypoint: Any, exc: BaseException) -> None:
            dist = dists.get((entrypoint.name, entrypoint.value))
            failures.append(
                PluginFailure(
                    name=entrypoint.name,
                    distribution=dist[0] if dist else None,
                    reason=f"{type(exc).__name__}: {exc}",
                )
            )

        manager = ExtensionManager(
            namespace=GROUP,
            invoke_on_load=False,
            on_load_failure_callback=on_failure,
        )
        for ext in sorted(manager.extensions, key=lambda e: e.name):
            dist = dists.get((ext.entry_point.name, ext.entry_point.value))
            try:
                pm.register(ext.plugin, name=ext.name)
                pm.check_pending()
            except Exception as exc:  # a plugin with a misspelled hook: report, leave out
                pm.unregister(name=ext.name)
                failures.append(
                    PluginFailure(
                        name=ext.name,
                        distribution=dist[0] if dist else None,
                        reason=f"{type(exc).__name__}: {exc}",
                    )
                )
                continue
            infos.append(
                PluginInfo(
                    name=ext.name,
                    module=getattr(ext.plugin, "__name__", repr(ext.plugin)),
                    distribution=dist[0] if dist else None,
                    version=dist[1] if dist else None,
                )
            )
        for index, plugin in enumerate(extra):
            name = getattr(plugin, "__name__", None) or f"extra-{index}"
            pm.register(plugin, name=name)
            pm.check_pending()
            infos.append(PluginInfo(name=name, module=name, distribution=None, version=None))
        for failure in failures:
            log.warning(
                "plugin %s (%s) failed to load: %s",
                failure.name,
                failure.distribution or "unknown distribution",
                failure.reason,
            )
        if strict and failures:
            detail = "; ".join(f"{f.name}: {f.reason}" for f in failures)
            raise PluginError(f"{STRICT_ENV} is set and plugins failed to load: {detail}")
        return cls(pm, infos, failures)

    # -- what plugins provide ---------------------------------------------------------------

    def _hooks_of(self, plugin_name: str) -> set[str]:
        plugin = self.pm.get_plugin(plugin_name)
        if plugin is None:
            return set()
        return {caller.name for caller in self.pm.get_hookcallers(plugin) or ()}

    def _collect(self) -> dict[str, dict[str, list[str]]]:
        provided: dict[str, dict[str, list[str]]] = {"backends": {}, "policies": {}, "sources": {}}
        owner: dict[tuple[str, str], str] = {}

        def call_each(hook_name: str, kind: str, add: Callable[[str, str, Any], None]) -> None:
            hook = getattr(self.pm.hook, hook_name)
            for impl in reversed(hook.get_hookimpls()):
                plugin_name = impl.plugin_name

                def register(*args: Any, _plugin: str = plugin_name) -> None:
                    add(_plugin, kind, args)

                impl.function(register=register)

        def add(plugin_name: str, kind: str, args: Any) -> None:
            if kind == "backends":
                (backend,) = args
                key = str(backend.name)
                table: dict[str, Any] = self.backends
                value: Any = backend
            elif kind == "policies":
                key, value = str(args[0]), args[1]
                table = self.policies
            else:
                (value,) = args
                key = str(value.name)
                table = self.sources
            if key in table:
                first = owner[(kind, key)]
                if kind == "backends":
                    raise DuplicateBackendError(key, self._label(first), self._label(plugin_name))
                noun = "policy" if kind == "policies" else "discovery source"
                raise PluginError(
                    f"{noun} {key!r} is registered by two plugins: {self._label(first)} and {self._label(plugin_name)}"
                )
            table[key] = value
            owner[(kind, key)] = plugin_name
            provided[kind].setdefault(plugin_name, []).append(key)

        call_each("sollol_register_backends", "backends", add)
        call_each("sollol_register_policies", "policies", add)
        call_each("sollol_register_discovery_sources", "sources", add)
        return provided

    def _label(self, plugin_name: str) -> str:
        for ep in importlib.metadata.entry_points(group=GROUP):
            if ep.name == plugin_name and getattr(ep, "dist", None) is not None:
                return f"{plugin_name} (from {ep.dist.metadata['Name']})"  # type: ignore[union-attr]
        return plugin_name

    def backend(self, name: str) -> Backend:
        """The codec registered as `name`."""
        try:
            return self.backends[name]
        except KeyError:
            have = ", ".join(sorted(self.backends)) or "none"
            raise PluginError(
                f"no plugin provides backend {name!r} (installed: {have}); "
                f"install it, for example `pip install sollol-{name}`"
            ) from None

    def detection_probes(self) -> tuple[HttpRequest, ...]:
        """Every plugin's probe requests, each once."""
        if self._probes is None:
            seen: dict[str, HttpRequest] = {}
            for batch in self.pm.hook.sollol_detection_probes():
                for request in batch:
                    seen.setdefault(probe_key(request), request)
            self._probes = tuple(seen.values())
        return self._probes

    def detect(self, probes: ProbeSet) -> list[Detection]:
        """Every plugin's claim on a server, most confident first."""
        claims: list[Detection] = []
        for impl in self.pm.hook.sollol_detect.get_hookimpls():
            try:
                claim = impl.function(probes=probes)
            except Exception:
                log.exception("detection hook of plugin %s raised", impl.plugin_name)
                continue
            if isinstance(claim, Detection):
                claims.append(claim)
        claims.sort(key=lambda d: -d.confidence)
        return claims

    def _list_observers(self) -> tuple[tuple[Callable[..., Any], str, bool], ...]:
        hook = self.pm.hook
        return tuple(
            [(impl.function, impl.plugin_name, True) for impl in hook.sollol_activity_batch.get_hookimpls()]
            + [(impl.function, impl.plugin_name, False) for impl in hook.sollol_activity_event.get_hookimpls()]
        )

    @property
    def observed(self) -> bool:
        """True when some observer listens: nothing need be noted otherwise."""
        return bool(self.observers)

    def emit(self, event: ActivityEvent) -> None:
        """Tell every observer about `event` now (a batch of one)."""
        self.deliver([event])

    def deliver(self, batch: Sequence[RequestRecord | ActivityEvent]) -> None:
        """Hand `batch` to every observer; one that raises is logged and skipped.

        Observers of `sollol_activity_batch` get it whole; those of `sollol_activity_event` get
        each entry as an `ActivityEvent` (records turned into events once, for all of them).
        Observers registered after loading must come through `add_observer`, not `pm.register`
        (the list of observers is kept).
        """
        events: list[ActivityEvent] | None = None
        for function, name, batched in self.observers:
            if batched:
                try:
                    function(batch=batch)
                except Exception:
                    log.exception("activity observer %s raised on a batch of %d", name, len(batch))
                continue
            if events is None:
                events = [e if type(e) is ActivityEvent else e.event() for e in batch]  # type: ignore[union-attr]
            for event in events:
                try:
                    function(event=event)
                except Exception:
                    log.exception("activity observer %s raised on %s", name, event.kind)

    def add_observer(self, observer: object, name: str | None = None) -> None:
        """Register an object with a `sollol_activity_event` or `sollol_activity_batch` hook at run time."""
        self.pm.register(observer, name=name)
        self.pm.check_pending()
        self.observers = self._list_observers()

    def remove_observer(self, observer: object) -> None:
        """Undo `add_observer`."""
        self.pm.unregister(observer)
        self.observers = self._list_observers()

    def as_json(self) -> Mapping[str, Any]:
        """Installed plugins and failures, for `sollol plugins --json`."""
        return {
            "plugins": [info.to_json() for info in self.infos],
            "failures": [failure.to_json() for failure in self.failures],
        }


_default: Plugins | None = None


def default_plugins() -> Plugins:
    """The installed plugins, loaded once per process on first use (never at import)."""
    global _default
    if _default is None:
        _default = Plugins.load()
    return _default
