"""Helpers for the tests that `pip install` plugin distributions and run `sollol` on them.

Each distribution is installed with `pip install --no-deps --no-build-isolation --no-index
--target DIR` (so nothing is downloaded: the build backend, hatchling, comes from the running
environment) and used by putting DIR on `PYTHONPATH` of a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest


def need_hatchling() -> None:
    """Skip, saying why, where the build backend is missing (the nox integration session has it)."""
    pytest.importorskip("hatchling", reason="building plugin distributions needs hatchling (pip install hatchling)")


def write_distribution(root: Path, dist: str, module: str, source: str, *, entry: str | None = None) -> Path:
    """A minimal plugin distribution: pyproject.toml (hatchling, a sollol.plugins entry point) and one module."""
    project = root / dist
    project.mkdir(parents=True)
    (project / "pyproject.toml").write_text(
        textwrap.dedent(
            f"""
            [build-system]
            requires = ["hatchling"]
            build-backend = "hatchling.build"

            [project]
            name = "{dist}"
            version = "0.0.1"

            [project.entry-points."sollol.plugins"]
            {entry or dist} = "{module}"

            [tool.hatch.build.targets.wheel]
            include = ["{module}.py"]
            """
        ),
        encoding="utf-8",
    )
    (project / f"{module}.py").write_text(textwrap.dedent(source), encoding="utf-8")
    return project


def pip_install(projects: Sequence[Path], target: Path) -> subprocess.Popen[str]:
    """Start installing `projects` into `target` (wait on the returned process)."""
    command = [
        sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
        "--no-deps", "--no-build-isolation", "--no-index", "--target", str(target),
        *(str(p) for p in projects),
    ]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen[str], timeout: float = 240) -> None:
    """Wait for a pip process; fail with its output when it failed."""
    output, _ = process.communicate(timeout=timeout)
    if process.returncode != 0:
        pytest.fail(f"pip install failed ({process.returncode}):\n{output}")


def run_python(
    args: Sequence[str], paths: Sequence[Path], env: Mapping[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run `python <args>` with `paths` first on PYTHONPATH."""
    environ = {k: v for k, v in os.environ.items() if k not in ("SOLLOL_STRICT_PLUGINS", "SOLLOL_NODES", "OLLAMA_HOST")}
    environ["PYTHONPATH"] = os.pathsep.join([*map(str, paths), *filter(None, [os.environ.get("PYTHONPATH")])])
    environ.update(env or {})
    return subprocess.run([sys.executable, *args], env=environ, capture_output=True, text=True, timeout=timeout)


def plugins_json(paths: Sequence[Path], env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The output of `sollol plugins --json` with `paths` installed."""
    done = run_python(["-m", "sollol.cli", "plugins", "--json"], paths, env)
    assert done.returncode == 0, done.stderr
    listing: dict[str, Any] = json.loads(done.stdout)
    return listing


def plugin_named(listing: Mapping[str, Any], name: str) -> dict[str, Any]:
    """One plugin of a `sollol plugins --json` listing."""
    found = [p for p in listing["plugins"] if p["name"] == name]
    assert found, f"{name} not listed: {[p['name'] for p in listing['plugins']]}"
    plugin: dict[str, Any] = found[0]
    return plugin
