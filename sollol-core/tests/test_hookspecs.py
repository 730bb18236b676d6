"""Every hookspec is documented (with its signature and a tested example) and tested.

Hook names come from `sollol.hookspecs` itself, so a new hook fails these tests until
`docs/plugin-hooks.md` documents it, its example here runs, and some test uses it.
"""

from __future__ import annotations

import inspect
import random
import re
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sollol import hookspecs
from sollol.activity import ActivityEvent, RequestRecord
from sollol.codec import Backend
from sollol.detection import ProbeSet
from sollol.discovery import DiscoveryContext
from sollol.http import HttpResponse
from sollol.inference import ChatRequest, Route
from sollol.node import parse_node
from sollol.plugins import Plugins
from sollol.routing import PoolNode
from sollol.testing.canonical import CANONICAL_PROBE_SETS
from sollol.testing.contract import contract_plugins

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "plugin-hooks.md"
TESTS = Path(__file__).resolve().parent


def hook_names() -> list[str]:
    """The hooks `sollol.hookspecs` declares (functions carrying pluggy's spec marker)."""
    return sorted(
        name
        for name, fn in vars(hookspecs).items()
        if name.startswith("sollol_") and inspect.isfunction(fn) and hasattr(fn, "sollol_spec")
    )


def signature(name: str) -> str:
    """`name(param: annotation, ...) -> returns`, as the annotations are written in the source."""
    fn = getattr(hookspecs, name)
    params = ", ".join(f"{p.name}: {p.annotation}" for p in inspect.signature(fn).parameters.values())
    return f"{name}({params}) -> {fn.__annotations__['return']}"


def sections() -> dict[str, str]:
    """The docs, split at `## <hook name>` headings."""
    text = DOCS.read_text(encoding="utf-8")
    parts = re.split(r"^## (\S+)\s*$", text, flags=re.MULTILINE)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}


def example(hook: str) -> types.ModuleType:
    """The python code of a hook's section, run as a module."""
    code = "\n".join(re.findall(r"```python\n(.*?)```", sections()[hook], flags=re.DOTALL))
    module = types.ModuleType(f"doc_example_{hook}")
    exec(compile(code, f"{DOCS}#{hook}", "exec"), module.__dict__)
    return module


def test_there_are_hooks() -> None:
    assert len(hook_names()) >= 6


@pytest.mark.parametrize("hook", hook_names())
def test_hook_is_documented_with_its_signature(hook: str) -> None:
    documented = sections()
    assert hook in documented, f"docs/plugin-hooks.md has no '## {hook}' section"
    assert f"`{signature(hook)}`" in documented[hook], f"the section of {hook} lacks `{signature(hook)}`"
    assert "```python" in documented[hook], f"the section of {hook} has no example"


def test_docs_document_no_hook_that_does_not_exist() -> None:
    stale = {h for h in sections() if h.startswith("sollol_")} - set(hook_names())
    assert not stale, f"docs/plugin-hooks.md documents hooks that do not exist: {sorted(stale)}"


@pytest.mark.parametrize("hook", hook_names())
def test_hook_has_a_test(hook: str) -> None:
    for path in sorted(TESTS.glob("test_*.py")):
        if not path.name.startswith("test_hookspecs") and hook in path.read_text(encoding="utf-8"):
            return
    pytest.fail(f"no test in {TESTS} mentions {hook}")


@pytest.mark.parametrize("hook", hook_names())
def test_hookspec_says_how_results_combine(hook: str) -> None:
    doc = inspect.getdoc(getattr(hookspecs, hook)) or ""
    assert "Every implementation is called" in doc or "first non-None" in doc, doc


# -- the examples in the docs run, each as a plugin -----------------------------------------------


def check_register_backends(module: types.ModuleType, plugins: Plugins) -> None:
    backend = plugins.backend("myserver")
    assert isinstance(backend, Backend)
    assert backend.health().path == "/healthz"
    assert backend.default_ports == (9999,)


def check_register_policies(module: types.ModuleType, plugins: Plugins) -> None:
    policy = plugins.policies["fewest_served"]()
    busy, idle = PoolNode(parse_node("127.0.0.1:1")), PoolNode(parse_node("127.0.0.1:2"))
    busy.served = 5
    request = ChatRequest(model="m", messages=[{"role": "user", "content": "hi"}])
    assert policy.choose([busy, idle], request, random.Random(0)).node is idle


def check_detection_probes(module: types.ModuleType, plugins: Plugins) -> None:
    assert "/myserver/info" in {p.path for p in plugins.detection_probes()}


def check_detect(module: types.ModuleType, plugins: Plugins) -> None:
    answer = HttpResponse(status=200, body=b'{"server": "myserver", "version": "1.2"}')
    (claim,) = plugins.detect(ProbeSet({"GET /myserver/info": answer}))
    assert (claim.backend, claim.version) == ("myserver", "1.2")
    for kind, probes in CANONICAL_PROBE_SETS.items():
        assert not plugins.detect(probes), f"the example claimed a {kind} server"


def check_register_discovery_sources(module: types.ModuleType, plugins: Plugins) -> None:
    source = plugins.sources["myserver-env"]
    context = DiscoveryContext(environ={"MYSERVER_NODES": "http://127.0.0.1:9999, http://127.0.0.2:9999"})
    assert [c["url"] for c in source.candidates(context)] == ["http://127.0.0.1:9999", "http://127.0.0.2:9999"]


def check_activity_event(module: types.ModuleType, plugins: Plugins) -> None:
    plugins.emit(ActivityEvent(kind="request.finished", node="a"))
    plugins.emit(ActivityEvent(kind="request.finished", node="b"))
    assert module.EVENTS["request.finished"] == 2


def check_activity_batch(module: types.ModuleType, plugins: Plugins) -> None:
    route = Route(node="a", tried=("a",))
    served = RequestRecord(
        kind="request.finished", node="a", model="m", operation="chat", protocol="python", at=1.0,
        route=route, routed=True, attempt=1, latency=0.1,
    )  # fmt: skip
    plugins.deliver([served, ActivityEvent(kind="node.down", node="b"), served._replace(node="b")])
    plugins.emit(ActivityEvent(kind="request.finished", node="c"))  # an event built elsewhere: not a record
    assert module.SERVED == {"a": 1, "b": 1}


CHECKS: dict[str, Callable[[types.ModuleType, Plugins], Any]] = {
    "sollol_register_backends": check_register_backends,
    "sollol_register_policies": check_register_policies,
    "sollol_detection_probes": check_detection_probes,
    "sollol_detect": check_detect,
    "sollol_register_discovery_sources": check_register_discovery_sources,
    "sollol_activity_event": check_activity_event,
    "sollol_activity_batch": check_activity_batch,
}


@pytest.mark.parametrize("hook", hook_names())
def test_doc_example_works(hook: str) -> None:
    assert hook in CHECKS, f"no check runs the documented example of {hook}; add one to CHECKS"
    module = example(hook)
    assert hasattr(module, hook), f"the example of {hook} does not implement it"
    CHECKS[hook](module, contract_plugins(module, name=f"doc-example-{hook}"))
