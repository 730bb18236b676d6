"""`sollol serve`: settings from flags, environment and file; the port-taken message; the command."""

from __future__ import annotations

import gc
import socket
from pathlib import Path

import pytest

from sollol.cli import build_parser
from sollol.cli_serve import PortTaken, bind, client_base, emulator_class, settle_heap
from sollol.errors import ConfigError
from sollol.gateway import GatewayConfig


def test_defaults() -> None:
    config = GatewayConfig.resolve(environ={})
    assert (config.host, config.port, config.nodes, config.api_keys) == ("127.0.0.1", 11434, (), ())


def test_flags_beat_environment_beats_file(tmp_path: Path) -> None:
    path = tmp_path / "sollol.toml"
    path.write_text(
        'nodes = ["http://127.0.0.1:9001"]\n'
        '[gateway]\nhost = "127.0.0.9"\nport = 9000\napi_keys = ["file-key"]\nmax_body = 4096\n'
    )
    from_file = GatewayConfig.resolve(config_file=str(path), environ={})
    assert (from_file.host, from_file.port, from_file.nodes, from_file.api_keys, from_file.max_body) == (
        "127.0.0.9",
        9000,
        ("http://127.0.0.1:9001",),
        ("file-key",),
        4096,
    )
    env = {
        "SOLLOL_PORT": "9100",
        "SOLLOL_NODES": "127.0.0.1:1,127.0.0.1:2",
        "SOLLOL_API_KEYS": "a, b",
        "SOLLOL_CONFIG": str(path),
    }
    from_env = GatewayConfig.resolve(environ=env)
    assert (from_env.host, from_env.port, from_env.nodes, from_env.api_keys) == (
        "127.0.0.9",
        9100,
        ("127.0.0.1:1", "127.0.0.1:2"),
        ("a", "b"),
    )
    from_flags = GatewayConfig.resolve(port=9200, nodes=["127.0.0.1:3"], api_keys=["c"], environ=env)
    assert (from_flags.port, from_flags.nodes, from_flags.api_keys) == (9200, ("127.0.0.1:3",), ("c",))


def test_timeouts_from_flags_environment_and_file(tmp_path: Path) -> None:
    path = tmp_path / "sollol.toml"
    path.write_text("[gateway]\nrequest_timeout = 12\nkeep_alive = 2.5\n")
    assert (GatewayConfig.resolve(environ={}).request_timeout, GatewayConfig.resolve(environ={}).keep_alive) == (
        30.0,
        5.0,
    )
    from_file = GatewayConfig.resolve(config_file=str(path), environ={})
    assert (from_file.request_timeout, from_file.keep_alive) == (12.0, 2.5)
    env = {"SOLLOL_REQUEST_TIMEOUT": "7", "SOLLOL_CONFIG": str(path)}
    assert GatewayConfig.resolve(environ=env).request_timeout == 7.0
    assert GatewayConfig.resolve(request_timeout=3.0, environ=env).request_timeout == 3.0
    args = build_parser().parse_args(["serve", "--request-timeout", "9", "--keep-alive", "1"])
    assert (args.request_timeout, args.keep_alive) == (9.0, 1.0)
    with pytest.raises(ConfigError, match="request_timeout must be a number of seconds"):
        GatewayConfig.resolve(environ={"SOLLOL_REQUEST_TIMEOUT": "soon"})
    with pytest.raises(ConfigError, match="keep_alive must be more than 0"):
        GatewayConfig.resolve(keep_alive=0, environ={})


def test_keys_stay_out_of_repr() -> None:
    config = GatewayConfig.resolve(api_keys=["hunter2"], environ={})
    assert "hunter2" not in repr(config)


def test_bad_settings_are_clear() -> None:
    with pytest.raises(ConfigError, match="port"):
        GatewayConfig.resolve(environ={"SOLLOL_PORT": "eleven"})
    with pytest.raises(ConfigError, match="out of range"):
        GatewayConfig.resolve(port=70000, environ={})


def test_a_taken_port_is_reported_clearly() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(PortTaken, match=f"port {port} on 127.0.0.1 is already in use.*--port"):
            bind("127.0.0.1", port)
    free = bind("127.0.0.1", 0)
    free.close()


def test_client_base_for_wildcards() -> None:
    assert client_base("0.0.0.0", 11434) == "http://127.0.0.1:11434"
    assert client_base("::1", 8) == "http://[::1]:8"


def test_serve_is_a_subcommand() -> None:
    args = build_parser().parse_args(["serve", "http://127.0.0.1:1", "--port", "0", "--api-key", "k", "--smoke"])
    assert args.command == "serve"
    assert args.smoke
    assert args.api_key == ["k"]
    assert args.nodes == ["http://127.0.0.1:1"]


def test_unknown_emulator_kind_names_the_plugin() -> None:
    with pytest.raises(ConfigError, match="pip install sollol-nosuch"):
        emulator_class("nosuch")


def test_serve_without_nodes_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from sollol.cli import main

    for name in ("SOLLOL_NODES", "SOLLOL_CONFIG", "SOLLOL_PORT", "SOLLOL_HOST"):
        monkeypatch.delenv(name, raising=False)
    assert main(["serve", "--port", "0"]) == 2
    assert "--local-llamacpp" in capsys.readouterr().out


def test_start_up_objects_leave_the_collectors_full_passes() -> None:
    built_at_start = [{"n": n} for n in range(10000)]  # stands for the modules, the pool, the app
    tracked = len(gc.get_objects())
    frozen = gc.get_freeze_count()
    try:
        settle_heap()
        assert gc.get_freeze_count() >= frozen + len(built_at_start)
        assert len(gc.get_objects()) < tracked - len(built_at_start)  # what a full pass walks
    finally:
        gc.unfreeze()
