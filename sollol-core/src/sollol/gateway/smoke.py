"""`sollol serve --smoke`: send real client requests through a running gateway and report.

Uses the official `ollama` and `openai` Python packages when they are installed, plain httpx
otherwise. Every check prints one line; the run passes when every check does.
"""

from __future__ import annotations

import functools
import importlib
import time
from collections.abc import Callable
from typing import Any

import httpx
from rich.console import Console
from rich.markup import escape


def _pick_models(pool: Any) -> tuple[list[str], list[str]]:
    """(chat model candidates, embedding model candidates), best guesses first."""
    chat: list[str] = []
    embed: list[str] = []
    for pnode in getattr(pool, "_nodes", ()):
        for info in (pnode.models or {}).values():
            caps = info.capabilities
            if caps is not None and "embedding" in caps:
                embed.append(info.name)
                if caps - {"embedding"}:
                    chat.append(info.name)
            else:
                chat.append(info.name)
    names = list(dict.fromkeys(pool.models()))
    chat = list(dict.fromkeys(chat)) or names
    embed = list(dict.fromkeys(embed)) or names
    # Where nodes do not say what a model can do, names are the best hint.
    chat.sort(key=lambda n: "embed" in n.lower())
    embed.sort(key=lambda n: "embed" not in n.lower())
    return chat, embed


class Smoke:
    """Runs the checks and prints one line each."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.failed = 0

    def check(self, label: str, fn: Callable[[], str]) -> bool:
        started = time.perf_counter()
        try:
            shown = fn()
        except Exception as exc:  # a smoke test reports every failure and carries on
            self.failed += 1
            self.console.print(f"  [red]FAIL[/red] {escape(label)}: {type(exc).__name__}: {escape(str(exc)[:300])}")
            return False
        self.report(label, shown, time.perf_counter() - started)
        return True

    def report(self, label: str, shown: str, took: float) -> None:
        self.console.print(f"  [green]ok[/green]   {escape(label)} ({took * 1000:.0f} ms): {escape(repr(shown[:100]))}")


def _first_working(smoke: Smoke, label: str, models: list[str], run: Callable[[str], str]) -> str | None:
    """Try `run` on each model until one works (a node may not offer every operation)."""
    for index, model in enumerate(models):
        if index == len(models) - 1:
            return model if smoke.check(f"{label} ({model})", functools.partial(run, model)) else None
        try:
            started = time.perf_counter()
            shown = run(model)
        except Exception:
            continue
        smoke.report(f"{label} ({model})", shown, time.perf_counter() - started)
        return model
    return None


def _optional(name: str) -> Any:
    """An installed client package, typed loosely (they need not be installed to type-check)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def run_smoke(base: str, api_key: str | None, console: Console, pool: Any) -> bool:
    """Send chat, generate and embed requests (streamed and not) through both APIs."""
    chat_models, embed_models = _pick_models(pool)
    smoke = Smoke(console)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    console.print(f"smoke test against {base} (chat candidates: {chat_models}, embedding candidates: {embed_models})")
    if not chat_models:
        console.print("  [red]FAIL[/red] the cluster offers no model")
        return False
    ollama = _optional("ollama")
    openai = _optional("openai")
    messages = [{"role": "user", "content": "Say hello in three words."}]
    options = {"num_predict": 8, "temperature": 0}

    if ollama is not None:
        client = ollama.Client(host=base, headers=headers)
        smoke.check("ollama list", lambda: ", ".join(m.model or "" for m in client.list().models))
        model = _first_working(
            smoke,
            "ollama chat",
            chat_models,
            lambda m: client.chat(model=m, messages=messages, options=options).message.content or "",
        )
        chat_model = model or chat_models[0]
        smoke.check(
            "ollama chat stream",
            lambda: "".join(
                c.message.content or ""
                for c in client.chat(model=chat_model, messages=messages, options=options, stream=True)
            ),
        )
        smoke.check(
            "ollama generate", lambda: client.generate(model=chat_model, prompt="The sky is", options=options).response
        )
        smoke.check(
            "ollama generate stream",
            lambda: "".join(
                c.response for c in client.generate(model=chat_model, prompt="The sky is", options=options, stream=True)
            ),
        )
        _first_working(
            smoke,
            "ollama embed",
            embed_models,
            lambda m: f"{len(client.embed(model=m, input=['hello', 'world']).embeddings)} vectors",
        )
    else:
        console.print("  (the ollama package is not installed: using httpx for the Ollama API)")
        http = httpx.Client(base_url=base, headers=headers, timeout=120)

        def post(path: str, body: dict[str, Any]) -> Any:
            response = http.post(path, json=body)
            response.raise_for_status()
            return response.json()

        smoke.check("GET /api/tags", lambda: ", ".join(m["name"] for m in http.get("/api/tags").json()["models"]))
        model = _first_working(
            smoke,
            "POST /api/chat",
            chat_models,
            lambda m: str(
                post("/api/chat", {"model": m, "messages": messages, "options": options, "stream": False})["message"][
                    "content"
                ]
            ),
        )
        chat_model = model or chat_models[0]
        smoke.check(
            "POST /api/generate",
            lambda: str(
                post(
                    "/api/generate", {"model": chat_model, "prompt": "The sky is", "options": options, "stream": False}
                )["response"]
            ),
        )
        _first_working(
            smoke,
            "POST /api/embed",
            embed_models,
            lambda m: f"{len(post('/api/embed', {'model': m, 'input': ['hello']})['embeddings'])} vectors",
        )

    if openai is not None:
        oai = openai.OpenAI(base_url=f"{base}/v1", api_key=api_key or "sollol", max_retries=0, timeout=120)
        smoke.check("openai models.list", lambda: ", ".join(m.id for m in oai.models.list().data))
        smoke.check(
            "openai chat.completions",
            lambda: (
                oai.chat.completions.create(model=chat_model, messages=messages, max_tokens=8)
                .choices[0]
                .message.content
                or ""
            ),
        )

        def streamed() -> str:
            parts: list[str] = []
            for event in oai.chat.completions.create(
                model=chat_model,
                messages=messages,
                max_tokens=8,
                stream=True,
                stream_options={"include_usage": True},
            ):
                parts.extend(c.delta.content or "" for c in event.choices)
            return "".join(parts)

        smoke.check("openai chat.completions stream", streamed)
        smoke.check(
            "openai completions",
            lambda: oai.completions.create(model=chat_model, prompt="The sky is", max_tokens=8).choices[0].text,
        )
        _first_working(
            smoke,
            "openai embeddings",
            embed_models,
            lambda m: f"{len(oai.embeddings.create(model=m, input=['hello']).data[0].embedding)} dims",
        )
    else:
        console.print("  (the openai package is not installed: using httpx for the OpenAI API)")
        http = httpx.Client(base_url=base, headers=headers, timeout=120)

        def chat_v1() -> str:
            response = http.post(
                "/v1/chat/completions", json={"model": chat_model, "messages": messages, "max_tokens": 16}
            )
            response.raise_for_status()
            return str(response.json()["choices"][0]["message"]["content"])

        smoke.check("POST /v1/chat/completions", chat_v1)
    ok = smoke.failed == 0
    console.print(
        "[bold green]smoke test passed[/bold green]"
        if ok
        else f"[bold red]smoke test failed ({smoke.failed} checks)[/bold red]"
    )
    return ok
