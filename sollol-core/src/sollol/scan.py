"""Subnet scanning: which host:port pairs of a network the user named accept a TCP connection.

Only networks the user names are scanned, never one SOLLOL guesses, and a network larger
than a /16 (65,536 addresses) is refused unless the caller forces it. Connection attempts
run concurrently through a fixed number of workers, each with a connect timeout, so a /16
neither opens a million sockets nor holds a million tasks. What answers is then identified
by detection (`sollol.detect`); this module only says who listens.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence

from sollol.errors import ConfigError

log = logging.getLogger(__name__)

#: The largest network scanned without `force`: a /16 in IPv4 terms.
MAX_ADDRESSES = 2**16
DEFAULT_CONCURRENCY = 512
DEFAULT_CONNECT_TIMEOUT = 0.5

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
#: Called with (attempts done, attempts in all) as the scan goes.
Progress = Callable[[int, int], None]


def parse_network(cidr: str, *, force: bool = False) -> Network:
    """Read a CIDR such as `192.168.1.0/24`; refuse one larger than a /16 unless `force`."""
    try:
        network = ipaddress.ip_network(cidr.strip(), strict=False)
    except ValueError as exc:
        raise ConfigError(f"cannot scan {cidr!r}: {exc}; give a network like 192.168.1.0/24") from None
    if network.num_addresses > MAX_ADDRESSES and not force:
        raise ConfigError(
            f"refusing to scan {network} ({network.num_addresses:,} addresses): the limit is a /16 "
            f"({MAX_ADDRESSES:,} addresses); name a smaller network, or force it (--force-scan)"
        )
    return network


def network_hosts(network: Network) -> Iterator[str]:
    """The host addresses of a network (without the network and broadcast addresses of an IPv4 /24...)."""
    for address in network.hosts():
        yield str(address)


def scan_targets(networks: Sequence[Network], ports: Sequence[int]) -> Iterator[tuple[str, int]]:
    """Every (host, port) pair to try, host by host."""
    for network in networks:
        for host in network_hosts(network):
            for port in ports:
                yield host, port


def count_targets(networks: Sequence[Network], ports: Sequence[int]) -> int:
    """How many (host, port) pairs `scan_targets` yields."""
    total = 0
    for network in networks:
        hosts = network.num_addresses
        if network.version == 4 and network.prefixlen < 31:
            hosts -= 2
        elif network.version == 6 and network.prefixlen < 127:
            hosts -= 1
        total += hosts * len(ports)
    return total


async def accepts(host: str, port: int, timeout: float) -> bool:
    """True when host:port accepts a TCP connection within `timeout` seconds."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, asyncio.TimeoutError):
        return False
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass
    return True


async def connect_scan(
    targets: Iterable[tuple[str, int]],
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    timeout: float = DEFAULT_CONNECT_TIMEOUT,
    total: int | None = None,
    progress: Progress | None = None,
) -> list[tuple[str, int]]:
    """The targets that accept a connection, in the order given.

    At most `concurrency` connection attempts are open at once; each gives up after
    `timeout` seconds. `progress(done, total)` is called as attempts finish.
    """
    pending = iter(enumerate(targets))
    found: list[tuple[int, tuple[str, int]]] = []
    done = 0
    expected = total or 0

    async def worker() -> None:
        nonlocal done
        for index, (host, port) in pending:
            if await accepts(host, port, timeout):
                found.append((index, (host, port)))
            done += 1
            if progress is not None:
                progress(done, max(expected, done))

    await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    log.debug("scan: %d of %d attempts connected", len(found), done)
    return [target for _, target in sorted(found)]
