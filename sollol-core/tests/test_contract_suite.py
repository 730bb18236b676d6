"""The contract suite itself: it passes a correct backend, fails broken ones, and guards overrides.

A toy backend (embeddings only, over the shared OpenAI codec) and its emulator are written
into a temporary test directory and run with `pytester`, once as they are and once with a
fault planted, to show that each contract test can fail.
"""

from __future__ import annotations

import textwrap

import pytest

from sollol.detection import ProbeSet
from sollol.http import HttpRequest
from sollol.testing.canonical import CANONICAL_KINDS, CANONICAL_PROBE_SETS, canonical_probes
from sollol.testing.contract import CONTRACT_TESTS, BackendContract, ContractOverrideError, contract_override

pytest_plugins = ["pytester"]

TOY = """
from sollol import hookimpl
from sollol.activity import Activity
from sollol.detection import Detection
from sollol.errors import NotSupportedError
from sollol.http import HttpRequest
from sollol.openai_compat import OpenAICompatibleBackend
from sollol.testing.emulator import Emulator, EmuResponse, json_response, route


class ToyBackend(OpenAICompatibleBackend):
    name = "toy"
    operations = frozenset({"embed"})

    def chat(self, request):
        raise NotSupportedError("the toy backend does not support chat")

    def generate(self, request):
        raise NotSupportedError("the toy backend does not support generate")

    def chat_stream(self, request):
        raise NotSupportedError("the toy backend does not support chat")

    def generate_stream(self, request):
        raise NotSupportedError("the toy backend does not support generate")


class ToyEmulator(Emulator):
    generation_paths = ("/v1/embeddings",)

    @route("GET", "/health")
    async def health(self, request):
        return EmuResponse(status=200, body=b"", content_type=None)

    @route("GET", "/toy")
    async def toy(self, request):
        return json_response({"toy": True})

    @route("GET", "/v1/models")
    async def models(self, request):
        cards = [{"id": m.name, "object": "model"} for m in self.config.models]
        return json_response({"object": "list", "data": cards})

    @route("POST", "/v1/embeddings")
    async def embeddings(self, request):
        body = request.json()
        model = self.model(body.get("model"))
        if model is None:
            return json_response({"error": {"message": "no such model", "type": "not_found"}}, 404)
        data = [{"index": i, "embedding": self.vector(t, 4)} for i, t in enumerate(body["input"])]
        return json_response({"object": "list", "data": data, "model": model.name})


@hookimpl
def sollol_register_backends(register):
    register(ToyBackend())


@hookimpl
def sollol_detection_probes():
    return (HttpRequest.get("/toy"),)


@hookimpl
def sollol_detect(probes):
    data = probes.get("/toy").json_object() if probes.get("/toy").status == 200 else None
    if data and data.get("toy") is True:
        return Detection(backend="toy", confidence=90, reason="/toy says so")
    return None
"""

SUITE = """
import toy_plugin
from sollol.testing.contract import BackendContract, ContractTarget, contract_override


class TestToyContract(BackendContract):
    plugin = toy_plugin
    backend = toy_plugin.ToyBackend()
    emulator = toy_plugin.ToyEmulator
{body}
"""


def run_suite(pytester: pytest.Pytester, body: str = "", *args: str, prelude: str = "") -> pytest.RunResult:
    pytester.syspathinsert()
    pytester.makepyfile(toy_plugin=TOY)
    source = prelude + SUITE.format(body=textwrap.indent(textwrap.dedent(body), "    "))
    pytester.makepyfile(test_toy_contract=source)
    return pytester.runpytest_inprocess("-p", "no:cacheprovider", "-p", "no:asyncio", "-rs", *args)


def test_a_correct_backend_passes(pytester: pytest.Pytester) -> None:
    result = run_suite(pytester)
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) == 0, result.stdout.str()
    assert outcomes["passed"] >= 30
    # Streams cannot be tested on a backend that streams nothing, and the toy has no canned server.
    result.stdout.fnmatch_lines(["*no canned server for 'toy'*", "*streams nothing*"])


def test_claiming_every_server_fails_detection(pytester: pytest.Pytester) -> None:
    prelude = """
from sollol import hookimpl
from sollol.detection import Detection
toy_plugin.sollol_detect = hookimpl(lambda probes: Detection(backend="toy", confidence=10))
"""
    result = run_suite(pytester, "", "-k", "rejects_foreign or odd_answers", prelude="import toy_plugin\n" + prelude)
    result.assert_outcomes(failed=len(CANONICAL_KINDS) + 1)
    result.stdout.fnmatch_lines(["*toy claimed a ollama server*"])


def test_a_wrong_error_mapping_fails(pytester: pytest.Pytester) -> None:
    body = """
    class backend(toy_plugin.ToyBackend):
        def error(self, response):
            from sollol.errors import BackendServerError
            return BackendServerError("whatever", status=response.status)
    backend = backend()
    """
    result = run_suite(pytester, body, "-k", "error_status")
    assert result.parseoutcomes()["failed"] == 12, result.stdout.str()


def test_invented_activity_fails(pytester: pytest.Pytester) -> None:
    body = """
    class backend(toy_plugin.ToyBackend):
        def activity(self):
            from sollol.activity import Activity
            return Activity(running=0, waiting=0)
            yield
    backend = backend()
    """
    result = run_suite(pytester, body, "-k", "activity")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*activity.running = 0*invented*"])


def test_an_unsupported_operation_must_say_so(pytester: pytest.Pytester) -> None:
    body = """
    class backend(toy_plugin.ToyBackend):
        def generate(self, request):
            raise RuntimeError("boom")
    backend = backend()
    """
    result = run_suite(pytester, body, "-k", "test_generate and not stream")
    result.assert_outcomes(failed=1)


def test_a_subclass_may_add_its_own_tests(pytester: pytest.Pytester) -> None:
    # New tests need no reason, and they get the same fixtures as the contract tests.
    body = """
    def test_stream_fault_is_reported(self, contract_target):
        from sollol.testing.emulator import Fault
        contract_target.emulator.inject(Fault.error(503, {"error": {"message": "loading"}}))
        from sollol.errors import UnavailableError
        import pytest
        with pytest.raises(UnavailableError):
            self.serve(contract_target, "embed")
    """
    result = run_suite(pytester, body, "-k", "stream_fault_is_reported")
    result.assert_outcomes(passed=1)


def test_overriding_a_contract_test_without_a_reason_is_refused() -> None:
    with pytest.raises(ContractOverrideError, match="test_embed replaces a contract test"):

        class TestSloppy(BackendContract):
            def test_embed(self) -> None:
                pass


def test_an_override_with_a_reason_is_reported(pytester: pytest.Pytester) -> None:
    body = """
    @contract_override(reason="toy vectors are all alike, on purpose")
    def test_embed(self, contract_target):
        pass
    """
    result = run_suite(pytester, body, "-k", "test_embed")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*sollol contract overrides*", "*test_embed: toy vectors are all alike, on purpose"])


def test_an_override_reason_cannot_be_empty() -> None:
    with pytest.raises(ValueError, match="non-empty reason"):
        contract_override(reason="  ")


def test_a_real_server_skips_fault_injection(pytester: pytest.Pytester) -> None:
    body = """
    @pytest.fixture(scope="class")
    @classmethod
    def contract_target(cls):
        from sollol.testing.emulator import EmulatedModel, EmulatorConfig
        from sollol.testing.servers import LoopbackServers
        app = toy_plugin.ToyEmulator(EmulatorConfig(models=[EmulatedModel(name="contract-embed", embedding=True)]))
        with LoopbackServers() as servers:
            running = servers.start(app)
            yield ContractTarget(chat_url=running.url, chat_model="contract-embed", embed_model="contract-embed")
    """
    result = run_suite(pytester, body, prelude="import pytest\n")
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["*fault injection needs an emulator; http://127.0.0.1:* is a real server*"])


def test_contract_tests_are_known() -> None:
    assert {"test_detects_own_server", "test_rejects_foreign_kind", "test_error_inside_stream"} <= CONTRACT_TESTS
    assert {
        "test_truncated_stream",
        "test_malformed_body_from_server",
        "test_activity",
        "test_models",
    } <= CONTRACT_TESTS


# -- the canned probe answers --------------------------------------------------------------------


def test_canned_servers_show_their_fingerprints() -> None:
    sets = CANONICAL_PROBE_SETS
    assert sets["ollama"].get("/").text == "Ollama is running"
    assert sets["ollama"].get("/readyz").text == "404 page not found"
    assert all(r.header("server") == "llama.cpp" for r in sets["llamacpp"].responses.values())
    assert sets["llamacpp"].get("/nope").status == 0  # not probed, so unreached
    assert sets["tgi"].get("/info").json()["router"] == "text-generation-router"
    assert sets["tgi"].get("/").body == b""
    assert sets["vllm"].get("/v1/models").json()["data"][0]["owned_by"] == "vllm"
    assert sets["vllm"].get("/").json() == {"detail": "Not Found"}
    assert "endpoints" in sets["localai"].get("/.well-known/localai.json").json()


def test_localai_imitates_ollama_in_its_canned_answers() -> None:
    localai = CANONICAL_PROBE_SETS["localai"]
    assert localai.get("/").text == "Ollama is running"
    assert localai.get("/api/version").json() == {"version": "0.9.0"}


def test_extra_probes_get_the_servers_own_404() -> None:
    extra = canonical_probes("llamacpp", [HttpRequest.get("/get_model_info")])
    answer = extra.get("/get_model_info")
    assert answer.status == 404
    assert answer.json()["error"]["message"] == "File Not Found"
    assert isinstance(extra, ProbeSet)
    assert canonical_probes("tgi", [HttpRequest.get("/x")]).get("/x").body == b""


def test_unknown_canned_kind_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match="llamacpp"):
        canonical_probes("sglang")


def test_canned_probe_sets_fixture(canonical_probe_sets: dict[str, ProbeSet]) -> None:
    assert set(canonical_probe_sets) == set(CANONICAL_KINDS)
