"""Run ASGI apps (emulators, the gateway) on loopback ports, in one background thread.

Needs uvicorn (`pip install sollol-core[testing]`).
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import attrs

from sollol.node import is_loopback

T = TypeVar("T")


@attrs.define
class Running:
    """One app being served."""

    app: Any
    host: str
    port: int
    server: Any = None
    task: Any = None

    @property
    def url(self) -> str:
        """The base URL."""
        return f"http://{self.host}:{self.port}"

    @property
    def address(self) -> str:
        """host:port."""
        return f"{self.host}:{self.port}"


def free_port(host: str = "127.0.0.1") -> int:
    """A port that is free on `host` right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class LoopbackServers:
    """Serves any number of ASGI apps on loopback addresses; use as a context manager."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="sollol-servers", daemon=True)
        self._thread.start()
        self.running: list[Running] = []

    def __enter__(self) -> LoopbackServers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self, app: Any, host: str = "127.0.0.1", port: int = 0) -> Running:
        """Serve `app` on host:port (port 0 picks a free one); returns when it listens."""
        if not is_loopback(host):
            raise ValueError(f"test servers bind loopback addresses only, not {host!r}")
        running = Running(app=app, host=host, port=port or free_port(host))
        self._call(self._serve(running))
        self.running.append(running)
        return running

    async def _serve(self, running: Running) -> None:
        import uvicorn

        config = uvicorn.Config(
            running.app,
            host=running.host,
            port=running.port,
            log_level="critical",
            access_log=False,
            lifespan="off",
            server_header=False,
            date_header=False,
            timeout_graceful_shutdown=1,
        )
        server = uvicorn.Server(config)
        running.server = server
        running.task = asyncio.ensure_future(server.serve())
        while not server.started:
            if running.task.done():
                running.task.result()
                raise RuntimeError(f"server on {running.address} stopped while starting")
            await asyncio.sleep(0.005)

    def stop(self, running: Running) -> None:
        """Stop serving one app (its port then refuses connections)."""
        self._call(self._stop(running))

    async def _stop(self, running: Running) -> None:
        if running.server is None:
            return
        running.server.should_exit = True
        running.server.force_exit = True
        try:
            await asyncio.wait_for(running.task, timeout=5)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            running.task.cancel()
        running.server = None

    def restart(self, running: Running) -> None:
        """Serve the app again on the same address."""
        self._call(self._serve(running))

    def close(self) -> None:
        """Stop every app and the thread."""
        for running in self.running:
            try:
                self.stop(running)
            except Exception:  # closing is best effort; one stuck server must not hide others
                pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
