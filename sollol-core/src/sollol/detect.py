"""Detection: which kind of server answers at a URL.

Every plugin names the GET probes it needs (`sollol_detection_probes`); they are sent once
each, in parallel, with a short timeout, and every plugin's `sollol_detect` reads the
answers. The most confident claim wins; between equally confident claims, the kind that
cannot be impersonated by the others wins (llama.cpp, TGI, LocalAI, vLLM, then Ollama; see
`reference/backend-protocols.md` section 2.3). When the node is up and the winning claim
lists no models, the backend codec's own `models()` exchange fills them in.

Nothing here ever raises for a bad node: a URL that cannot be read, a refused connection,
a server nobody recognises, all come back as a `DetectedNode` with a state and a reason.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import attrs
import httpx

from sollol.detection import Detection, NodeState, ProbeSet, probe_key
from sollol.errors import AuthenticationError, ConfigError, SollolError
from sollol.http import HttpRequest, HttpResponse
from sollol.node import Node, NodeSpec, parse_node
from sollol.plugins import Plugins, default_plugins
from sollol.transport import Timeouts, Transport

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Kinds in the order §2.3 of the protocol reference decides them: a later kind can be
#: impersonated by an earlier one, never the other way round. Used to break confidence ties.
PRECEDENCE = ("llamacpp", "tgi", "localai", "vllm", "ollama")

#: Probes the core always sends, beside the plugins' own: enough to tell an OpenAI-shaped
#: server that no installed plugin claims.
CORE_PROBES = (HttpRequest.get("/v1/models"),)

#: API paths users paste after the base URL; detection strips them.
_PASTED_SUFFIXES = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/models",
    "/api/chat",
    "/api/generate",
    "/api/tags",
    "/api/version",
    "/api",
    "/v1",
)

#: How many nodes are probed at once (each gets all its probes in parallel).
DEFAULT_CONCURRENCY = 64


@attrs.frozen(kw_only=True)
class DetectedNode:
    """A URL and what was found there."""

    node: Node | None
    backend: str | None
    state: NodeState
    version: str | None = None
    models: tuple[str, ...] = ()
    latency: float | None = None  # seconds, fastest probe answer
    reason: str = ""
    given: str = ""  # what the user wrote, when it could not be read as a node
    source: str | None = None  # the discovery source that named it

    @property
    def url(self) -> str:
        """The node's base URL (or what was given, when it was not a readable URL)."""
        return self.node.url if self.node is not None else self.given

    def to_json(self) -> dict[str, Any]:
        """A JSON object (no credentials)."""
        data: dict[str, Any] = {
            "url": self.url,
            "backend": self.backend,
            "state": self.state.value,
            "version": self.version,
            "models": list(self.models),
            "latency_ms": None if self.latency is None else round(self.latency * 1000, 2),
            "reason": self.reason,
        }
        if self.source is not None:
            data["source"] = self.source
        return data


def normalise_spec(spec: NodeSpec) -> NodeSpec:
    """Strip what users paste after a base URL: trailing `/`, `/v1`, `/v1/models`, `/api/tags`..."""
    if not isinstance(spec, str):
        return spec
    text = spec.strip()
    head, sep, rest = text.partition("://")
    if not sep:
        head, rest = "", text
    authority, slash, path = rest.partition("/")
    path = "/" + path if slash else ""
    while True:
        path = path.rstrip("/")
        suffix = next((s for s in _PASTED_SUFFIXES if path.lower().endswith(s)), None)
        if suffix is None:
            break
        path = path[: -len(suffix)]
    return f"{head}{sep}{authority}{path}"


def read_node(spec: NodeSpec, *, backend: str | None = None) -> Node:
    """A `Node` from a spec after normalising it; `backend` names the kind when the spec does not.

    Raises `ConfigError` for a spec that is not a node.
    """
    node = parse_node(normalise_spec(spec))
    if backend and not node.backend:
        node = node.with_backend(backend.lower())
    return node


def _probes_for(plugins: Plugins, node: Node) -> tuple[HttpRequest, ...]:
    probes = {probe_key(p): p for p in (*plugins.detection_probes(), *CORE_PROBES)}
    if node.backend and node.backend in plugins.backends:
        health = plugins.backends[node.backend].health()
        if health.method == "GET":
            probes.setdefault(probe_key(health), health)
    return tuple(probes.values())


async def probe_node(transport: Transport, plugins: Plugins, node: Node, timeout: float | None = None) -> ProbeSet:
    """Send every plugin's probes to `node` at once and collect the answers."""
    probes = _probes_for(plugins, node)
    answers = await asyncio.gather(*(transport.probe(node, p, timeout=timeout) for p in probes))
    return ProbeSet({probe_key(p): a for p, a in zip(probes, answers, strict=True)})


def _best(claims: Sequence[Detection]) -> Detection | None:
    if not claims:
        return None
    top = max(c.confidence for c in claims)
    tied = [c for c in claims if c.confidence == top]

    def rank(claim: Detection) -> int:
        return PRECEDENCE.index(claim.backend) if claim.backend in PRECEDENCE else len(PRECEDENCE)

    return min(tied, key=rank)


def _openai_shaped(response: HttpResponse) -> bool:
    data = response.json_object() or {}
    items = data.get("data")
    return response.ok and isinstance(items, list) and all(isinstance(i, dict) and "id" in i for i in items)


def _down_reason(probes: ProbeSet) -> str:
    errors = sorted({r.error for r in probes.responses.values() if r.error})
    return "; ".join(errors)[:300] or "no answer"


def decide(node: Node, probes: ProbeSet, plugins: Plugins) -> DetectedNode:
    """Read the probe answers into a `DetectedNode`."""
    reached = [r for r in probes.responses.values() if r.reached]
    latency = min((r.elapsed for r in reached), default=None)
    claims: Sequence[Detection] = plugins.detect(probes)
    if node.backend:
        claim = _best([c for c in claims if c.backend == node.backend])
        if claim is None:
            return _named(node, probes, plugins, latency)
    else:
        claim = _best(claims)
    if claim is None:
        if not reached:
            return DetectedNode(node=node, backend=None, state=NodeState.DOWN, reason=_down_reason(probes))
        if _openai_shaped(probes.get("/v1/models")):
            reason = "an OpenAI-compatible server (generic-openai) that no installed plugin recognises"
        else:
            reason = "answered, but no installed plugin recognises it"
        return DetectedNode(node=node, backend=None, state=NodeState.UNKNOWN, latency=latency, reason=reason)
    others = sorted({c.backend for c in claims if c.backend != claim.backend})
    reason = claim.reason + (f" (also claimed by: {', '.join(others)})" if others else "")
    return DetectedNode(
        node=node,
        backend=claim.backend,
        state=claim.state,
        version=claim.version,
        models=claim.models,
        latency=latency,
        reason=reason,
    )


def _named(node: Node, probes: ProbeSet, plugins: Plugins, latency: float | None) -> DetectedNode:
    """A node whose kind the user named and whose plugin did not recognise it: trust the user."""
    assert node.backend is not None
    backend = plugins.backends.get(node.backend)
    if not probes.reached:
        return DetectedNode(
            node=node,
            backend=node.backend,
            state=NodeState.DOWN,
            reason=f"backend named by the user; {_down_reason(probes)}",
        )
    state = NodeState.UP
    if backend is not None:
        health = backend.health()
        answer = probes.get(health.path, health.method)
        if answer.reached:
            try:
                state = backend.health_state(answer)
            except Exception:  # a codec that cannot read an odd answer: the node still answered
                log.debug("health_state of %s raised on %s", node.backend, node.url, exc_info=True)
    return DetectedNode(
        node=node, backend=node.backend, state=state, latency=latency, reason="backend named by the user"
    )


async def _fill_models(transport: Transport, plugins: Plugins, found: DetectedNode) -> DetectedNode:
    """Ask the backend codec for the models of an up node whose detection listed none."""
    if found.node is None or found.backend is None or found.models or found.state is not NodeState.UP:
        return found
    backend = plugins.backends.get(found.backend)
    if backend is None:
        return found
    node = found.node.with_backend(found.backend)
    try:
        models = await transport.run(node, backend.models(), tolerant=True)
    except AuthenticationError as exc:
        return attrs.evolve(found, state=NodeState.AUTH_REQUIRED, reason=f"{found.reason}; listing models: {exc}")
    except SollolError as exc:
        log.debug("listing models of %s failed: %s", node.url, exc)
        return attrs.evolve(found, reason=f"{found.reason}; could not list models: {exc}")
    except Exception as exc:  # a codec bug must not turn detection into a crash
        log.warning("models() of backend %s raised on %s: %r", found.backend, node.url, exc)
        return attrs.evolve(found, reason=f"{found.reason}; could not list models: {exc!r}")
    return attrs.evolve(found, models=tuple(m.name for m in models))


async def detect_one(
    spec: NodeSpec,
    *,
    plugins: Plugins,
    transport: Transport,
    backend: str | None = None,
    timeout: float | None = None,
    models: bool = True,
    source: str | None = None,
) -> DetectedNode:
    """Detect one node with a transport the caller owns. Never raises for a bad node."""
    try:
        node = read_node(spec, backend=backend)
    except ConfigError as exc:
        return DetectedNode(
            node=None, backend=backend, state=NodeState.UNKNOWN, given=str(spec), reason=str(exc), source=source
        )
    if node.backend and node.backend not in plugins.backends:
        have = ", ".join(sorted(plugins.backends)) or "none"
        return DetectedNode(
            node=node,
            backend=node.backend,
            state=NodeState.UNKNOWN,
            source=source,
            reason=f"no installed plugin provides backend {node.backend!r} (installed: {have})",
        )
    found = decide(node, await probe_node(transport, plugins, node, timeout), plugins)
    if models:
        found = await _fill_models(transport, plugins, found)
    return attrs.evolve(found, source=source)


async def detect_async(
    specs: Sequence[NodeSpec] | NodeSpec,
    *,
    plugins: Plugins | None = None,
    transport: Transport | None = None,
    timeout: float | None = None,
    backend: str | None = None,
    models: bool = True,
    concurrency: int = DEFAULT_CONCURRENCY,
) -> list[DetectedNode]:
    """Detect the servers at `specs` in parallel, in the order given. Never raises for a bad node.

    `backend` names the kind of every node that does not name its own; `timeout` bounds each
    probe (default `Timeouts.probe`); `models=False` skips listing the models of up nodes.
    """
    if isinstance(specs, (str, Node)) or not isinstance(specs, Sequence):
        specs = [specs]
    plugins = plugins or default_plugins()
    own = transport is None
    transport = transport or detection_transport()
    gate = asyncio.Semaphore(max(1, concurrency))

    async def one(spec: NodeSpec) -> DetectedNode:
        async with gate:
            return await detect_one(
                spec, plugins=plugins, transport=transport, backend=backend, timeout=timeout, models=models
            )

    try:
        return list(await asyncio.gather(*(one(s) for s in specs)))
    finally:
        if own:
            await transport.aclose()


@functools.cache
def _tls_context() -> ssl.SSLContext:
    # httpx builds a new context (and re-reads the CA bundle, ~0.1-0.3 s) for every client
    # it creates unless given one; detection creates a client per call, so build it once.
    return httpx.create_ssl_context()


def detection_transport() -> Transport:
    """A transport for probing many nodes once each.

    Without keep-alive: every probe opens its own connection anyway (they run in parallel),
    and a pool full of idle connections to hundreds of hosts only slows the next lookups.
    """
    timeouts = Timeouts()
    client = httpx.AsyncClient(
        timeout=timeouts.httpx(),
        limits=httpx.Limits(max_connections=512, max_keepalive_connections=0),
        follow_redirects=False,
        trust_env=False,
        verify=_tls_context(),
    )
    return Transport(timeouts=timeouts, client=client)


def detect(url: NodeSpec, **kw: Any) -> DetectedNode:
    """Detect the server at one URL (sync; see `detect_async` for the options)."""
    return run_sync(detect_async([url], **kw))[0]


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to the end, from plain code or from under a running loop (Jupyter)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as worker:
        return worker.submit(asyncio.run, coro).result()
