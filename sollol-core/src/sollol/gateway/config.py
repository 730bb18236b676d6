"""The gateway's settings, from flags, the environment and a TOML config file (in that order)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from sollol.discovery import CONFIG_ENV, load_config
from sollol.errors import ConfigError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 11434
#: Request bodies above this many bytes get 413 (images travel base64-encoded, so be generous).
DEFAULT_MAX_BODY = 32 * 1024 * 1024
#: Seconds a client may take to send one whole request once it began (then 408).
DEFAULT_REQUEST_TIMEOUT = 30.0
#: Seconds an idle keep-alive connection stays open after its last answer.
DEFAULT_KEEP_ALIVE = 5.0


def _keys(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(k for k in value.replace(",", " ").split() if k)
    if isinstance(value, Sequence) and all(isinstance(k, str) for k in value):
        return tuple(k for k in value if k)
    raise ConfigError(f"{where}: api_keys must be a list of strings or a comma-separated string")


def _seconds(value: Any, where: str) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where} must be a number of seconds, not {value!r}") from None
    if not 0 < seconds < 86400:
        raise ConfigError(f"{where} must be more than 0 and less than a day, not {value!r}")
    return seconds


def _int(value: Any, where: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where} must be a whole number, not {value!r}") from None


@attrs.frozen(kw_only=True)
class GatewayConfig:
    """Where the gateway listens, which nodes it serves from, and its safety limits.

    `api_keys` are kept out of `repr` so they never reach a log line.
    """

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    nodes: tuple[Any, ...] = ()
    api_keys: tuple[str, ...] = attrs.field(default=(), repr=False)
    max_body: int = DEFAULT_MAX_BODY
    policy: str = "least_loaded"
    access_log: bool = False
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    keep_alive: float = DEFAULT_KEEP_ALIVE

    def __attrs_post_init__(self) -> None:
        if not 0 <= self.port < 65536:
            raise ConfigError(f"port {self.port} is out of range (0-65535)")
        if self.max_body < 1024:
            raise ConfigError(f"max_body {self.max_body} is too small; give at least 1024 bytes")

    @classmethod
    def resolve(
        cls,
        *,
        host: str | None = None,
        port: int | None = None,
        nodes: Sequence[Any] | None = None,
        api_keys: Sequence[str] | None = None,
        max_body: int | None = None,
        policy: str | None = None,
        access_log: bool | None = None,
        request_timeout: float | None = None,
        keep_alive: float | None = None,
        config_file: str | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> GatewayConfig:
        """Settings from flags (the arguments), then the environment, then the config file.

        Environment: SOLLOL_HOST, SOLLOL_PORT, SOLLOL_NODES, SOLLOL_API_KEYS (comma separated),
        SOLLOL_MAX_BODY, SOLLOL_REQUEST_TIMEOUT, SOLLOL_KEEP_ALIVE, SOLLOL_CONFIG. Config file:
        top-level `nodes` (as for discovery) and a `[gateway]` table with host, port, api_keys,
        max_body, policy, access_log, request_timeout, keep_alive.
        """
        env = os.environ if environ is None else environ
        path = config_file or env.get(CONFIG_ENV)
        data: Mapping[str, Any] = load_config(path) if path else {}
        table = data.get("gateway", {})
        if not isinstance(table, Mapping):
            raise ConfigError(f"config file {path}: [gateway] must be a table")
        where = f"config file {path} [gateway]"

        def pick(flag: Any, env_name: str, key: str) -> Any:
            if flag is not None:
                return flag
            if env.get(env_name):
                return env[env_name]
            return table.get(key)

        chosen_nodes: Sequence[Any] | None = nodes if nodes else None
        if chosen_nodes is None and env.get("SOLLOL_NODES"):
            chosen_nodes = [n for n in env["SOLLOL_NODES"].replace(",", " ").split() if n]
        if chosen_nodes is None:
            listed = data.get("nodes", ())
            chosen_nodes = [listed] if isinstance(listed, (str, Mapping)) else list(listed)
        raw_port = pick(port, "SOLLOL_PORT", "port")
        raw_body = pick(max_body, "SOLLOL_MAX_BODY", "max_body")
        keys = api_keys if api_keys else None
        raw_keys = keys if keys is not None else (env.get("SOLLOL_API_KEYS") or table.get("api_keys"))
        log_flag = access_log if access_log is not None else table.get("access_log")
        raw_request = pick(request_timeout, "SOLLOL_REQUEST_TIMEOUT", "request_timeout")
        raw_keep = pick(keep_alive, "SOLLOL_KEEP_ALIVE", "keep_alive")
        return cls(
            host=str(pick(host, "SOLLOL_HOST", "host") or DEFAULT_HOST),
            port=DEFAULT_PORT if raw_port is None else _int(raw_port, "port"),
            nodes=tuple(chosen_nodes),
            api_keys=_keys(raw_keys, where),
            max_body=DEFAULT_MAX_BODY if raw_body is None else _int(raw_body, "max_body"),
            policy=str(pick(policy, "SOLLOL_POLICY", "policy") or "least_loaded"),
            access_log=bool(log_flag),
            request_timeout=DEFAULT_REQUEST_TIMEOUT
            if raw_request is None
            else _seconds(raw_request, "request_timeout"),
            keep_alive=DEFAULT_KEEP_ALIVE if raw_keep is None else _seconds(raw_keep, "keep_alive"),
        )
