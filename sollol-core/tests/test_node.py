from __future__ import annotations

import pytest

from sollol.errors import ConfigError
from sollol.node import Node, parse_node, parse_nodes


@pytest.mark.parametrize(
    ("spec", "host", "port", "scheme"),
    [
        ("http://127.0.0.1:11434", "127.0.0.1", 11434, "http"),
        ("http://127.0.0.1:8000/v1", "127.0.0.1", 8000, "http"),
        ("http://127.0.0.1:8000/v1/", "127.0.0.1", 8000, "http"),
        ("127.0.0.2:8080", "127.0.0.2", 8080, "http"),
        ("https://gpu.example:443", "gpu.example", 443, "https"),
        ("[::1]:11434", "::1", 11434, "http"),
    ],
)
def test_parse_url_forms(spec: str, host: str, port: int, scheme: str) -> None:
    node = parse_node(spec)
    assert (node.host, node.port, node.scheme) == (host, port, scheme)


def test_seed_dict_form_with_string_port_and_optional_backend() -> None:
    node = parse_node({"host": "10.9.66.124", "port": "11434", "backend": "ollama"})
    assert node == Node(host="10.9.66.124", port=11434, backend="ollama")
    assert parse_node({"host": "10.9.66.124", "port": 11434}).backend is None


def test_bad_specs_are_clear_errors() -> None:
    with pytest.raises(ConfigError, match="no port"):
        parse_node("127.0.0.1")
    with pytest.raises(ConfigError, match="port"):
        parse_node({"host": "h", "port": "eleven"})
    with pytest.raises(ConfigError, match="unknown keys"):
        parse_node({"host": "h", "port": 1, "colour": "red"})
    with pytest.raises(ConfigError, match="path"):
        parse_node("http://h:1/api/chat")
    with pytest.raises(ConfigError, match="scheme"):
        parse_node("ftp://h:1")


def test_credentials_stay_out_of_repr_and_str() -> None:
    node = parse_node({"url": "http://127.0.0.1:8000", "api_key": "sk-secret-123"})
    assert node.api_key == "sk-secret-123"
    assert "sk-secret" not in repr(node)
    assert "sk-secret" not in str(node)
    assert "sk-secret" not in node.url
    from_url = parse_node("http://user:sk-url-secret@127.0.0.1:8000")
    assert from_url.api_key == "sk-url-secret"
    assert "sk-url-secret" not in repr(from_url) + from_url.url


def test_parse_nodes_splits_and_deduplicates() -> None:
    nodes = parse_nodes("127.0.0.1:1, 127.0.0.1:2 http://127.0.0.1:1")
    assert [n.port for n in nodes] == [1, 2]
