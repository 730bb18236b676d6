"""The subnet scanner: network limits, target counts, and a connect scan over loopback."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterator

import pytest

from sollol.errors import ConfigError
from sollol.scan import accepts, connect_scan, count_targets, parse_network, scan_targets


def test_refuses_networks_larger_than_a_slash_16() -> None:
    assert parse_network("10.1.0.0/16").num_addresses == 65536
    with pytest.raises(ConfigError, match=r"refusing to scan 10\.0\.0\.0/15"):
        parse_network("10.0.0.0/15")
    with pytest.raises(ConfigError, match="/16"):
        parse_network("fd00::/64")
    assert parse_network("10.0.0.0/8", force=True).prefixlen == 8


def test_bad_network_is_an_actionable_error() -> None:
    with pytest.raises(ConfigError, match=r"192\.168\.1\.0/24"):
        parse_network("not-a-network")


def test_host_bits_are_tolerated() -> None:
    assert str(parse_network("192.168.1.77/24")) == "192.168.1.0/24"


@pytest.mark.parametrize(
    ("cidr", "ports", "expected"),
    [("127.0.0.0/24", (1, 2), 508), ("127.0.0.5/32", (1,), 1), ("127.0.0.4/31", (1, 2, 3), 6), ("::1/128", (9,), 1)],
)
def test_count_matches_targets(cidr: str, ports: tuple[int, ...], expected: int) -> None:
    networks = [ipaddress.ip_network(cidr)]
    assert count_targets(networks, ports) == expected
    assert len(list(scan_targets(networks, ports))) == expected


def test_targets_are_lazy() -> None:
    targets = scan_targets([parse_network("10.0.0.0/16")], (1, 2, 3))
    assert next(targets) == ("10.0.0.1", 1)
    assert next(targets) == ("10.0.0.1", 2)


@pytest.fixture
def listeners() -> Iterator[list[tuple[str, int]]]:
    """Three listening sockets on different 127.0.0.x addresses, one port."""
    opened: list[socket.socket] = []
    probe = socket.socket()
    probe.bind(("127.0.0.21", 0))
    port = probe.getsockname()[1]
    probe.close()
    addresses = [("127.0.0.21", port), ("127.0.0.23", port), ("127.0.0.40", port)]
    for address in addresses:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(16)
        opened.append(sock)
    yield addresses
    for sock in opened:
        sock.close()


def test_connect_scan_finds_exactly_the_listeners(listeners: list[tuple[str, int]]) -> None:
    port = listeners[0][1]
    network = parse_network("127.0.0.16/28")  # .17 - .30 as hosts, plus .40 outside it
    seen: list[tuple[int, int]] = []
    targets = list(scan_targets([network, parse_network("127.0.0.40/32")], (port,)))
    found = asyncio.run(
        connect_scan(targets, concurrency=8, timeout=1.0, total=len(targets), progress=lambda d, t: seen.append((d, t)))
    )
    assert found == listeners
    assert seen[-1] == (len(targets), len(targets))
    assert [d for d, _ in seen] == sorted({d for d, _ in seen})  # reports only ever go up


def test_accepts_false_on_closed_port(listeners: list[tuple[str, int]]) -> None:
    host, port = listeners[0]
    assert asyncio.run(accepts(host, port, 1.0))
    assert not asyncio.run(accepts("127.0.0.22", port, 1.0))
