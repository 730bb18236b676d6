"""Errors a user can act on. Each says what failed, where, and what to do about it."""

from __future__ import annotations

from collections.abc import Sequence


class SollolError(Exception):
    """The root of every error SOLLOL raises."""


class ConfigError(SollolError, ValueError):
    """A node, option or setting given by the user is wrong."""


class PluginError(SollolError):
    """A plugin could not be loaded or conflicts with another."""


class DuplicateBackendError(PluginError):
    """Two plugins register the same backend name."""

    def __init__(self, backend: str, first: str, second: str) -> None:
        super().__init__(f"backend {backend!r} is provided by two plugins: {first} and {second}; uninstall one of them")
        self.backend = backend
        self.plugins = (first, second)


class ProtocolError(SollolError):
    """A node answered something that its protocol does not allow (a malformed body)."""


class PoolClosedError(SollolError):
    """The pool was used after it was closed."""


class BackendError(SollolError):
    """A node answered with an error. `status` is the HTTP status (or the in-band one)."""

    #: Whether another node may succeed where this one failed.
    retryable: bool = True

    def __init__(
        self,
        message: str,
        *,
        status: int = 0,
        node: str | None = None,
        error_type: str | None = None,
        body: object = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.node = node
        self.error_type = error_type
        self.body = body

    def __str__(self) -> str:
        where = f" from {self.node}" if self.node else ""
        code = f"HTTP {self.status}" if self.status else "error"
        return f"{code}{where}: {self.message}"

    def at(self, node: str) -> BackendError:
        """The same error, saying which node raised it."""
        self.node = node
        return self


class InvalidRequestError(BackendError):
    """The request itself is wrong (400/422): no other node would accept it either."""

    retryable = False


class AuthenticationError(BackendError):
    """The node wants credentials (401/403)."""


class ModelNotFoundError(BackendError):
    """The node does not have the model (404)."""


class NotSupportedError(BackendError):
    """The node or its backend cannot do this (embeddings on a chat-only server, 501)."""


class OverloadedError(BackendError):
    """The node is busy (429, or Ollama's 503 queue-full)."""


class UnavailableError(BackendError):
    """The node is not ready, for example still loading its model (503)."""


class BackendServerError(BackendError):
    """The node failed (5xx)."""


class ConnectError(BackendError):
    """The node could not be reached, or the connection broke before an answer."""


class NodeTimeoutError(BackendError):
    """The node did not answer in time."""


class StreamError(BackendError):
    """The node reported an error inside a stream that had already begun with HTTP 200."""


class StreamInterruptedError(BackendError):
    """A stream ended early (cut off, or an error) after chunks had reached the caller.

    The caller has received part of the answer; nothing was retried, since that would
    repeat text the caller already has.
    """

    retryable = False


_BY_STATUS: dict[int, type[BackendError]] = {
    400: InvalidRequestError,
    401: AuthenticationError,
    403: AuthenticationError,
    404: ModelNotFoundError,
    413: InvalidRequestError,
    415: InvalidRequestError,
    422: InvalidRequestError,
    429: OverloadedError,
    501: NotSupportedError,
    503: UnavailableError,
}


def error_for_status(status: int, message: str, **kw: object) -> BackendError:
    """The `BackendError` subclass that fits an HTTP status."""
    cls = _BY_STATUS.get(status)
    if cls is None:
        cls = BackendServerError if status >= 500 else BackendError
    return cls(message, status=status, **kw)  # type: ignore[arg-type]


class NoNodeForModelError(SollolError):
    """No node in the pool serves the requested model."""

    def __init__(self, model: str, available: Sequence[str], detail: str = "") -> None:
        offer = ", ".join(sorted(available)) if available else "no models at all"
        extra = f" ({detail})" if detail else ""
        super().__init__(f"no node serves model {model!r}{extra}; the cluster offers: {offer}")
        self.model = model
        self.available = tuple(sorted(available))


class AllNodesFailedError(SollolError):
    """Every node that could serve the request was tried and failed."""

    def __init__(self, model: str, attempts: Sequence[tuple[str, BaseException]]) -> None:
        tried = "; ".join(f"{node}: {err}" for node, err in attempts) or "no node was available"
        super().__init__(f"request for model {model!r} failed on every node tried: {tried}")
        self.model = model
        self.attempts = tuple(attempts)

    @property
    def last(self) -> BaseException | None:
        """The last error seen."""
        return self.attempts[-1][1] if self.attempts else None


class BusyError(SollolError):
    """Every node that serves the model stayed at its concurrency limit until the deadline."""

    def __init__(self, model: str, waited: float) -> None:
        super().__init__(f"all nodes serving {model!r} are busy; waited {waited:.1f}s in the queue")
        self.model = model
        self.waited = waited
