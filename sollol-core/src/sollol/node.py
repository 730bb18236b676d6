"""`Node`: where a server is, what kind it is (when known), and how to authenticate to it."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any, Union
from urllib.parse import urlsplit

import attrs

from sollol.errors import ConfigError

#: What users may pass as a node: a URL, "host:port", a dict like the seed's, or a `Node`.
NodeSpec = Union[str, Mapping[str, Any], "Node"]


@attrs.frozen(kw_only=True)
class Node:
    """One server. Credentials are kept out of `repr` and of `str`."""

    host: str
    port: int
    scheme: str = "http"
    backend: str | None = None
    api_key: str | None = attrs.field(default=None, repr=False)
    name: str | None = None
    max_concurrency: int | None = None
    labels: tuple[tuple[str, str], ...] = ()

    @property
    def url(self) -> str:
        """The base URL, without a trailing slash."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    @property
    def id(self) -> str:
        """A stable identifier: the name if given, else host:port."""
        if self.name:
            return self.name
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        return self.id

    def with_backend(self, backend: str) -> Node:
        """The same node with its backend kind known."""
        return attrs.evolve(self, backend=backend)


def _port(value: Any, spec: object) -> int:
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"node {spec!r}: port {value!r} is not a number") from None
    if not 0 < port < 65536:
        raise ConfigError(f"node {spec!r}: port {port} is out of range")
    return port


def parse_node(spec: NodeSpec, *, default_port: int | None = None) -> Node:
    """Turn a URL, "host:port", a seed-style dict or a `Node` into a `Node`.

    A pasted `/v1` suffix and trailing slashes are dropped. A spec without a port uses
    `default_port`, or is an error when there is none.
    """
    if isinstance(spec, Node):
        return spec
    if isinstance(spec, Mapping):
        return _from_mapping(spec, default_port)
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"cannot read a node from {spec!r}: give a URL, 'host:port' or a dict")
    text = spec.strip()
    has_scheme = "://" in text
    parts = urlsplit(text if has_scheme else f"http://{text}")
    if parts.scheme not in ("http", "https"):
        raise ConfigError(f"node {spec!r}: scheme {parts.scheme!r} is not http or https")
    host = parts.hostname
    if not host:
        raise ConfigError(f"node {spec!r}: no host")
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"node {spec!r}: the port is not a number in range") from None
    if port is None:
        if has_scheme and default_port is None:
            port = 443 if parts.scheme == "https" else 80
        elif default_port is None:
            raise ConfigError(f"node {spec!r}: no port given")
        else:
            port = default_port
    path = parts.path.rstrip("/")
    if path not in ("", "/v1"):
        raise ConfigError(f"node {spec!r}: a base URL cannot have the path {parts.path!r}")
    return Node(host=host, port=port, scheme=parts.scheme, api_key=parts.password or None)


def _from_mapping(spec: Mapping[str, Any], default_port: int | None) -> Node:
    known = {"host", "port", "url", "backend", "api_key", "name", "max_concurrency", "scheme"}
    unknown = set(spec) - known
    if unknown:
        raise ConfigError(f"node {dict(spec)!r}: unknown keys {sorted(unknown)}")
    if "url" in spec:
        base = parse_node(str(spec["url"]), default_port=default_port)
    elif "host" in spec:
        host = str(spec["host"])
        port = spec.get("port", default_port)
        if port is None:
            raise ConfigError(f"node {dict(spec)!r}: no port given")
        base = Node(host=host, port=_port(port, dict(spec)), scheme=str(spec.get("scheme", "http")))
    else:
        raise ConfigError(f"node {dict(spec)!r}: needs 'host' (and 'port') or 'url'")
    limit = spec.get("max_concurrency")
    return attrs.evolve(
        base,
        backend=(str(spec["backend"]).lower() if spec.get("backend") else None),
        api_key=spec.get("api_key") or base.api_key,
        name=spec.get("name"),
        max_concurrency=int(limit) if limit is not None else None,
    )


def parse_nodes(specs: Iterable[NodeSpec] | str, *, default_port: int | None = None) -> tuple[Node, ...]:
    """Parse many node specs; a string may hold several separated by commas or spaces."""
    if isinstance(specs, str):
        specs = [s for s in specs.replace(",", " ").split() if s]
    nodes: list[Node] = []
    seen: set[str] = set()
    for spec in specs:
        node = parse_node(spec, default_port=default_port)
        if node.url in seen:
            continue
        seen.add(node.url)
        nodes.append(node)
    return tuple(nodes)


def is_loopback(host: str) -> bool:
    """True when `host` names this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
