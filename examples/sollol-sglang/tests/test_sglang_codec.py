"""What the SGLang codec adds to the shared OpenAI codec, tested without a server."""

from __future__ import annotations

from sollol_sglang.codec import SGLangBackend

from sollol.http import HttpResponse, run_offline

METRICS = b"""# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{model_name="a"} 3.0
sglang:num_running_reqs{model_name="b"} 1.0
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{model_name="a"} 2.0
# TYPE sglang:token_usage gauge
sglang:token_usage{model_name="a"} 0.25
"""


def test_activity_from_metrics() -> None:
    activity = run_offline(SGLangBackend().activity(), lambda _r: HttpResponse(status=200, body=METRICS))
    assert (activity.running, activity.waiting, activity.kv_cache_usage) == (4, 2, 0.25)
    assert activity.loaded is None
    assert activity.capacity is None


def test_activity_without_metrics_is_unknown() -> None:
    answer = HttpResponse(status=404, body=b'{"detail":"Not Found"}')
    activity = run_offline(SGLangBackend().activity(), lambda _r: answer)
    assert (activity.running, activity.waiting, activity.kv_cache_usage) == (None, None, None)


def test_health_is_the_health_route() -> None:
    assert SGLangBackend().health().path == "/health"
