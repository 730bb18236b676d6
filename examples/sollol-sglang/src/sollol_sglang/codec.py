"""The SGLang codec: SOLLOL's shared OpenAI codec, plus SGLang's health route and metrics."""

from __future__ import annotations

from sollol.activity import Activity
from sollol.http import Exchange, HttpRequest, fetch
from sollol.openai_compat import OpenAICompatibleBackend
from sollol.prometheus import metric_sum, parse_metrics


class SGLangBackend(OpenAICompatibleBackend):
    """Codec for SGLang servers (`python -m sglang.launch_server`, port 30000)."""

    name = "sglang"
    default_ports: tuple[int, ...] = (30000,)
    operations = frozenset({"chat", "generate", "embed"})
    health_path = "/health"

    def activity(self) -> Exchange[Activity]:
        """Running and queued requests and KV-cache use, from `/metrics` (`--enable-metrics`).

        Without metrics the route answers 404 and every figure stays None: SGLang says
        nothing else about its load, and a guess would mislead the router.
        """
        response = yield from fetch(HttpRequest.get("/metrics"))
        if not response.ok:
            return Activity()
        samples = parse_metrics(response.text)
        running = metric_sum(samples, "sglang:num_running_reqs")
        waiting = metric_sum(samples, "sglang:num_queue_reqs")
        usage = metric_sum(samples, "sglang:token_usage")
        return Activity(
            running=None if running is None else int(running),
            waiting=None if waiting is None else int(waiting),
            kv_cache_usage=usage,
        )
