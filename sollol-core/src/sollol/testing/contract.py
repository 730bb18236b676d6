"""The backend contract suite: one set of tests every backend plugin subclasses and passes.

A plugin's test module subclasses `BackendContract` and says what it is testing::

    from sollol.testing.contract import BackendContract

    import sollol_ollama
    from sollol_ollama.codec import OllamaBackend
    from sollol_ollama.emulator import OllamaEmulator


    class TestOllamaContract(BackendContract):
        plugin = sollol_ollama  # the module (or object) with the hook implementations
        backend = OllamaBackend()  # the codec under test
        emulator = OllamaEmulator  # EmulatorConfig -> ASGI app
        activity_reports = frozenset({"loaded", "vram_used"})

        def error_body(self, status, message):
            return {"error": message}  # the server's own error envelope

The suite then checks, against the emulator served on a loopback port: detection of its own
server (probes sent by `sollol.detect.probe_node` through a `Transport`) and rejection of
the canned answers of the other known kinds (`sollol.testing.canonical`); chat, generate and
embed where `backend.operations` lists them and `NotSupportedError` where it does not,
streamed and not; the mapping of 400, 401, 404, 422, 429 and 503, of an error inside a 200
stream (`StreamError`), of a malformed body and of a cut-off stream (`ProtocolError`); the
model inventory; activity (an `Activity` whose figures the backend cannot know are None);
and a pool serving a chat through the backend.

Against a real server, override the `contract_target` fixture to return
`ContractTarget(chat_url=..., chat_model=..., ...)` without an emulator: the fault-injection
tests then skip with the reason, and every other test runs against the server.

Overriding a contract test needs a visible reason: a subclass that redefines a `test_*`
method of `BackendContract` without `@contract_override(reason="...")` fails at import,
and the reasons are listed in pytest's terminal summary.
"""

from __future__ import annotations

import asyncio
import functools
import json
import ssl
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, TypeVar, cast

import attrs
import httpx
import pluggy
import pytest

from sollol import builtins, hookspecs
from sollol.activity import Activity, ModelInfo
from sollol.codec import Backend, StreamPlan, same_model
from sollol.detect import probe_node
from sollol.detection import Detection, ProbeSet
from sollol.errors import (
    AuthenticationError,
    BackendError,
    InvalidRequestError,
    ModelNotFoundError,
    NotSupportedError,
    OverloadedError,
    ProtocolError,
    StreamError,
    UnavailableError,
)
from sollol.http import HttpRequest, HttpResponse, run_offline
from sollol.inference import ChatRequest, Chunk, EmbedRequest, GenerateRequest, Usage
from sollol.node import Node, parse_node
from sollol.plugins import PluginInfo, Plugins
from sollol.testing.canonical import CANONICAL_KINDS, canonical_probes
from sollol.testing.emulator import EmulatedModel, EmulatorConfig, Fault
from sollol.testing.servers import LoopbackServers
from sollol.transport import Timeouts, Transport

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

OPERATIONS = frozenset({"chat", "generate", "embed"})

#: The `Activity` figures a backend either reports or leaves None.
ACTIVITY_FIGURES = (
    "loaded",
    "vram_used",
    "vram_total",
    "running",
    "waiting",
    "capacity",
    "kv_cache_usage",
    "context_length",
)

#: The error class each HTTP status must become.
ERROR_CLASSES: Mapping[int, tuple[type[BackendError], ...]] = {
    400: (InvalidRequestError,),
    401: (AuthenticationError,),
    404: (ModelNotFoundError,),
    422: (InvalidRequestError,),
    429: (OverloadedError,),
    503: (UnavailableError, OverloadedError),  # Ollama's 503 is a full queue
}

OVERRIDE_ATTR = "__contract_override__"


class ContractOverrideError(TypeError):
    """A subclass of `BackendContract` redefined a contract test without saying why."""


def contract_override(*, reason: str) -> Callable[[F], F]:
    """Mark a method that replaces a contract test; `reason` says why and is shown in the report."""
    if not reason or not reason.strip():
        raise ValueError("contract_override needs a non-empty reason")

    def mark(fn: F) -> F:
        setattr(fn, OVERRIDE_ATTR, reason.strip())
        marked: F = pytest.mark.contract_override(reason=reason.strip())(fn)
        return marked

    return mark


@attrs.frozen(kw_only=True)
class ContractTarget:
    """What the suite talks to: a chat server, an embedding server, their models, the emulator.

    `emulator` is the ASGI app when the target is emulated (it takes `Fault`s); None for a
    real server. `embed_url` defaults to `chat_url`.
    """

    chat_url: str
    chat_model: str
    embed_url: str | None = None
    embed_model: str | None = None
    api_key: str | None = attrs.field(default=None, repr=False)
    emulator: Any = None

    def node(self, url: str, backend: str | None = None) -> Node:
        """A `Node` for `url`, with the key and (when given) the backend kind."""
        node = attrs.evolve(parse_node(url), api_key=self.api_key)
        return node.with_backend(backend) if backend else node

    @property
    def injectable(self) -> bool:
        """True when failures can be injected (an emulator built on `sollol.testing.emulator`)."""
        return self.emulator is not None and callable(getattr(self.emulator, "inject", None))


def contract_plugins(plugin: object, name: str = "plugin-under-test") -> Plugins:
    """`Plugins` holding only SOLLOL's built-ins and `plugin`, whatever else is installed."""
    pm = pluggy.PluginManager("sollol")
    pm.add_hookspecs(hookspecs)
    pm.register(builtins, name="builtins")
    pm.register(plugin, name=name)
    pm.check_pending()  # a misspelled hook implementation fails here, loudly
    module = getattr(plugin, "__name__", type(plugin).__name__)
    return Plugins(pm, [PluginInfo(name=name, module=module, distribution=None, version=None)])


async def read_stream(transport: Any, node: Node, backend: Backend, plan: StreamPlan) -> list[Chunk]:
    """Send a streamed request and decode it the way the pool does."""
    chunks: list[Chunk] = []
    async with transport.stream(node, plan.request) as response:
        if not 200 <= response.status < 300:
            raise backend.error(await response.read())
        decoder = plan.decoder()
        async for piece in response.pieces():
            chunks += decoder.feed(piece)
        chunks += decoder.close()
    return chunks


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    # Building one costs ~0.1 s; each test gets a fresh client (a fresh event loop), not a fresh context.
    return ssl.create_default_context()


class BackendContract:
    """Subclass as `Test<Name>Contract`; set `plugin`, `backend`, and `emulator` or `contract_target`."""

    #: The module or object holding the plugin's hook implementations.
    plugin: ClassVar[object]
    #: The backend codec under test.
    backend: ClassVar[Backend]
    #: A factory `EmulatorConfig -> ASGI app` (an emulator class fits); None for a real server.
    emulator: ClassVar[Callable[[EmulatorConfig], Any] | None] = None
    #: Model names the emulator is configured with.
    chat_model: ClassVar[str] = "contract-chat"
    embed_model: ClassVar[str] = "contract-embed"
    #: Canned kinds (`sollol.testing.canonical`) that are this backend's own server; default: its name.
    own_kinds: ClassVar[tuple[str, ...] | None] = None
    #: The `Activity` figures this backend reports; every other figure must be None.
    activity_reports: ClassVar[frozenset[str]] = frozenset()
    #: Seconds to wait for an answer (raise it for slow real servers).
    read_timeout: ClassVar[float] = 30.0
    #: The messages, prompt and options the generation tests send.
    messages: ClassVar[tuple[Mapping[str, Any], ...]] = ({"role": "user", "content": "Say hello in three words."},)
    prompt: ClassVar[str] = "Once upon a time"
    options: ClassVar[Mapping[str, Any]] = {"num_predict": 16}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name, value in vars(cls).items():
            if name in CONTRACT_TESTS and not getattr(value, OVERRIDE_ATTR, None):
                raise ContractOverrideError(
                    f"{cls.__module__}.{cls.__qualname__}.{name} replaces a contract test of BackendContract "
                    f"without a reason: decorate it with @contract_override(reason='why this backend differs')"
                )

    # -- what a subclass may change -------------------------------------------------------------

    def emulator_config(self) -> EmulatorConfig:
        """The emulator's configuration: a chat model, and an embedding model if embed is supported."""
        models = [EmulatedModel(name=self.chat_model)]
        if "embed" in self.backend.operations:
            models.append(EmulatedModel(name=self.embed_model, embedding=True))
        return EmulatorConfig(models=models, name=f"{self.backend.name}-contract")

    def error_body(self, status: int, message: str) -> Any:
        """The body the server sends with an error status (default: the OpenAI envelope)."""
        return {"error": {"message": message, "type": "invalid_request_error", "code": status}}

    def foreign_kinds(self) -> tuple[str, ...]:
        """Canned kinds this backend's detection must reject."""
        return tuple(k for k in CANONICAL_KINDS if k not in self._own_kinds())

    def _own_kinds(self) -> tuple[str, ...]:
        if self.own_kinds is not None:
            return self.own_kinds
        return (self.backend.name,) if self.backend.name in CANONICAL_KINDS else ()

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        """Parametrize the detection test over the foreign kinds."""
        if "foreign_kind" in metafunc.fixturenames:
            metafunc.parametrize("foreign_kind", self.foreign_kinds())

    # -- fixtures -----------------------------------------------------------------------------------

    @pytest.fixture(scope="class")
    @classmethod
    def contract_target(cls) -> Iterator[ContractTarget]:
        """The emulator on a loopback port. Override to point the suite at a real server."""
        factory = cls.emulator
        if factory is None:
            pytest.fail(f"{cls.__name__}: set `emulator`, or override the `contract_target` fixture")
        suite = cls()
        app = factory(suite.emulator_config())
        servers = LoopbackServers()
        try:
            running = servers.start(app)
            embed = cls.embed_model if "embed" in cls.backend.operations else None
            yield ContractTarget(chat_url=running.url, chat_model=cls.chat_model, embed_model=embed, emulator=app)
        finally:
            servers.close()

    @pytest.fixture(scope="class")
    @classmethod
    def plugins(cls) -> Plugins:
        """SOLLOL's built-ins and the plugin under test, nothing else."""
        return contract_plugins(cls.plugin)

    @pytest.fixture(autouse=True)
    def _clear_faults(self, contract_target: ContractTarget) -> Iterator[None]:
        yield
        if contract_target.injectable:
            contract_target.emulator.clear_faults()

    # -- helpers ------------------------------------------------------------------------------------

    def run(self, make: Callable[[Any], Awaitable[T]]) -> T:
        """Run `make(transport)` on a fresh event loop with a fresh `Transport`."""

        async def main() -> T:
            timeouts = Timeouts(connect=5.0, read=self.read_timeout)
            client = httpx.AsyncClient(timeout=timeouts.httpx(), verify=_ssl_context(), trust_env=False)
            transport = Transport(timeouts=timeouts, client=client)
            try:
                return await make(transport)
            finally:
                await transport.aclose()

        return asyncio.run(main())

    def chat_node(self, target: ContractTarget) -> Node:
        """The node chat and generate go to."""
        return target.node(target.chat_url, self.backend.name)

    def embed_node(self, target: ContractTarget) -> Node:
        """The node embed goes to."""
        return target.node(target.embed_url or target.chat_url, self.backend.name)

    def chat_request(self, target: ContractTarget) -> ChatRequest:
        """The chat the tests send."""
        return ChatRequest(model=target.chat_model, messages=self.messages, options=self.options)  # type: ignore[arg-type]

    def generate_request(self, target: ContractTarget) -> GenerateRequest:
        """The completion the tests send."""
        return GenerateRequest(model=target.chat_model, prompt=self.prompt, options=self.options)

    def embed_request(self, target: ContractTarget) -> EmbedRequest:
        """The embedding request the tests send."""
        return EmbedRequest(model=target.embed_model or target.chat_model, inputs=("first text", "second text"))  # type: ignore[arg-type]

    def emulator_of(self, target: ContractTarget) -> Any:
        """The emulator, or skip: fault injection needs one."""
        if not target.injectable:
            pytest.skip(f"fault injection needs an emulator; {target.chat_url} is a real server")
        return target.emulator

    def first_operation(self) -> str:
        """The operation the error tests use: chat, else generate, else embed."""
        for op in ("chat", "generate", "embed"):
            if op in self.backend.operations:
                return op
        pytest.fail(f"backend {self.backend.name!r} supports no operation at all")

    def serve(self, target: ContractTarget, op: str) -> Any:
        """Send one non-streamed request of kind `op`; returns the result."""
        if op == "chat":
            return self.run(lambda t: t.run(self.chat_node(target), self.backend.chat(self.chat_request(target))))
        if op == "generate":
            return self.run(
                lambda t: t.run(self.chat_node(target), self.backend.generate(self.generate_request(target)))
            )
        return self.run(lambda t: t.run(self.embed_node(target), self.backend.embed(self.embed_request(target))))

    def stream(self, target: ContractTarget, op: str) -> list[Chunk]:
        """Send one streamed request of kind `op` (chat or generate); returns the chunks."""

        async def go(transport: Any) -> list[Chunk]:
            if op == "chat":
                plan = self.backend.chat_stream(self.chat_request(target))
            else:
                plan = self.backend.generate_stream(self.generate_request(target))
            return await read_stream(transport, self.chat_node(target), self.backend, plan)

        return self.run(go)

    def detect_with_plugin(self, probes: ProbeSet) -> list[Detection]:
        """Call this plugin's `sollol_detect` directly (an exception propagates)."""
        pm = contract_plugins(self.plugin).pm
        claims = [
            cast("Detection | None", impl.function(probes=probes))
            for impl in pm.hook.sollol_detect.get_hookimpls()
            if impl.plugin_name != "builtins"
        ]
        return [c for c in claims if c is not None]

    def plugin_probes(self) -> list[HttpRequest]:
        """Every probe this plugin asks for."""
        pm = contract_plugins(self.plugin).pm
        return [p for batch in pm.hook.sollol_detection_probes() for p in batch]

    def check_stream(self, chunks: Sequence[Chunk]) -> None:
        """A stream: text arrived, and exactly one chunk, the last, says done."""
        assert chunks, "the stream gave no chunks"
        assert all(isinstance(c, Chunk) for c in chunks)
        done = [i for i, c in enumerate(chunks) if c.done]
        assert done == [len(chunks) - 1], f"exactly the last chunk must be done; done at {done} of {len(chunks)}"
        assert "".join(c.text for c in chunks).strip(), "the stream carried no text"

    def expect_not_supported(self, call: Callable[[], Any], op: str) -> None:
        """`call` raises NotSupportedError, with a message that says so."""
        with pytest.raises(NotSupportedError) as caught:
            call()
        text = str(caught.value).lower()
        assert "support" in text or op in text, f"the error does not say what is not supported: {caught.value}"

    # -- identity ------------------------------------------------------------------------------------

    def test_backend_shape(self) -> None:
        """The codec has a kind name, default ports and the operations it serves."""
        backend = self.backend
        assert isinstance(backend, Backend)
        assert isinstance(backend.name, str)
        assert backend.name
        assert backend.name == backend.name.strip().lower()
        assert isinstance(backend.default_ports, tuple)
        assert all(isinstance(p, int) for p in backend.default_ports)
        assert backend.operations <= OPERATIONS, f"unknown operations: {set(backend.operations) - OPERATIONS}"

    def test_plugin_registers_backend(self, plugins: Plugins) -> None:
        """The plugin's `sollol_register_backends` registers this codec under its name."""
        assert self.backend.name in plugins.backends, f"registered: {sorted(plugins.backends)}"
        assert type(plugins.backends[self.backend.name]) is type(self.backend)

    def test_health(self, contract_target: ContractTarget) -> None:
        """The liveness request is cheap, reads the live server as up and no answer as down."""
        from sollol.detection import NodeState

        health = self.backend.health()
        assert health.method in ("GET", "HEAD")
        assert health.json is None
        answer = self.run(lambda t: t.probe(self.chat_node(contract_target), health))
        assert self.backend.health_state(answer) is NodeState.UP, f"answer: {answer.status} {answer.text[:200]!r}"
        assert self.backend.health_state(HttpResponse(status=0, error="connection refused")) is NodeState.DOWN

    # -- detection -----------------------------------------------------------------------------------

    def test_probes_are_plain_gets(self) -> None:
        """Detection probes are GETs without a body: they must be safe to send to anything."""
        for probe in self.plugin_probes():
            assert probe.method == "GET", probe
            assert probe.json is None, probe

    def test_detects_own_server(self, contract_target: ContractTarget, plugins: Plugins) -> None:
        """Probes sent over the wire by `probe_node` make the plugin claim its server."""
        node = contract_target.node(contract_target.chat_url)
        probes = self.run(lambda t: probe_node(t, plugins, node))
        claims = [c for c in plugins.detect(probes) if c.backend == self.backend.name]
        assert claims, f"{self.backend.name} did not claim its own server at {contract_target.chat_url}"
        assert 0 < claims[0].confidence <= 100

    def test_detects_canonical_own_kind(self) -> None:
        """The canned answers of this backend's own kind are claimed too."""
        kinds = self._own_kinds()
        if not kinds:
            pytest.skip(f"no canned server for {self.backend.name!r}; test_detects_own_server covers it")
        for kind in kinds:
            claims = self.detect_with_plugin(canonical_probes(kind, self.plugin_probes()))
            assert any(c.backend == self.backend.name for c in claims), f"canned {kind} server not claimed"

    def test_rejects_foreign_kind(self, foreign_kind: str) -> None:
        """The canned answers of another kind of server are not claimed."""
        claims = self.detect_with_plugin(canonical_probes(foreign_kind, self.plugin_probes()))
        mine = [c for c in claims if c.backend == self.backend.name]
        assert not mine, f"{self.backend.name} claimed a {foreign_kind} server: {mine[0].reason}"

    def test_detect_tolerates_odd_answers(self) -> None:
        """Refused connections, HTML, garbage and wrong JSON shapes: no claim, no exception."""
        paths = [p.path for p in self.plugin_probes()] or ["/"]
        odd = [
            HttpResponse(status=0, error="connection refused"),
            HttpResponse(status=500, headers=(("content-type", "text/html"),), body=b"<html>oops</html>"),
            HttpResponse(status=200, headers=(("content-type", "application/json"),), body=b'{"truncated'),
            HttpResponse(status=200, headers=(("content-type", "application/json"),), body=b"[1, 2, 3]"),
            HttpResponse(status=200, headers=(("content-type", "application/json"),), body=b"null"),
        ]
        for answer in odd:
            probes = ProbeSet({f"GET {p}": answer for p in paths})
            claims = self.detect_with_plugin(probes)
            assert not [c for c in claims if c.backend == self.backend.name], f"claimed a server answering {answer}"

    # -- operations ----------------------------------------------------------------------------------

    def test_chat(self, contract_target: ContractTarget) -> None:
        """A non-streamed chat answers text (or NotSupportedError when chat is not served)."""
        if "chat" not in self.backend.operations:
            self.expect_not_supported(lambda: self.serve(contract_target, "chat"), "chat")
            return
        result = self.serve(contract_target, "chat")
        assert isinstance(result.text, str), result
        assert result.text.strip(), result
        assert isinstance(result.usage, Usage)
        assert result.raw is not None

    def test_chat_stream(self, contract_target: ContractTarget) -> None:
        """A streamed chat gives chunks of text and one final chunk."""
        if "chat" not in self.backend.operations:
            self.expect_not_supported(lambda: self.stream(contract_target, "chat"), "chat")
            return
        self.check_stream(self.stream(contract_target, "chat"))

    def test_generate(self, contract_target: ContractTarget) -> None:
        """A non-streamed completion answers text (or NotSupportedError)."""
        if "generate" not in self.backend.operations:
            self.expect_not_supported(lambda: self.serve(contract_target, "generate"), "generate")
            return
        result = self.serve(contract_target, "generate")
        assert isinstance(result.text, str), result
        assert result.text.strip(), result
        assert isinstance(result.usage, Usage)
        assert result.raw is not None

    def test_generate_stream(self, contract_target: ContractTarget) -> None:
        """A streamed completion gives chunks of text and one final chunk."""
        if "generate" not in self.backend.operations:
            self.expect_not_supported(lambda: self.stream(contract_target, "generate"), "generate")
            return
        self.check_stream(self.stream(contract_target, "generate"))

    def test_embed(self, contract_target: ContractTarget) -> None:
        """Embeddings come back one vector per input, in order, of one dimension (or NotSupportedError)."""
        if "embed" not in self.backend.operations:
            self.expect_not_supported(lambda: self.serve(contract_target, "embed"), "embed")
            return
        result = self.serve(contract_target, "embed")
        vectors = [list(v) for v in result.embeddings]
        assert len(vectors) == 2, f"{len(vectors)} vectors for 2 inputs"
        assert len(vectors[0]) > 0
        assert len(vectors[0]) == len(vectors[1])
        assert all(isinstance(x, (int, float)) for v in vectors for x in v)
        assert vectors[0] != vectors[1], "two different texts gave the same vector"

    def test_pool_serves_chat(self, contract_target: ContractTarget, plugins: Plugins) -> None:
        """A pool over this backend's node serves a request and says which node served it."""
        from sollol.pool import AsyncPool

        op = self.first_operation()
        node = self.embed_node(contract_target) if op == "embed" else self.chat_node(contract_target)

        async def go(_transport: Any) -> Any:
            async with AsyncPool([node], plugins=plugins, refresh_interval=0) as pool:
                if op == "chat":
                    return await pool.chat(contract_target.chat_model, list(self.messages), options=dict(self.options))
                if op == "generate":
                    return await pool.generate(contract_target.chat_model, self.prompt, options=dict(self.options))
                return await pool.embed(contract_target.embed_model or contract_target.chat_model, ["text"])

        result = self.run(go)
        assert result.node is not None
        assert result.node.id == node.id
        assert result.route is not None
        assert result.route.node == node.id

    # -- inventory and activity ----------------------------------------------------------------------

    def test_models(self, contract_target: ContractTarget) -> None:
        """The inventory lists the served models as `ModelInfo`s."""
        models = self.run(lambda t: t.run(self.chat_node(contract_target), self.backend.models()))
        assert all(isinstance(m, ModelInfo) and m.name for m in models)
        names = [m.name for m in models]
        assert any(same_model(n, contract_target.chat_model) for n in names), (
            f"{contract_target.chat_model} not in {names}"
        )

    def test_activity(self, contract_target: ContractTarget) -> None:
        """Activity is an `Activity`; the figures the backend does not report are None."""
        activity = self.run(lambda t: t.run(self.chat_node(contract_target), self.backend.activity(), tolerant=True))
        assert isinstance(activity, Activity)
        for figure in ACTIVITY_FIGURES:
            value = getattr(activity, figure)
            if figure in self.activity_reports:
                assert value is not None, f"activity.{figure} is None though activity_reports lists it"
            else:
                assert value is None, f"activity.{figure} = {value!r}, but the backend does not report it (invented?)"

    def test_activity_of_unreachable_status_routes(self) -> None:
        """When no status route answers, activity is all unknowns, never zeros."""
        activity = run_offline(self.backend.activity(), lambda _r: HttpResponse(status=0, error="connection refused"))
        assert isinstance(activity, Activity)
        known = {f: getattr(activity, f) for f in ACTIVITY_FIGURES if getattr(activity, f) is not None}
        assert not known, f"figures invented for an unreachable node: {known}"

    # -- errors, offline ----------------------------------------------------------------------------

    @pytest.mark.parametrize("status", sorted(ERROR_CLASSES))
    def test_error_status_maps(self, status: int) -> None:
        """`backend.error` turns each status, in the server's own envelope, into its class."""
        body = self.error_body(status, "injected failure")
        raw = body if isinstance(body, bytes) else b"" if body is None else json.dumps(body).encode()
        headers = (("content-type", "application/json"),) if raw else ()
        error = self.backend.error(HttpResponse(status=status, headers=headers, body=raw))
        assert isinstance(error, ERROR_CLASSES[status]), f"HTTP {status} became {type(error).__name__}: {error}"
        assert error.status == status
        if raw:
            assert "injected failure" in str(error), f"the server's message was lost: {error}"

    def test_malformed_body_offline(self) -> None:
        """A 200 whose body is not JSON is a `ProtocolError`, for every non-streamed operation."""
        target = ContractTarget(chat_url="http://127.0.0.1:9", chat_model=self.chat_model, embed_model=self.embed_model)
        bad = HttpResponse(status=200, headers=(("content-type", "application/json"),), body=b"{this is not json")
        exchanges = {
            "chat": lambda: self.backend.chat(self.chat_request(target)),
            "generate": lambda: self.backend.generate(self.generate_request(target)),
            "embed": lambda: self.backend.embed(self.embed_request(target)),
        }
        for op in sorted(self.backend.operations):
            with pytest.raises(ProtocolError):
                run_offline(exchanges[op](), lambda _r: bad)  # type: ignore[no-untyped-call]

    # -- errors, injected into the emulator ------------------------------------------------------------

    @pytest.mark.parametrize("status", sorted(ERROR_CLASSES))
    def test_error_status_from_server(self, contract_target: ContractTarget, status: int) -> None:
        """An injected error answer reaches the caller as its class, with the server's message."""
        emulator = self.emulator_of(contract_target)
        op = self.first_operation()
        body = self.error_body(status, "injected failure")
        emulator.inject(Fault.error(status, body))
        with pytest.raises(BackendError) as caught:
            self.serve(contract_target, op)
        assert isinstance(caught.value, ERROR_CLASSES[status]), f"HTTP {status} became {type(caught.value).__name__}"
        assert caught.value.status == status

    def test_malformed_body_from_server(self, contract_target: ContractTarget) -> None:
        """A 200 answer with a body that is not JSON is a `ProtocolError`."""
        emulator = self.emulator_of(contract_target)
        emulator.inject(Fault.error(200, b"{this is not json", content_type="application/json"))
        with pytest.raises(ProtocolError):
            self.serve(contract_target, self.first_operation())

    def _streaming_op(self) -> str:
        for op in ("chat", "generate"):
            if op in self.backend.operations:
                return op
        pytest.skip(f"backend {self.backend.name!r} streams nothing")

    def test_error_inside_stream(self, contract_target: ContractTarget) -> None:
        """An error event inside a 200 stream raises `StreamError` carrying the server's message."""
        emulator = self.emulator_of(contract_target)
        op = self._streaming_op()
        emulator.inject(Fault.stream_error(after=1, message="injected failure"))
        with pytest.raises(StreamError) as caught:
            self.stream(contract_target, op)
        assert "injected failure" in str(caught.value)

    def test_truncated_stream(self, contract_target: ContractTarget) -> None:
        """A stream that ends without its final event is a `ProtocolError`, not a short answer."""
        emulator = self.emulator_of(contract_target)
        op = self._streaming_op()
        emulator.inject(Fault.truncate(after=1))
        with pytest.raises(ProtocolError):
            self.stream(contract_target, op)


#: The names of the contract tests; redefining one needs `@contract_override`.
CONTRACT_TESTS = frozenset(name for name in vars(BackendContract) if name.startswith("test_"))

__all__ = [
    "ACTIVITY_FIGURES",
    "CONTRACT_TESTS",
    "ERROR_CLASSES",
    "BackendContract",
    "ContractOverrideError",
    "ContractTarget",
    "contract_override",
    "contract_plugins",
    "read_stream",
]
