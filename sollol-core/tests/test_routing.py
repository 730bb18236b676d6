"""Model-aware routing: names, aliases, warmth, memory, capabilities, policies, explain."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from routing_support import Recorder, cluster_nodes, toy, toy_plugins

from sollol import hookimpl
from sollol import pool as pool_module
from sollol.activity import Activity, ActivityEvent, LoadedModel, ModelInfo, RequestRecord
from sollol.errors import ConfigError, NoNodeForModelError
from sollol.inference import ChatRequest, EmbedRequest, GenerateRequest, Request
from sollol.node import Node
from sollol.policies import Affinity, Latency, LeastLoaded, Random, RoundRobin, Sollol
from sollol.pool import AsyncPool
from sollol.routing import Candidates, Choice, HashRing, PoolNode, Router, needs_of
from sollol.testing.emulator import EmulatedModel

HI = [{"role": "user", "content": "hi"}]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


class _Toy:
    name = "toy"
    operations = frozenset({"chat", "generate", "embed"})


def pnode(
    name: str, *models: str | ModelInfo, loaded: Sequence[str] | None = None, limit: int | None = None
) -> PoolNode:
    node = PoolNode(Node(host="127.0.0.1", port=1000 + hash(name) % 1000, name=name, max_concurrency=limit), _Toy())  # type: ignore[arg-type]
    infos = [m if isinstance(m, ModelInfo) else ModelInfo(name=m) for m in models]
    from sollol.codec import model_key

    node.models = {model_key(m.name): m for m in infos}
    if loaded is not None:
        node.set_activity(Activity(loaded=tuple(LoadedModel(name=n) for n in loaded)))
    return node


def router(nodes: list[PoolNode], policy: Any = None, **kw: Any) -> Router:
    return Router(nodes, policy or Sollol(), random.Random(1), **kw)


def pick(r: Router, request: Request, exclude: Sequence[str] = ()) -> str | None:
    targets = r.targets(request)
    eligible = r.eligible(targets, request, needs_of(request), list(exclude))
    if not eligible:
        return None
    choice, _ = r.choose(eligible, request)
    return choice.node.id


def chat(model: str = "llama3.2", **params: Any) -> ChatRequest:
    return ChatRequest(model=model, messages=HI, params=params)


# -- names and aliases ---------------------------------------------------------------------------


def test_names_match_the_way_users_write_them() -> None:
    r = router([pnode("a", "llama3.2:latest"), pnode("b", "qwen2.5:7b")])
    assert pick(r, chat("llama3.2")) == "a"
    assert pick(r, chat("llama3.2:latest")) == "a"
    assert pick(r, chat("qwen2.5:7b")) == "b"
    assert pick(r, chat("qwen2.5")) is None  # qwen2.5 means qwen2.5:latest, which nobody has


def test_alias_maps_one_logical_model_to_each_nodes_name() -> None:
    a = pnode("a", "llama3.2:3b")
    b = pnode("b", "meta-llama/Llama-3.2-3B-Instruct")
    c = pnode("c", "other")
    r = router([a, b, c], aliases={"llama": {"a": "llama3.2:3b", "*": "meta-llama/Llama-3.2-3B-Instruct"}})
    names = {t.pnode.id: t.name for t in r.targets(chat("llama"))}
    assert names == {"a": "llama3.2:3b", "b": "meta-llama/Llama-3.2-3B-Instruct"}
    listed = router([a, b, c], aliases={"llama": ["llama3.2:3b", "meta-llama/Llama-3.2-3B-Instruct"]})
    assert {t.pnode.id for t in listed.targets(chat("llama"))} == {"a", "b"}


def test_request_sent_to_a_node_carries_that_nodes_name(loopback_servers: Any) -> None:
    a = toy("a", "llama3.2:3b")
    b = toy("b", "meta-llama/Llama-3.2-3B-Instruct")
    nodes = list(cluster_nodes(loopback_servers, a, b))
    aliases = {"llama": {"a": "llama3.2:3b", "b": "meta-llama/Llama-3.2-3B-Instruct"}}

    async def main() -> None:
        async with AsyncPool(
            nodes, plugins=toy_plugins(), aliases=aliases, policy="round_robin", health_interval=0
        ) as pool:
            served = {(await pool.chat("llama", HI)).route.node for _ in range(4)}  # type: ignore[union-attr]
            assert served == {"a", "b"}
            assert "llama" in pool.models()

    run(main())
    assert {body["model"] for body in a.bodies} == {"llama3.2:3b"}
    assert {body["model"] for body in b.bodies} == {"meta-llama/Llama-3.2-3B-Instruct"}


def test_unknown_model_lists_what_the_cluster_offers(loopback_servers: Any) -> None:
    nodes = list(cluster_nodes(loopback_servers, toy("a", "llama3.2"), toy("b", "qwen2.5:7b")))

    async def main() -> None:
        async with AsyncPool(nodes, plugins=toy_plugins(), health_interval=0) as pool:
            with pytest.raises(NoNodeForModelError) as caught:
                await pool.chat("mistral", HI)
            assert caught.value.available == ("llama3.2", "qwen2.5:7b")
            assert "llama3.2" in str(caught.value) and "mistral" in str(caught.value)

    run(main())


# -- warmth and memory ---------------------------------------------------------------------------


def test_prefers_the_node_where_the_model_is_loaded() -> None:
    cold = pnode("cold", "llama3.2", loaded=[])
    warm = pnode("warm", "llama3.2", loaded=["llama3.2"])
    r = router([cold, warm])
    assert {pick(r, GenerateRequest(model="llama3.2", prompt=f"p{i}")) for i in range(20)} == {"warm"}


def test_a_busy_warm_node_loses_to_a_free_cold_one_when_waiting_costs_more() -> None:
    cold = pnode("cold", "llama3.2", loaded=[])
    warm = pnode("warm", "llama3.2", loaded=["llama3.2"])
    warm.in_flight = 500  # the wait behind 500 requests dwarfs a load
    assert pick(router([cold, warm]), chat()) == "cold"


def test_prefers_a_node_whose_memory_holds_the_model() -> None:
    big = ModelInfo(name="big:70b", size=40_000_000_000)
    small_gpu = pnode("small", big, loaded=[])
    small_gpu.set_activity(Activity(loaded=(), vram_total=8_000_000_000, vram_used=0))
    large_gpu = pnode("large", big, loaded=[])
    large_gpu.set_activity(Activity(loaded=(), vram_total=80_000_000_000, vram_used=0))
    r = router([small_gpu, large_gpu])
    assert {pick(r, chat("big:70b", seed=i)) for i in range(10)} == {"large"}


# -- capabilities --------------------------------------------------------------------------------


def test_needs_of_requests() -> None:
    assert needs_of(chat()) == frozenset()
    assert needs_of(chat(tools=[{"type": "function"}])) == {"tools"}
    assert needs_of(chat(think=True)) == {"thinking"}
    assert needs_of(chat(think=False)) == frozenset()
    assert needs_of(ChatRequest(model="m", messages=[{"role": "user", "content": "x", "images": ["aGk="]}])) == {
        "vision"
    }
    assert needs_of(GenerateRequest(model="m", prompt="x", params={"images": ["aGk="]})) == {"vision"}
    assert needs_of(EmbedRequest(model="m", inputs=["x"])) == {"embedding"}


@pytest.mark.parametrize(
    ("params", "want"),
    [
        ({"tools": [{"type": "function"}]}, {"tools", "unknown"}),
        ({"think": True}, {"thinks", "unknown"}),
        ({"images": ["aGk="]}, {"sees", "unknown"}),
        ({}, {"tools", "thinks", "sees", "unknown"}),
    ],
)
def test_capability_filter(params: dict[str, Any], want: set[str]) -> None:
    nodes = [
        pnode("tools", ModelInfo(name="m", capabilities=frozenset({"completion", "tools"}))),
        pnode("thinks", ModelInfo(name="m", capabilities=frozenset({"completion", "thinking"}))),
        pnode("sees", ModelInfo(name="m", capabilities=frozenset({"completion", "vision"}))),
        pnode("embeds", ModelInfo(name="m", capabilities=frozenset({"embedding"}))),
        pnode("unknown", ModelInfo(name="m", capabilities=None)),  # the backend does not say: allowed
    ]
    r = router(nodes, RoundRobin())
    request = GenerateRequest(model="m", prompt="x", params=params)
    eligible = r.eligible(r.targets(request), request, needs_of(request), [])
    assert {t.pnode.id for t in eligible} == want


def test_embeddings_go_only_to_embedding_models() -> None:
    nodes = [
        pnode("chat", ModelInfo(name="m", capabilities=frozenset({"completion"}))),
        pnode("embeds", ModelInfo(name="m", capabilities=frozenset({"embedding"}))),
    ]
    r = router(nodes)
    assert {pick(r, EmbedRequest(model="m", inputs=[f"x{i}"])) for i in range(10)} == {"embeds"}


def test_no_capable_node_is_a_clear_error(loopback_servers: Any) -> None:
    plain = EmulatedModel(name="llama3.2:latest", capabilities=("completion",))
    nodes = list(cluster_nodes(loopback_servers, toy("a", plain)))

    async def main() -> None:
        async with AsyncPool(nodes, plugins=toy_plugins(), health_interval=0) as pool:
            with pytest.raises(NoNodeForModelError, match="supports tools"):
                await pool.chat("llama3.2", HI, tools=[{"type": "function", "function": {"name": "f"}}])

    run(main())


# -- policies ------------------------------------------------------------------------------------


def test_every_builtin_policy_is_registered_by_name() -> None:
    names = set(toy_plugins().policies)
    assert {"sollol", "round_robin", "random", "least_loaded", "latency", "affinity"} <= names


def test_sollol_is_the_default_policy(loopback_servers: Any) -> None:
    nodes = list(cluster_nodes(loopback_servers, toy("a")))

    async def main() -> None:
        async with AsyncPool(nodes, plugins=toy_plugins(), health_interval=0) as pool:
            result = await pool.chat("llama3.2", HI)
            assert result.route is not None and result.route.policy == "sollol"

    run(main())


def test_unknown_policy_names_the_installed_ones(loopback_servers: Any) -> None:
    nodes = list(cluster_nodes(loopback_servers, toy("a")))

    async def main() -> None:
        with pytest.raises(ConfigError, match="round_robin"):
            async with AsyncPool(nodes, plugins=toy_plugins(), policy="nope", health_interval=0):
                pass

    run(main())


def test_round_robin_takes_each_in_turn() -> None:
    r = router([pnode(n, "llama3.2") for n in "abc"], RoundRobin())
    picks = [pick(r, chat()) for _ in range(6)]
    assert sorted(picks[:3]) == ["a", "b", "c"] and picks[:3] == picks[3:]


@pytest.mark.parametrize("policy", [LeastLoaded(), Sollol(affinity=0), Latency(), Random()])
def test_ties_are_broken_at_random_never_by_order(policy: Any) -> None:
    r = router([pnode(n, "llama3.2") for n in "abcd"], policy)
    assert {pick(r, chat()) for _ in range(80)} == set("abcd")


def test_least_loaded_counts_in_flight_and_backend_load() -> None:
    a, b, c = (pnode(n, "llama3.2") for n in "abc")
    a.in_flight = 2
    b.reported_load = 3  # another client keeps b busy
    assert pick(router([a, b, c], LeastLoaded()), chat()) == "c"
    c.in_flight = 5
    assert pick(router([a, b, c], LeastLoaded()), chat()) == "a"


def test_latency_policy_prefers_the_faster_node() -> None:
    slow, fast = pnode("slow", "llama3.2"), pnode("fast", "llama3.2")
    r = router([slow, fast], Latency())
    r.targets(chat())  # build the index
    slow.stats["llama3.2:latest"].observe(ttft=1.0, per_token=0.1)
    fast.stats["llama3.2:latest"].observe(ttft=0.1, per_token=0.01)
    assert {pick(r, chat()) for _ in range(10)} == {"fast"}


def test_sollol_weighs_speed_against_queue() -> None:
    slow, fast = pnode("slow", "llama3.2"), pnode("fast", "llama3.2")
    r = router([slow, fast], Sollol(affinity=0))
    r.targets(chat())
    slow.stats["llama3.2:latest"].observe(ttft=0.5, per_token=0.05)
    fast.stats["llama3.2:latest"].observe(ttft=0.1, per_token=0.01)
    assert pick(r, chat()) == "fast"
    fast.in_flight = 20
    assert pick(r, chat()) == "slow"


def test_affinity_keeps_a_prefix_on_one_node_until_it_is_overloaded() -> None:
    nodes = [pnode(n, "llama3.2") for n in "abcd"]
    r = router(nodes, Affinity())
    request = ChatRequest(
        model="llama3.2", messages=[{"role": "system", "content": "shared"}, {"role": "user", "content": "q"}]
    )
    home = pick(r, request)
    assert {pick(r, request) for _ in range(10)} == {home}
    spread = {
        pick(r, ChatRequest(model="llama3.2", messages=[{"role": "user", "content": f"q{i}"}])) for i in range(40)
    }
    assert len(spread) >= 3
    by_id = {p.id: p for p in nodes}
    by_id[home].in_flight = 10  # far over the bound: the prefix spills to the next node on the ring
    assert pick(r, request) != home


def test_hash_ring_is_consistent_when_a_node_leaves() -> None:
    ring = HashRing(["a", "b", "c", "d"])
    keys = [f"k{i}" for i in range(200)]
    before = {k: ring.owner(k, {"a", "b", "c", "d"}) for k in keys}
    after = {k: ring.owner(k, {"a", "b", "c"}) for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert all(before[k] == "d" for k in moved)


class FirstByName:
    """A third-party policy: always the alphabetically first candidate."""

    name = "first_by_name"

    def choose(self, candidates: Sequence[PoolNode], request: Request, rng: random.Random) -> Choice:
        node = min(candidates, key=lambda p: p.id)
        return Choice(node=node, score=1.0, parts=(("alphabet", 1.0),))


class ThirdPartyPlugin:
    __name__ = "third_party"

    @hookimpl
    def sollol_register_policies(self, register: Callable[[str, Callable[..., Any]], None]) -> None:
        register("first_by_name", FirstByName)


def test_a_third_party_policy_registers_through_the_hook(loopback_servers: Any) -> None:
    nodes = list(cluster_nodes(loopback_servers, toy("b"), toy("a")))
    plugins = toy_plugins(ThirdPartyPlugin())
    assert "first_by_name" in plugins.policies

    async def main() -> None:
        async with AsyncPool(nodes, plugins=plugins, policy="first_by_name", health_interval=0) as pool:
            for _ in range(3):
                result = await pool.chat("llama3.2", HI)
                assert result.route is not None
                assert (result.route.node, result.route.policy, result.route.parts) == (
                    "a",
                    "first_by_name",
                    (("alphabet", 1.0),),
                )

    run(main())


def test_candidates_carry_targets_for_policies() -> None:
    nodes = [pnode("a", "llama3.2:3b")]
    r = router(nodes, aliases={"llama": "llama3.2:3b"})
    targets = r.targets(chat("llama"))
    candidates = Candidates(targets, targets[0].key, r)
    assert list(candidates) == nodes and candidates.targets[0].name == "llama3.2:3b"


# -- explain and events --------------------------------------------------------------------------


def test_route_explains_the_choice_and_events_carry_it(loopback_servers: Any) -> None:
    nodes = list(cluster_nodes(loopback_servers, toy("a"), toy("b")))
    recorder = Recorder()

    async def main() -> None:
        async with AsyncPool(nodes, plugins=toy_plugins(recorder), health_interval=0) as pool:
            result = await pool.chat("llama3.2", HI, priority=3)
            route = result.route
            assert route is not None and route.node in ("a", "b")
            assert route.tried == (route.node,)
            assert route.policy == "sollol" and route.score is not None
            assert {"cold", "service", "wait", "affinity", "load"} <= dict(route.parts).keys()
            assert route.node in route.explain() and "service=" in route.explain()
            # Observers get the pool's activity within DELIVERY_DELAY, in batches.
            assert not recorder.kinds("request.finished")
            await asyncio.sleep(pool_module.DELIVERY_DELAY * 2)
            assert not recorder.kinds("request.routed")  # a plain first attempt: the decision rides on finished
            finished = recorder.kinds("request.finished")[-1]
            assert finished.node == route.node and finished.data["routed"] is True
            assert finished.data["parts"] == route.parts and "service" in dict(finished.data["parts"])
            assert finished.data["attempts"] == 1 and finished.data["tried"] == (route.node,)
            assert finished.data["protocol"] == "python"  # a library call; the gateway labels its own

    run(main())


class Batches:
    """A batch observer that keeps each batch it gets."""

    def __init__(self) -> None:
        self.batches: list[list[Any]] = []

    @hookimpl
    def sollol_activity_batch(self, batch: Any) -> None:
        self.batches.append(list(batch))

    def kinds(self) -> list[str]:
        return [entry.kind for batch in self.batches for entry in batch]


def test_activity_is_delivered_in_order_in_batches_within_the_delay_or_at_the_limit() -> None:
    batches = Batches()
    recorder = Recorder()

    async def main() -> None:
        pool = AsyncPool(["127.0.0.1:9"], backend="ollama", plugins=toy_plugins(batches, recorder))
        pool._loop = asyncio.get_running_loop()  # as `start` sets it
        limit = pool_module.JOURNAL_LIMIT
        for index in range(limit + 5):
            pool._note(ActivityEvent(kind="node.up", node=str(index)))
        assert [len(b) for b in batches.batches] == [limit]  # a busy moment: delivered at the limit
        await asyncio.sleep(0)
        assert [len(b) for b in batches.batches] == [limit]  # the rest waits for the delay
        await asyncio.sleep(pool_module.DELIVERY_DELAY * 2)
        assert [len(b) for b in batches.batches] == [limit, 5]
        assert [e.node for b in batches.batches for e in b] == [str(i) for i in range(limit + 5)]
        assert [e.node for e in recorder.events] == [str(i) for i in range(limit + 5)]  # one by one, same order
        pool._note(ActivityEvent(kind="node.down", node="x"))
        pool.deliver_activity()  # at once, for a reader that must see everything
        assert batches.batches[-1][0].node == "x" and recorder.events[-1].node == "x"

    run(main())


def test_the_sync_pool_delivers_activity_before_a_call_returns(loopback_servers: Any) -> None:
    from sollol import Pool

    nodes = list(cluster_nodes(loopback_servers, toy("a")))
    batches = Batches()
    with Pool(nodes, plugins=toy_plugins(batches), health_interval=0) as pool:
        batches.batches.clear()
        pool.chat("llama3.2", HI)
        (record,) = [entry for batch in batches.batches for entry in batch]
        assert type(record) is RequestRecord and record.kind == "request.finished" and record.node == "a"
        assert record.routed and record.route.tried == ("a",) and record.latency is not None


def test_priority_is_not_forwarded_to_backends(loopback_servers: Any) -> None:
    a = toy("a")
    nodes = list(cluster_nodes(loopback_servers, a))

    async def main() -> None:
        async with AsyncPool(nodes, plugins=toy_plugins(), health_interval=0) as pool:
            await pool.chat("llama3.2", HI, priority=5)
            await pool.serve(ChatRequest(model="llama3.2", messages=HI, params={"priority": 2}))
            await pool.embed("llama3.2", "x", priority=1)

    run(main())
    assert a.bodies and all("priority" not in body for body in a.bodies)
