"""Routing: find the nodes that can serve a request, let a policy score them, pick one.

`PoolNode` is the pool's live record of a node (what it is, what it has, how busy it is).
`Router` keeps an index from model names (as users write them, plus configured aliases)
to the nodes that serve them, filters those by health, capability and free capacity, and
hands the rest to a policy. Policies are plugins registered by name
(`sollol_register_policies`); the built-in ones live in `sollol.policies`.

Everything here runs on the pool's event loop, once per request, so it is written to do
little per call: the index is rebuilt only when an inventory changes, and big clusters
are sampled rather than scanned.
"""

from __future__ import annotations

import bisect
import operator
import random
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol, Union

import attrs

from sollol.activity import Activity, ModelInfo
from sollol.codec import Backend, model_key
from sollol.detection import Detection, NodeState
from sollol.health import CircuitBreaker, CircuitState
from sollol.inference import ChatRequest, Request
from sollol.latency import LoadCost, ModelStats
from sollol.node import Node

#: Seconds a cold model load is assumed to cost before one was measured on the node.
DEFAULT_LOAD_COST = 5.0

#: How an alias is given: one name for every node; any of several names; or a name per
#: node id / backend kind ("*" for the rest).
AliasSpec = Union[str, Sequence[str], Mapping[str, str]]  # noqa: UP007 - a runtime alias, Python 3.10

_USABLE = frozenset({NodeState.UP, NodeState.UNKNOWN})


class _Lease:
    """`PoolNode.lease()`: a class rather than a generator-based context manager (one per request)."""

    __slots__ = ("_pnode", "_reserved")

    def __init__(self, pnode: PoolNode, reserved: bool) -> None:
        self._pnode = pnode
        self._reserved = reserved

    def __enter__(self) -> None:
        pnode = self._pnode
        if self._reserved:
            pnode.reserved -= 1
        pnode.in_flight += 1

    def __exit__(self, *exc: object) -> None:
        pnode = self._pnode
        pnode.in_flight -= 1
        if pnode.on_release is not None:
            pnode.on_release(pnode)


class PoolNode:
    """The pool's live record of one node. Mutated only on the pool's event loop."""

    def __init__(self, node: Node, backend: Backend | None = None, *, limit: int | None = None) -> None:
        self.node = node
        self.id = node.id  # stable: kind detection keeps the name, host and port
        self.backend = backend
        self.detection: Detection | None = None
        self._state = NodeState.UNKNOWN
        self.up = True  # state is UP or UNKNOWN
        self.models: dict[str, ModelInfo] | None = None  # by model_key; None = not known yet
        self.activity: Activity | None = None
        self.loaded_keys: set[str] | None = None  # model_keys resident in memory; None = unknown
        self.in_flight = 0
        self.reserved = 0  # slots handed to queued requests that have not started yet
        self.limit = node.max_concurrency if node.max_concurrency is not None else limit
        # Requests it runs at once: a `parallel` label (OLLAMA_NUM_PARALLEL, --parallel...),
        # else the concurrency limit, else what the backend reports, else 1.
        declared = dict(node.labels).get("parallel")
        self.parallel = int(declared) if declared and declared.isdigit() and int(declared) > 0 else None
        self.slots = self.parallel or (max(self.limit, 1) if self.limit is not None else 1)
        self.reported_load = 0  # running + waiting, as the backend last said
        self.kv_cache_usage: float | None = None
        self.served = 0
        self.failed = 0
        self.last_error: str | None = None
        self.breaker = CircuitBreaker()
        self.stats: dict[str, ModelStats] = {}  # by model_key
        self.load_cost = LoadCost(DEFAULT_LOAD_COST)
        self.on_release: Callable[[PoolNode], None] | None = None

    def __repr__(self) -> str:
        kind = self.backend.name if self.backend else "?"
        return f"<PoolNode {self.node.id} {kind} {self._state.value} in_flight={self.in_flight}>"

    @property
    def state(self) -> NodeState:
        """What probing and requests say about the node."""
        return self._state

    @state.setter
    def state(self, value: NodeState) -> None:
        self._state = value
        self.up = value in _USABLE

    def lease(self, *, reserved: bool = False) -> _Lease:
        """Count one request in flight for exactly as long as the `with` block runs.

        Incremented before dispatch and decremented on the way out, so errors,
        cancellations and abandoned streams all give the slot back. With `reserved`, the
        request takes the slot the wait queue reserved for it.
        """
        return _Lease(self, reserved)

    @property
    def load(self) -> int:
        """Requests on the node: this pool's own, or what the backend reports if that is more."""
        mine = self.in_flight + self.reserved
        return mine if mine >= self.reported_load else self.reported_load

    @property
    def full(self) -> bool:
        """True when the node's concurrency limit is reached."""
        return self.limit is not None and self.in_flight + self.reserved >= self.limit

    @property
    def at_capacity(self) -> bool:
        """True when the node's configured concurrency limit is reached."""
        return self.full

    def available(self) -> bool:
        """Whether the node may be sent a request now (health and circuit breaker)."""
        if not self.up:
            return False
        breaker = self.breaker
        return breaker.state is CircuitState.CLOSED or breaker.allows()

    def has_model(self, model: str) -> bool | None:
        """True/False when the inventory is known, None when it is not."""
        if self.models is None:
            return None
        return model_key(model) in self.models

    def model_names(self) -> list[str]:
        """Names of the models this node serves (empty when unknown)."""
        return [info.name for info in (self.models or {}).values()]

    def is_loaded(self, model: str) -> bool | None:
        """Whether the model is resident, when the backend says."""
        if self.loaded_keys is None:
            return None
        return model_key(model) in self.loaded_keys

    def set_activity(self, activity: Activity | None) -> None:
        """Take in what the backend reports: loaded models, queue, KV cache."""
        self.activity = activity
        if activity is None:
            return
        if activity.loaded is not None:
            self.loaded_keys = {model_key(m.name) for m in activity.loaded}
        self.reported_load = (activity.running or 0) + (activity.waiting or 0)
        self.kv_cache_usage = activity.kv_cache_usage
        if self.parallel is None and self.limit is None and activity.capacity:
            self.slots = max(activity.capacity, 1)

    def stats_for(self, key: str, prior: ModelStats | None = None) -> ModelStats:
        """This node's latency record for a model, created from `prior` when new."""
        stats = self.stats.get(key)
        if stats is None:
            stats = ModelStats() if prior is None else ModelStats(prior.ttft, prior.per_token, prior.tokens)
            self.stats[key] = stats
        return stats

    def snapshot(self) -> dict[str, Any]:
        """A JSON object describing the node now."""
        return {
            "id": self.id,
            "url": self.node.url,
            "backend": self.backend.name if self.backend else None,
            "state": self._state.value,
            "circuit": self.breaker.state.value,
            "version": self.detection.version if self.detection else None,
            "models": sorted(self.model_names()),
            "loaded": sorted(self.loaded_keys) if self.loaded_keys is not None else None,
            "in_flight": self.in_flight,
            "queued_for": self.reserved,
            "max_concurrency": self.limit,
            "served": self.served,
            "failed": self.failed,
            "last_error": self.last_error,
            "latency": {
                key: {"ttft": s.ttft, "per_token": s.per_token, "samples": s.samples} for key, s in self.stats.items()
            },
            # What the backend reports (None where it cannot tell); `raw` stays out.
            "activity": attrs.asdict(self.activity, filter=lambda a, _: a.name != "raw")
            if self.activity is not None
            else None,
        }


class Target:
    """One node able to serve one model, under the name that node knows it by."""

    __slots__ = ("caps", "embeds", "generates", "info", "key", "name", "operations", "pnode", "stats")

    def __init__(self, pnode: PoolNode, name: str, info: ModelInfo | None, stats: ModelStats) -> None:
        self.pnode = pnode
        self.name = name
        self.key = model_key(name)
        self.info = info
        self.stats = stats
        self.operations = pnode.backend.operations if pnode.backend is not None else frozenset()
        caps = self.caps = info.capabilities if info is not None else None
        self.embeds = "embed" in self.operations and (caps is None or "embedding" in caps)
        self.generates = caps is None or "completion" in caps or "embedding" not in caps

    def __repr__(self) -> str:
        return f"<Target {self.pnode.id} {self.name}>"

    def serves(self, needs: frozenset[str], operation: str) -> bool:
        """Whether this model can do what the request needs (unknown capabilities pass)."""
        if operation == "embed":
            return self.embeds
        if operation not in self.operations or not self.generates:
            return False
        return self.caps is None or needs <= self.caps

    @property
    def cold(self) -> bool:
        """True when the node is known not to have the model in memory."""
        loaded = self.pnode.loaded_keys
        return loaded is not None and self.key not in loaded


_NO_NEEDS: frozenset[str] = frozenset()


def needs_of(request: Request) -> frozenset[str]:
    """The model capabilities a request needs (Ollama's names: vision, tools, thinking, embedding)."""
    if request.operation == "embed":
        return frozenset({"embedding"})
    params = request.params
    if not params and not isinstance(request, ChatRequest):
        return _NO_NEEDS
    needs = []
    if params.get("tools"):
        needs.append("tools")
    think = params.get("think")
    if think and think not in ("false", "False", "none"):
        needs.append("thinking")
    images = params.get("images")
    if not images and isinstance(request, ChatRequest):
        images = _any_images(request.messages)
    if images:
        needs.append("vision")
    return frozenset(needs) if needs else _NO_NEEDS


def _any_images(messages: Sequence[Any]) -> bool:
    for message in messages:
        # JSON gives dicts: checked as such first (an ABC's isinstance costs far more)
        if (type(message) is dict or isinstance(message, Mapping)) and message.get("images"):
            return True
    return False


_PNODE = operator.attrgetter("pnode")


class Candidates(list[PoolNode]):
    """The nodes a policy may pick from, with each one's `Target` (same order)."""

    def __init__(
        self, targets: Sequence[Target], key: str, router: Router | None = None, prompt_key: str | None = None
    ) -> None:
        super().__init__(map(_PNODE, targets))
        self.targets = targets if isinstance(targets, list) else list(targets)
        self.key = key
        self.router = router
        self.prompt_key = prompt_key  # the request's, when the router already worked it out


@attrs.frozen(kw_only=True)
class Choice:
    """A policy's pick, with its score and the parts the score is made of."""

    node: PoolNode
    score: float = 0.0
    parts: tuple[tuple[str, float], ...] = ()


class Policy(Protocol):
    """Scores and picks one of the candidates."""

    name: str

    def choose(self, candidates: Sequence[PoolNode], request: Request, rng: random.Random) -> Choice:
        """Pick one of `candidates` (never empty)."""


class HashRing:
    """Consistent hashing of keys onto node ids (64 points per node)."""

    POINTS = 64

    def __init__(self, ids: Sequence[str]) -> None:
        points = sorted((zlib.crc32(f"{node_id}#{i}".encode()), node_id) for node_id in ids for i in range(self.POINTS))
        self._hashes = [h for h, _ in points]
        self._ids = [node_id for _, node_id in points]

    def first(self, key: str, count: int) -> tuple[str, ...]:
        """The first `count` distinct node ids on the ring from where `key` falls."""
        out: list[str] = []
        for node_id in self.walk(key):
            out.append(node_id)
            if len(out) >= count:
                break
        return tuple(out)

    def walk(self, key: str) -> Iterator[str]:
        """Node ids in ring order from where `key` falls; each id once."""
        if not self._ids:
            return
        start = bisect.bisect(self._hashes, zlib.crc32(key.encode()))
        seen: set[str] = set()
        count = len(self._ids)
        for step in range(count):
            node_id = self._ids[(start + step) % count]
            if node_id not in seen:
                seen.add(node_id)
                yield node_id

    def owner(self, key: str, allowed: Mapping[str, Any] | set[str]) -> str | None:
        """The first node id on the ring from `key` that is in `allowed`."""
        if not self._ids or not allowed:
            return None
        ids = self._ids
        count = len(ids)
        start = bisect.bisect(self._hashes, zlib.crc32(key.encode()))
        for step in range(count):
            node_id = ids[(start + step) % count]
            if node_id in allowed:
                return node_id
        return None


def resolve_alias(spec: AliasSpec, pnode: PoolNode) -> str | None:
    """The name `pnode` knows an aliased model by, or None when it has none of them."""
    if isinstance(spec, str):
        names: Sequence[str] = (spec,)
    elif isinstance(spec, Mapping):
        kind = pnode.backend.name if pnode.backend else None
        name = spec.get(pnode.id) or (spec.get(kind) if kind else None) or spec.get("*")
        if name is None:
            return None
        names = (name,)
    else:
        names = spec
    if pnode.models is None:
        return names[0] if names else None
    for name in names:
        info = pnode.models.get(model_key(name))
        if info is not None:
            return info.name
    return None


class ModelIndex:
    """Which node serves which model, by the name users write (and by alias)."""

    def __init__(
        self, nodes: Sequence[PoolNode], aliases: Mapping[str, AliasSpec], cluster: Mapping[str, ModelStats]
    ) -> None:
        self.by_key: dict[str, list[Target]] = {}
        self.unknown = [p for p in nodes if p.models is None and p.backend is not None]
        for pnode in nodes:
            for key, info in (pnode.models or {}).items():
                self.by_key.setdefault(key, []).append(
                    Target(pnode, info.name, info, pnode.stats_for(key, cluster.get(key)))
                )
        for logical, spec in aliases.items():
            lkey = model_key(logical)
            have = {t.pnode.id for t in self.by_key.get(lkey, ())}
            for pnode in nodes:
                if pnode.id in have or pnode.backend is None:
                    continue
                local = resolve_alias(spec, pnode)
                if local is None:
                    continue
                key = model_key(local)
                found = pnode.models.get(key) if pnode.models is not None else None
                target = Target(pnode, local, found, pnode.stats_for(key, cluster.get(key)))
                self.by_key.setdefault(lkey, []).append(target)
        # A random but fixed order, so sampling windows of big clusters are fair.
        shuffler = random.Random(len(nodes))
        for targets in self.by_key.values():
            shuffler.shuffle(targets)

    def models(self) -> list[str]:
        """One name per model (aliases by their logical name)."""
        names = {}
        for key, targets in self.by_key.items():
            names[key] = targets[0].name if targets[0].key == key else key.removesuffix(":latest")
        return sorted(names.values())


class Router:
    """Filters and picks; owns the model index and the hash ring."""

    #: Above this many targets, only a sample of them is scored (policies with `sample`).
    SCAN_LIMIT = 16
    #: The size of each half of the sample: best-known nodes and a random window.
    SAMPLE = 3

    # How a policy lets the router narrow big clusters, by its `sample` attribute:
    # True or "ranked": the SAMPLE best-known nodes plus a random window of SAMPLE (sollol, latency);
    # "window": a random window of 2 x SAMPLE (least_loaded: the power of d choices; random);
    # "rotate": the first eligible node from a cursor that moves on each time (round_robin).
    # Anything else (a third-party policy by default) sees every eligible node.

    def __init__(
        self,
        nodes: Sequence[PoolNode],
        policy: Policy,
        rng: random.Random,
        aliases: Mapping[str, AliasSpec] | None = None,
    ) -> None:
        self.nodes = nodes
        self.policy = policy
        self.rng = rng
        self.aliases = dict(aliases or {})
        self.cluster: dict[str, ModelStats] = {}  # cluster-wide latency by model_key
        self._index: ModelIndex | None = None
        self._ring: HashRing | None = None
        self._ranked: dict[str, tuple[float, list[Target]]] = {}
        self._doubled: dict[str, tuple[Sequence[Target], list[Target]]] = {}  # targets, targets + targets
        self._cursor: dict[str, int] = {}
        self._keys: dict[str, str] = {}  # model names as requested -> model_key
        self._preferred: dict[str, tuple[str, ...]] = {}  # prompt prefix -> ring node ids
        self._prompt: tuple[Request | None, str] = (None, "")  # the last request's prompt_key
        self._ring_size = -1
        self._by_id: dict[str, dict[str, Target]] = {}  # model_key -> node id -> target
        mode = getattr(policy, "sample", False)
        self._mode = "ranked" if mode is True else mode if mode in ("ranked", "window", "rotate") else None

    def invalidate(self) -> None:
        """Forget the index: an inventory changed."""
        self._index = None
        self._ranked.clear()
        self._doubled.clear()
        self._by_id.clear()

    @property
    def index(self) -> ModelIndex:
        """The model index, rebuilt when an inventory changed."""
        if self._index is None:
            self._index = ModelIndex(self.nodes, self.aliases, self.cluster)
        return self._index

    @property
    def ring(self) -> HashRing:
        """The hash ring over every node."""
        if self._ring is None or len(self._ring._ids) != HashRing.POINTS * len(self.nodes):
            self._ring = HashRing([p.id for p in self.nodes])
            self._preferred.clear()
        return self._ring

    #: Ring nodes a prompt prefix may stick to: its owner, then the next ones when the owner is out.
    PREFERRED = 3

    def preferred(self, prompt_key: str) -> tuple[str, ...]:
        """The first few node ids on the ring for a prompt prefix (cached per prefix)."""
        found = self._preferred.get(prompt_key)
        if found is None or self._ring is None or self._ring_size != len(self.nodes):
            ring = self.ring
            self._ring_size = len(self.nodes)
            if len(self._preferred) > 4096:
                self._preferred.clear()
            found = self._preferred[prompt_key] = ring.first(prompt_key, self.PREFERRED)
        return found

    def targets(self, request: Request) -> list[Target]:
        """Every node that serves the request's model, ignoring health and load."""
        model = request.model
        key = self._keys.get(model)
        if key is None:
            if len(self._keys) > 4096:
                self._keys.clear()
            key = self._keys[model] = model_key(model)
        index = self._index
        if index is None:
            index = self.index
        found = index.by_key.get(key)
        if found:
            return found
        unknown = index.unknown
        if not unknown:
            return []
        # Nodes whose inventory could not be read are a last resort, never preferred.
        out = []
        for pnode in unknown:
            name = request.model
            spec = self.aliases.get(request.model) or self.aliases.get(key)
            if spec is not None:
                name = resolve_alias(spec, pnode) or name
            out.append(Target(pnode, name, None, pnode.stats_for(key, self.cluster.get(key))))
        return out

    def eligible(
        self, targets: Sequence[Target], request: Request, needs: frozenset[str], exclude: Sequence[str]
    ) -> list[Target]:
        """The targets that may take the request now: healthy, capable, not full, not tried.

        Big clusters are narrowed first, the way the policy allows (see `Router.SAMPLE`);
        when the narrowed set has no eligible node, every node is looked at.
        """
        mode = self._mode
        if mode is not None and len(targets) > self.SCAN_LIMIT:
            if mode == "rotate":
                found = self._rotate(targets, request, needs, exclude)
            else:
                sample = self._sample(targets, mode == "window")
                if mode == "ranked":  # the prefix's ring nodes too, so affinity survives sampling
                    sample += self._preferred_targets(targets, request)
                found = self._filter(sample, request, needs, exclude)
            if found:
                return found
        return self._filter(targets, request, needs, exclude)

    def _filter(
        self, targets: Sequence[Target], request: Request, needs: frozenset[str], exclude: Sequence[str]
    ) -> list[Target]:
        operation = request.operation
        simple = not needs and operation != "embed"
        out = []
        closed = CircuitState.CLOSED
        for target in targets:
            pnode = target.pnode
            if pnode.limit is not None and pnode.in_flight + pnode.reserved >= pnode.limit:
                continue
            if not (pnode.up and pnode.breaker.state is closed) and not pnode.available():
                continue
            if simple:
                if not target.generates or operation not in target.operations:
                    continue
            elif not target.serves(needs, operation):
                continue
            if exclude and pnode.id in exclude:
                continue
            out.append(target)
        return out

    def _preferred_targets(self, targets: Sequence[Target], request: Request) -> list[Target]:
        prompt = request.prompt_key
        self._prompt = (request, prompt)
        if not prompt:
            return []
        key = targets[0].key
        by_id = self._by_id.get(key)
        if by_id is None:
            by_id = self._by_id[key] = {t.pnode.id: t for t in targets}
        return [by_id[i] for i in self.preferred(prompt) if i in by_id]

    def _window(self, targets: Sequence[Target], size: int) -> list[Target]:
        """`size` consecutive targets from a random start (the index's order is shuffled)."""
        key = targets[0].key
        doubled = self._doubled.get(key)
        if doubled is None or doubled[0] is not targets:
            doubled = self._doubled[key] = (targets, [*targets, *targets])
        start = int(self.rng.random() * len(targets))
        return doubled[1][start : start + size]

    def _sample(self, targets: Sequence[Target], window_only: bool = False) -> list[Target]:
        if window_only:
            return self._window(targets, 2 * self.SAMPLE)
        key = targets[0].key
        now = time.monotonic()
        ranked = self._ranked.get(key)
        if ranked is None or now - ranked[0] > 0.1:
            tokens = self.cluster[key].tokens if key in self.cluster else 64.0
            order = sorted(
                targets, key=lambda t: t.stats.service(tokens) + (t.pnode.load_cost.seconds if t.cold else 0.0)
            )
            ranked = (now, order[: self.SAMPLE])
            self._ranked[key] = ranked
        return ranked[1] + self._window(targets, self.SAMPLE)

    def _rotate(
        self, targets: Sequence[Target], request: Request, needs: frozenset[str], exclude: Sequence[str]
    ) -> list[Target]:
        """The first eligible target from the model's cursor on (a few at a time), moving the cursor past it."""
        key = targets[0].key
        count = len(targets)
        start = self._cursor.get(key, 0) % count
        doubled = self._doubled.get(key)
        if doubled is None or doubled[0] is not targets:
            doubled = self._doubled[key] = (targets, [*targets, *targets])
        ring = doubled[1]
        step = self.SAMPLE
        for offset in range(0, count, step):
            chunk = ring[start + offset : start + min(offset + step, count)]
            found = self._filter(chunk, request, needs, exclude)
            if found:
                self._cursor[key] = (start + offset + chunk.index(found[0]) + 1) % count
                return found[:1]
        return []

    def possible(self, request: Request, needs: frozenset[str]) -> list[Target]:
        """Targets that could serve the request if they were healthy and free."""
        operation = request.operation
        return [t for t in self.targets(request) if t.serves(needs, operation)]

    def choose(self, targets: Sequence[Target], request: Request) -> tuple[Choice, Target]:
        """Let the policy pick among `targets` (never empty)."""
        prompt = self._prompt
        candidates = Candidates(targets, targets[0].key, self, prompt[1] if prompt[0] is request else None)
        choice = self.policy.choose(candidates, request, self.rng)
        node = choice.node
        for target in targets:
            if target.pnode is node:
                return choice, target
        raise LookupError(f"policy {self.policy.name!r} picked {node.id}, which was not a candidate")
