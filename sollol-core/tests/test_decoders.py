from __future__ import annotations

import pytest

from sollol.codec import LineSplitter, NdjsonEvents, SseEvents, error_message, inband_error, model_key, same_model
from sollol.errors import ProtocolError, StreamError
from sollol.prometheus import metric_sum, parse_metrics


def feed_bytewise(decoder: SseEvents | NdjsonEvents, data: bytes) -> list[object]:
    out: list[object] = []
    for i in range(len(data)):
        out += decoder.feed(data[i : i + 1])
    out += decoder.close()
    return out


def test_sse_accepts_data_without_space_and_skips_comments() -> None:
    body = b':\n\ndata:{"a":1}\n\ndata: {"a":2}\r\n\r\n: keep-alive\n\ndata:[DONE]\n\n'
    events = feed_bytewise(SseEvents(), body)
    assert [e.data for e in events] == ['{"a":1}', '{"a":2}', "[DONE]"]  # type: ignore[attr-defined]


def test_sse_joins_multiline_data_and_flushes_unterminated_event() -> None:
    events = SseEvents().feed(b"event: x\ndata: a\ndata: b\n\n") + SseEvents().close()
    assert events[0].data == "a\nb" and events[0].event == "x"
    dec = SseEvents()
    assert dec.feed(b"data: tail") == []
    assert [e.data for e in dec.close()] == ["tail"]


def test_ndjson_across_pieces_and_last_line_without_newline() -> None:
    objs = feed_bytewise(NdjsonEvents(), b'{"a":1}\n\n{"b":2}\n{"c":3}')
    assert objs == [{"a": 1}, {"b": 2}, {"c": 3}]


def test_ndjson_malformed_line_is_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="malformed"):
        NdjsonEvents().feed(b"{not json}\n")


def test_line_splitter_keeps_partial_line() -> None:
    lines = LineSplitter()
    assert lines.feed(b"ab") == []
    assert lines.feed(b"c\r\nd") == [b"abc"]
    assert lines.rest() == b"d"


@pytest.mark.parametrize(
    ("body", "message", "kind"),
    [
        ({"error": "model 'x' not found"}, "model 'x' not found", None),
        ({"error": "bad", "error_type": "validation"}, "bad", "validation"),
        ({"error": {"message": "nested", "type": "NotFoundError", "code": 404}}, "nested", "NotFoundError"),
        ({"object": "error", "message": "flat", "type": "BadRequestError", "code": 400}, "flat", "BadRequestError"),
        ({"detail": "Not Found"}, "Not Found", None),
        ({"error": {"code": "server_error", "message": "m", "type": ""}}, "m", None),
        (None, "fallback", None),
    ],
)
def test_error_envelopes(body: object, message: str, kind: str | None) -> None:
    assert error_message(body, "fallback") == (message, kind)


def test_inband_error_carries_status_when_given() -> None:
    err = inband_error({"error": {"message": "too long", "http_status_code": 422}})
    assert isinstance(err, StreamError) and err.status == 422
    assert inband_error({"done": True}) is None


def test_model_names_match_the_way_users_write_them() -> None:
    assert same_model("llama3.2", "llama3.2:latest")
    assert not same_model("llama3.2:1b", "llama3.2:latest")
    assert model_key("meta-llama/Llama-3.1-8B") == "meta-llama/Llama-3.1-8B:latest"
    assert same_model("user/model", "user/model:latest")


def test_prometheus_sum_across_labels_with_fallback_name() -> None:
    text = (
        "# HELP x\n# TYPE vllm:num_requests_running gauge\n"
        'vllm:num_requests_running{engine="0",model_name="m"} 2.0\n'
        'vllm:num_requests_running{engine="1",model_name="m"} 3.0\n'
        'vllm:gpu_cache_usage_perc{engine="0"} 0.5\n'
    )
    samples = parse_metrics(text)
    assert metric_sum(samples, "vllm:num_requests_running") == 5.0
    assert metric_sum(samples, "vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc") == 0.5
    assert metric_sum(samples, "nope") is None


@pytest.mark.parametrize(
    "body",
    [
        *(b'{"a": 1}', b'  {"a":1}', b'{"a":1}  \n', b"[1,2]", b'"x"', b"1", b'{"a":"\xc3\xa9"}'),
        *(b'{"a":1} x', b"", b"{", b"nul", b"\xff{}", b'{"a":1}\x0b'),
    ],
)
def test_parse_json_reads_and_refuses_as_json_loads_does(body: bytes) -> None:
    """The straight-to-the-scanner path gives `json.loads`'s value, or a ValueError where it fails."""
    import json

    from sollol.http import parse_json

    try:
        expected: object = json.loads(body)
    except ValueError:
        with pytest.raises(ValueError):
            parse_json(body)
        return
    assert parse_json(body) == expected
