"""The built-in routing policies, registered by name through `sollol_register_policies`.

Every policy gets the candidates the router let through (healthy, with the model and the
capabilities the request needs, below their concurrency limit, not yet tried) and picks
one, breaking ties at random, never by list order. `sollol` (the default) scores each
candidate by the seconds it expects the request to take there: a cold model load, the
learned service time, the wait behind requests already on the node, KV-cache pressure,
minus a bonus for the node the prompt's prefix hashes to.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from sollol.inference import Request
from sollol.latency import DEFAULT_TOKENS
from sollol.routing import Candidates, Choice, PoolNode, Target

_EPSILON = 1e-9
#: Costs within this fraction of the best are ties, broken at random: idle nodes whose
#: learned latencies differ by noise share the work instead of the momentarily fastest
#: one taking every sequential request.
_NEAR = 0.10


def _targets(candidates: Sequence[PoolNode]) -> list[Target] | None:
    return candidates.targets if isinstance(candidates, Candidates) else None


def _tokens(request: Request, candidates: Sequence[PoolNode]) -> float:
    """Tokens the answer is expected to have: `num_predict` if set, else what the model usually says."""
    limit = request.options.get("num_predict") if request.options else None
    if isinstance(limit, int) and limit > 0:
        return float(limit)
    if isinstance(candidates, Candidates) and candidates.router is not None:
        stats = candidates.router.cluster.get(candidates.key)
        if stats is not None:
            return stats.tokens
    return DEFAULT_TOKENS


class RoundRobin:
    """Each candidate in turn."""

    name = "round_robin"
    sample = "rotate"  # in big clusters the router hands over the next eligible node: O(1)

    def __init__(self) -> None:
        self._next = 0

    def choose(self, candidates: Sequence[PoolNode], request: Request, rng: random.Random) -> Choice:
        """The next candidate."""
        node = candidates[self._next % len(candidates)]
        self._next += 1
        return Choice(node=node)


class Random:
    """A uniformly random candidate."""

    name = "random"
    sample = "window"  # a random window of a big cluster: still uniform

    def choose(self, candidates: Sequence[PoolNode], request: Request, rng: random.Random) -> Choice:
        """Any candidate."""
        return Choice(node=candidates[rng.randrange(len(candidates))])


class LeastLoaded:
    """Fewest requests on the node (this pool's, or the backend's own count if higher)."""

    name = "least_loaded"
    sample = "window"  # in big clusters, the least loaded of a random dozen (the power of d choices)

    def choose(self, candidates: Sequence[PoolNode], request: Request, rng: random.Random) -> Choice:
        """The least-loaded candidate."""
        best = math.inf
        tied: list[PoolNode] = []
        for pnode in candidates:
            load = pnode.load
            if load < best:
                best, tied = load, [pnode]
            elif load == best:
                tied.append(pnode)
        node = tied[0] if len(tied) == 1 else rng.choice(tied)
        return Choice(node=node, score=-best, parts=(("in_flight", float(best)),))


class Latency:
    """The lowest learned service time (time to first token plus per-token time) for the model."""

    name = "latency"
    sample = "ranked"  # the best-known nodes plus a random window

    def choose(self, candidates: Sequence[PoolNode], request: Request, rng: random.Random) -> Choice:
        """The candidate expected to answer fastest, ignoring its queue."""
        targets = _targets(candidates)
        if targets is None:
            return LeastLoaded().choose(candidates, request, rng)
        tokens = _tokens(request, candidates)
        best = math.inf
        tied: list[Target] = []
        for target in targets:
            cost = target.stats.ttft + target.stats.per_token * tokens
            if cost < best - _EPSILON:
                best, tied = cost, [target]
            elif cost <= best + _EPSILON:
                tied.append(target)
        pick = tied[0] if len(tied) == 1 else rng.choice(tied)
        return Choice(node=pick.pnode, score=-best, parts=(("service", best),))


class Affinity:
    """The same prompt prefix to the same node: consistent hashing with bounded load.

    The prompt's key (conversation start) is hashed onto a ring of nodes; the first node
    on the ring whose load stays under `factor` times the average (plus one) takes it, so
    a hot prefix spills to the next node instead of piling onto one.
    """

    name = "affinity"

    def __init__(self, factor: float = 1.25) -> None:
        self.factor = factor

    def choose(self, candidates: Sequence[PoolNode], request: Request, rng: random.Random) -> Choice:
        """The prefix's node, or the next one on the ring when it is overloaded."""
        router = candidates.router if isinstance(candidates, Candidates) else None
        key = request.prompt_key
        if router is None or not key or len(candidates) == 1:
            return LeastLoaded().choose(candidates, request, rng)
        by_id = {p.id: p for p in candidates}
        total = sum(p.load for p in candidates)
        bound = math.ceil(self.factor * (total + 1) / len(candidates))
        for hops, node_id in enumerate(router.ring.walk(key)):
            pnode = by_id.get(node_id)
            if pnode is not None and pnode.load < bound:
                return Choice(
                    node=pnode, score=-float(hops), parts=(("hops", float(hops)), ("load", float(pnode.load)))
                )
        return LeastLoaded().choose(candidates, request, rng)


class Sollol:
    """The default: expected seconds to finish the request on each node, lowest wins.

    cost = cold load (when the node is known not to have the model in memory, more when
    the model will not fit its free memory) + service time (learned per node and model)
    + wait (service time times the requests ahead of it per parallel slot) + KV-cache
    pressure (backends that report it) + failures (two service times per failure in a row
    on the node: a likely retry) - affinity (part of the time to first token, on the node
    the prompt prefix hashes to, while that node has a free slot).
    """

    name = "sollol"
    sample = True  # the router may score a sample of very big clusters

    def __init__(self, *, affinity: float = 0.5, spread: float = 0.05, cold: float = 1.0) -> None:
        self.affinity = affinity
        self.spread = spread
        self.cold = cold

    def choose(self, candidates: Sequence[PoolNode], request: Request, rng: random.Random) -> Choice:
        """The candidate with the lowest expected time, ties at random."""
        targets = _targets(candidates)
        if targets is None:
            return LeastLoaded().choose(candidates, request, rng)
        tokens = _tokens(request, candidates)
        owner = None
        if self.affinity and len(targets) > 1 and isinstance(candidates, Candidates) and candidates.router is not None:
            key = candidates.prompt_key
            if key is None:
                key = request.prompt_key
            if key:
                preferred = candidates.router.preferred(key)
                rank = len(preferred)
                for pnode in candidates:  # the first of the prefix's ring nodes that is a candidate
                    if pnode.id in preferred and preferred.index(pnode.id) < rank:
                        owner, rank = pnode.id, preferred.index(pnode.id)
        spread = self.spread
        cold = self.cold
        bonus = self.affinity
        cluster = candidates.router.cluster if isinstance(candidates, Candidates) and candidates.router else None
        best = math.inf
        costs: list[float] = []
        owner_at = -1
        owner_bonus = 0.0
        for index, target in enumerate(targets):
            pnode = target.pnode
            stats = target.stats
            if not stats.samples and cluster:
                # Never measured here: expect what the cluster measured, not the cautious
                # default, so a node nobody has tried yet gets its share and is learned.
                stats = cluster.get(target.key, stats)
            service = stats.ttft + stats.per_token * tokens
            load = pnode.in_flight + pnode.reserved
            reported = pnode.reported_load
            if reported > load:
                load = reported
            slots = pnode.slots
            ahead = load + 1 - slots
            if ahead > 0:
                cost = service * (1.0 + (spread * load + ahead) / slots)
            else:
                cost = service * (1.0 + spread * load / slots)
                if owner is not None and pnode.id == owner:
                    owner_at, owner_bonus = index, bonus * stats.ttft
            loaded = pnode.loaded_keys
            if loaded is not None and target.key not in loaded:
                activity = pnode.activity
                if activity is not None and activity.vram_total:
                    cost += self._cold(target, service)
                else:
                    cost += pnode.load_cost.seconds * cold
            kv = pnode.kv_cache_usage
            if kv is not None and kv > 0.9:
                cost += service * (kv - 0.9) * 10.0
            failures = pnode.breaker.consecutive
            if failures:  # it failed the last request(s): a likely retry, i.e. paying twice
                cost += 2.0 * service * failures
            costs.append(cost)
            if cost < best:
                best = cost
        limit = best * (1.0 + _NEAR) + _EPSILON
        if owner_at >= 0 and costs[owner_at] - owner_bonus <= limit:
            # The prompt's prefix lives on its ring node: keep it there while that node
            # is about as good as the best (it has a free slot, or it would not be owner_at).
            pick = targets[owner_at]
            best = costs[owner_at] - owner_bonus
        else:
            if len(costs) == 1:
                chosen = 0
            else:
                near = [i for i, cost in enumerate(costs) if cost <= limit]
                chosen = near[0] if len(near) == 1 else rng.choice(near)
            pick = targets[chosen]
            best = costs[chosen]
        return Choice(node=pick.pnode, score=-best, parts=self.parts(pick, tokens, owner))

    def _cold(self, target: Target, service: float) -> float:
        pnode = target.pnode
        cost = pnode.load_cost.seconds * self.cold
        size = target.info.size if target.info is not None else None
        activity = pnode.activity
        if size and activity is not None and activity.vram_total:
            free = activity.vram_total - (activity.vram_used or 0)
            if size > activity.vram_total:
                cost += 2.0 * service  # partly on the CPU: slower for the whole answer
            elif size > free:
                cost *= 1.5  # something must be evicted first
        return cost

    def parts(self, target: Target, tokens: float, owner: str | None) -> tuple[tuple[str, float], ...]:
        """The score's parts for one target, for `Route.parts`."""
        pnode = target.pnode
        stats = target.stats
        service = stats.ttft + stats.per_token * tokens
        load = max(pnode.in_flight + pnode.reserved, pnode.reported_load)
        slots = pnode.slots
        ahead = load + 1 - slots
        wait = service * (self.spread * load / slots + (ahead / slots if ahead > 0 else 0.0))
        loaded = pnode.loaded_keys
        cold = self._cold(target, service) if loaded is not None and target.key not in loaded else 0.0
        kv = pnode.kv_cache_usage
        pressure = service * (kv - 0.9) * 10.0 if kv is not None and kv > 0.9 else 0.0
        bonus = self.affinity * stats.ttft if owner == pnode.id and load < slots else 0.0
        return (
            ("cold", cold),
            ("service", service),
            ("wait", wait),
            ("kv", pressure),
            ("failures", 2.0 * service * pnode.breaker.consecutive),
            ("affinity", -bonus),
            ("load", float(load)),
        )
