"""Subnet scanning: which host:port pairs of a network the user named accept a TCP connection.

Only networks the user names are scanned, never one SOLLOL guesses, and a network larger
than a /16 (65,536 addresses) is refused unless the caller forces it. Connection attempts
run concurrently through a fixed number of workers, each with a connect timeout, so a /16
neither opens a million sockets nor holds a million tasks. What answers is then identified
by detection (`sollol.detect`); this module only says who listens.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import selectors
import socket
import time
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
    return bool(await connect_scan([(host, port)], timeout=timeout))


def _attempt(host: str, port: int) -> tuple[socket.socket | None, bool]:
    """Start a non-blocking connect: (socket still connecting, or None; connected already)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError:
        return None, False
    sock.setblocking(False)
    try:
        code = sock.connect_ex((host, port))
    except OSError:  # an address the kernel will not even try (bad family, unroutable)
        code = -1
    if code in _IN_PROGRESS:
        return sock, False
    sock.close()
    return None, code == 0


_IN_PROGRESS = {errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN}


def _scan_blocking(
    targets: Iterator[tuple[int, tuple[str, int]]],
    concurrency: int,
    timeout: float,
    report: Callable[[int], None],
) -> list[tuple[int, tuple[str, int]]]:
    """The scan loop: keep `concurrency` connects in flight, each until it succeeds, fails or times out.

    Runs in a worker thread with plain non-blocking sockets and one selector, which costs a
    fraction of a coroutine per attempt: a /24 on five ports is a few milliseconds of CPU.
    """
    found: list[tuple[int, tuple[str, int]]] = []
    flying: dict[socket.socket, tuple[int, tuple[str, int], float]] = {}
    done = 0
    exhausted = False
    with selectors.DefaultSelector() as selector:
        try:
            while True:
                while not exhausted and len(flying) < concurrency:
                    try:
                        index, target = next(targets)
                    except StopIteration:
                        exhausted = True
                        break
                    sock, connected = _attempt(*target)
                    if sock is None:
                        done += 1
                        if connected:
                            found.append((index, target))
                        continue
                    selector.register(sock, selectors.EVENT_WRITE)
                    flying[sock] = (index, target, time.monotonic() + timeout)
                if not flying:
                    break
                wait = max(0.0, min(deadline for _, _, deadline in flying.values()) - time.monotonic())
                for key, _ in selector.select(wait):
                    ready = key.fileobj
                    assert isinstance(ready, socket.socket)
                    index, target, _ = flying.pop(ready)
                    if ready.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                        found.append((index, target))
                    selector.unregister(ready)
                    ready.close()
                    done += 1
                now = time.monotonic()
                for sock in [s for s, (_, _, deadline) in flying.items() if deadline <= now]:
                    flying.pop(sock)
                    selector.unregister(sock)
                    sock.close()
                    done += 1
                report(done)
        finally:
            for sock in flying:
                sock.close()
    return found


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
    `timeout` seconds. `progress(done, total)` is called on the event loop as attempts finish.
    """
    loop = asyncio.get_running_loop()
    expected = total or 0
    last = 0

    def report(done: int) -> None:
        nonlocal last
        if progress is not None and done != last:
            last = done
            loop.call_soon_threadsafe(progress, done, max(expected, done))

    found = await asyncio.to_thread(_scan_blocking, enumerate(targets), max(1, concurrency), timeout, report)
    log.debug("scan: %d attempts connected", len(found))
    return [target for _, target in sorted(found)]
