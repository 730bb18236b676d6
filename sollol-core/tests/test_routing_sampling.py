"""Big clusters: the router narrows the candidates the way each policy allows, and stays correct."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from sollol.activity import ModelInfo
from sollol.inference import ChatRequest
from sollol.node import Node
from sollol.policies import LeastLoaded, Random, RoundRobin, Sollol
from sollol.routing import PoolNode, Router, needs_of

MODEL = "llama3.2:latest"


class _Toy:
    name = "toy"
    operations = frozenset({"chat", "generate", "embed"})


def cluster(count: int) -> list[PoolNode]:
    nodes = []
    for index in range(count):
        pnode = PoolNode(Node(host="127.0.0.1", port=20000 + index, name=f"n{index}"), _Toy())  # type: ignore[arg-type]
        pnode.models = {MODEL: ModelInfo(name=MODEL)}
        nodes.append(pnode)
    return nodes


def pick(router: Router, request: ChatRequest, tried: list[str] | None = None) -> PoolNode:
    eligible = router.eligible(router.targets(request), request, needs_of(request), tried or [])
    choice, _ = router.choose(eligible, request)
    return choice.node


def chat(prefix: str = "system prompt") -> ChatRequest:
    return ChatRequest(
        model="llama3.2", messages=[{"role": "system", "content": prefix}, {"role": "user", "content": "q"}]
    )


def test_round_robin_in_a_big_cluster_visits_every_node_in_turn() -> None:
    nodes = cluster(50)
    router = Router(nodes, RoundRobin(), random.Random(1))
    picks = [pick(router, chat()).id for _ in range(100)]
    assert Counter(picks) == Counter({p.id: 2 for p in nodes})
    assert picks[:50] == picks[50:]


def test_round_robin_in_a_big_cluster_skips_nodes_that_cannot_take_it() -> None:
    nodes = cluster(50)
    for pnode in nodes[::2]:
        pnode.up = False
    router = Router(nodes, RoundRobin(), random.Random(1))
    picks = {pick(router, chat()).id for _ in range(25)}
    assert picks == {p.id for p in nodes[1::2]}


def test_least_loaded_in_a_big_cluster_takes_an_idle_node_from_its_sample() -> None:
    nodes = cluster(200)
    for pnode in nodes:
        pnode.in_flight = 3
    for pnode in nodes[:150]:
        pnode.in_flight = 0
    router = Router(nodes, LeastLoaded(), random.Random(1))
    picked = [pick(router, chat()) for _ in range(50)]
    assert all(p.in_flight == 0 for p in picked)  # a dozen sampled: an idle one is nearly always among them


def test_sampling_falls_back_to_every_node_when_the_sample_has_none_eligible() -> None:
    for policy in (LeastLoaded(), Random(), Sollol(), RoundRobin()):
        nodes = cluster(300)
        for pnode in nodes[1:]:
            pnode.up = False
        router = Router(nodes, policy, random.Random(2))
        assert pick(router, chat()) is nodes[0]


def test_sollol_in_a_big_cluster_keeps_a_prefix_on_its_ring_node() -> None:
    nodes = cluster(100)
    router = Router(nodes, Sollol(), random.Random(3))
    owners = {pick(router, chat("the same long system prompt")).id for _ in range(20)}
    assert len(owners) == 1
    assert owners <= set(router.preferred(chat("the same long system prompt").prompt_key))


def test_sollol_in_a_big_cluster_prefers_the_node_it_knows_is_fastest() -> None:
    nodes = cluster(100)
    router = Router(nodes, Sollol(affinity=0.0), random.Random(4))
    for pnode in nodes:
        pnode.stats_for(MODEL).observe(ttft=0.5, per_token=0.05)
    fast = nodes[37]
    fast.stats_for(MODEL).observe(ttft=0.01, per_token=0.001)
    fast.stats[MODEL].ttft, fast.stats[MODEL].per_token = 0.01, 0.001
    router.invalidate()
    assert pick(router, chat()) is fast


def test_an_excluded_node_is_never_picked_in_a_big_cluster() -> None:
    nodes = cluster(40)
    router: Any
    for policy in (LeastLoaded(), Random(), Sollol(), RoundRobin()):
        router = Router(nodes, policy, random.Random(5))
        tried = [p.id for p in nodes[:39]]
        assert pick(router, chat(), tried) is nodes[39]


def test_sollol_spreads_sequential_requests_over_equal_idle_nodes() -> None:
    # SOLLOL 0.9.66 sent 30 of 30 sequential requests to one of three identical nodes. Here one
    # node has been measured and the others not yet: they expect the cluster's latency, and
    # near-equal costs are ties broken at random, so all three share the work.
    nodes = cluster(3)
    router = Router(nodes, Sollol(affinity=0.0), random.Random(6))
    router.cluster[MODEL] = nodes[0].stats_for(MODEL)
    nodes[0].stats_for(MODEL).observe(ttft=0.004, per_token=0.001, tokens=8)
    for pnode in nodes[1:]:
        pnode.stats_for(MODEL)  # never measured
    router.invalidate()
    counts = Counter(pick(router, chat(f"prompt {i}")).id for i in range(60))
    assert set(counts) == {"n0", "n1", "n2"} and min(counts.values()) >= 10, counts


def test_sollol_still_prefers_a_clearly_faster_node_when_idle() -> None:
    nodes = cluster(3)
    router = Router(nodes, Sollol(affinity=0.0), random.Random(7))
    for pnode, per_token in zip(nodes, (0.001, 0.002, 0.003)):  # 2x and 3x slower
        pnode.stats_for(MODEL).observe(ttft=0.004, per_token=per_token, tokens=8)
    router.invalidate()
    assert {pick(router, chat(f"prompt {i}")).id for i in range(20)} == {"n0"}
