"""The dashboard in a real headless Chromium, over emulated nodes of all five kinds.

The browser (Debian's `chromium`, driven by Playwright's Python package; `.ci/install-browser.sh`
installs it) opens `/dashboard` behind an API key, sees every node, sees a node turn red when
its server is stopped and green again when it returns, all without a reload, and keeps a
screenshot in `artifacts/dashboard.png`. Skipped, saying why, when Chromium or Playwright is
missing.
"""

from __future__ import annotations

import importlib
import pathlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from sollol.gateway import Gateway
from sollol.pool import AsyncPool
from sollol.testing.emulator import EmulatedModel, EmulatorConfig
from sollol.testing.servers import LoopbackServers, Running

CHROMIUM = pathlib.Path("/usr/bin/chromium")
ARTIFACTS = pathlib.Path(__file__).resolve().parent.parent / "artifacts"
KEY = "dashboard-test-key-42"
EMULATORS = {
    "ollama": "OllamaEmulator",
    "vllm": "VLLMEmulator",
    "tgi": "TGIEmulator",
    "llamacpp": "LlamaCppEmulator",
    "localai": "LocalAIEmulator",
}
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DEADLINE_MS = 15_000

if not CHROMIUM.exists():
    pytest.skip(
        "no /usr/bin/chromium: run .ci/install-browser.sh (apt-get install chromium) to run the browser test",
        allow_module_level=True,
    )
sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs `pip install playwright`")


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[str, dict[str, Running], LoopbackServers]]:
    """Five emulated nodes, one of each kind, and the gateway over them (with an API key)."""
    with LoopbackServers() as servers:
        running: dict[str, Running] = {}
        specs: list[dict[str, Any]] = []
        for index, (kind, name) in enumerate(EMULATORS.items()):
            try:
                cls = getattr(importlib.import_module(f"sollol_{kind}.emulator"), name)
            except ImportError:
                pytest.fail(f"the {kind} plugin is not installed (pip install -e plugins/sollol-{kind})")
            app = cls(EmulatorConfig(models=[EmulatedModel(name="llama3.2:latest")], name=f"{kind}-emulator"))
            running[kind] = servers.start(app, host=f"127.0.0.{40 + index}")
            specs.append({"url": running[kind].url, "backend": kind, "name": f"{kind}-1"})
        pool = AsyncPool(specs, health_interval=0.1, refresh_interval=0.3, failure_threshold=1)
        gateway = servers.start(Gateway(pool, api_keys=[KEY]))
        with httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=10) as client:
            for i in range(10):  # some routing decisions and chart points to show
                answer = client.post(
                    "/api/chat",
                    json={
                        "model": "llama3.2",
                        "messages": [{"role": "user", "content": f"hi {i}"}],
                        "stream": i % 2 == 0,
                    },
                )
                assert answer.status_code == 200, answer.text
            assert client.post("/v1/completions", json={"model": "llama3.2", "prompt": "hi"}).status_code == 200
        yield gateway.url, running, servers


def test_dashboard_shows_every_node_and_follows_a_node_down_and_back(
    cluster: tuple[str, dict[str, Running], LoopbackServers],
) -> None:
    base, running, servers = cluster
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(
                http_credentials={"username": "sollol", "password": KEY}, viewport={"width": 1400, "height": 1000}
            )
            page = context.new_page()
            page.goto(f"{base}/dashboard")
            page.wait_for_function(
                "document.querySelectorAll('article.node[data-health=\"up\"]').length === 5", timeout=DEADLINE_MS
            )
            for kind in EMULATORS:
                card = page.locator(f'article.node[data-node="{kind}-1"]')
                assert card.count() == 1
                assert kind in card.inner_text().lower()
            assert page.locator("#decisions tbody tr").count() >= 5
            page.evaluate("window.__sollolNoReload = 'still here'")

            servers.stop(running["vllm"])
            page.wait_for_selector('article.node[data-node="vllm-1"][data-health="down"]', timeout=DEADLINE_MS)
            down_color = page.eval_on_selector(
                'article.node[data-node="vllm-1"]', "el => getComputedStyle(el).borderLeftColor"
            )
            assert down_color == "rgb(229, 72, 77)"  # red
            others = page.locator('article.node[data-health="up"]').count()
            assert others == 4
            page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

            servers.restart(running["vllm"])
            page.wait_for_selector('article.node[data-node="vllm-1"][data-health="up"]', timeout=DEADLINE_MS)
            up_color = page.eval_on_selector(
                'article.node[data-node="vllm-1"]', "el => getComputedStyle(el).borderLeftColor"
            )
            assert up_color == "rgb(47, 191, 113)"  # green
            assert page.evaluate("window.__sollolNoReload") == "still here"  # the same page: no reload
            assert KEY not in page.content()
            page.screenshot(path=str(ARTIFACTS / "dashboard-recovered.png"), full_page=True)
        finally:
            browser.close()


def test_dashboard_needs_the_key(cluster: tuple[str, dict[str, Running], LoopbackServers]) -> None:
    base, _, _ = cluster
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context()
            for path in ("/dashboard", "/api/sollol/nodes", "/api/sollol/events", "/metrics"):
                response = context.request.get(f"{base}{path}")
                assert response.status == 401, path
                assert "basic" in response.headers.get("www-authenticate", "").lower()
                assert "SOLLOL cluster" not in response.text()
        finally:
            browser.close()
