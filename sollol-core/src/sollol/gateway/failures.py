"""How the pool's errors become HTTP statuses and messages for clients."""

from __future__ import annotations

from sollol.errors import (
    AllNodesFailedError,
    AuthenticationError,
    BackendError,
    BusyError,
    ConnectError,
    InvalidRequestError,
    ModelNotFoundError,
    NodeTimeoutError,
    NoNodeForModelError,
    OverloadedError,
    PoolClosedError,
    StreamInterruptedError,
    UnavailableError,
)
from sollol.gateway.wire import ApiError

RETRY_AFTER = ((b"retry-after", b"1"),)


def _from_attempts(exc: AllNodesFailedError) -> ApiError:
    errors = [err for _, err in exc.attempts]
    message = str(exc)
    if errors and all(isinstance(e, ModelNotFoundError) for e in errors):
        return ApiError(404, f"model '{exc.model}' not found: {message}", code="model_not_found")
    if errors and all(isinstance(e, OverloadedError) for e in errors):
        return ApiError(503, message, kind="overloaded", headers=RETRY_AFTER)
    if not errors or all(isinstance(e, (ConnectError, NodeTimeoutError, UnavailableError)) for e in errors):
        return ApiError(503, message, kind="unavailable", headers=RETRY_AFTER)
    return ApiError(502, message, kind="bad_gateway")


def api_error(exc: Exception, *, openai: bool) -> ApiError:
    """The client-facing error for an exception raised while serving a request.

    NoNodeForModelError 404; BusyError 503 (Ollama's queue-full status) or 429 for OpenAI
    clients; AllNodesFailedError 502, or 503 when every node was unreachable or busy, or 404
    when every node said it lacks the model; InvalidRequestError keeps the node's 4xx.
    """
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, NoNodeForModelError):
        return ApiError(404, f"model '{exc.model}' not found: {exc}", code="model_not_found", param="model")
    if isinstance(exc, BusyError):
        status = 429 if openai else 503
        return ApiError(status, f"server busy, please try again: {exc}", kind="overloaded", headers=RETRY_AFTER)
    if isinstance(exc, AllNodesFailedError):
        return _from_attempts(exc)
    if isinstance(exc, StreamInterruptedError):
        return ApiError(502, str(exc), kind="bad_gateway")
    if isinstance(exc, InvalidRequestError):
        status = exc.status if 400 <= exc.status < 500 and exc.status != 422 else 400
        return ApiError(status, exc.message or str(exc))
    if isinstance(exc, ModelNotFoundError):
        return ApiError(404, exc.message or str(exc), code="model_not_found")
    if isinstance(exc, AuthenticationError):
        return ApiError(502, f"a node refused the gateway's credentials: {exc}", kind="bad_gateway")
    if isinstance(exc, OverloadedError):
        return ApiError(429 if openai else 503, str(exc), kind="overloaded", headers=RETRY_AFTER)
    if isinstance(exc, BackendError):
        return ApiError(502, str(exc), kind="bad_gateway")
    if isinstance(exc, PoolClosedError):
        return ApiError(503, "the gateway is shutting down", headers=RETRY_AFTER)
    return ApiError(500, f"internal error in the gateway: {type(exc).__name__}: {exc}")


OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


def openai_body(error: ApiError) -> dict[str, object]:
    """OpenAI's error envelope."""
    kind = OPENAI_TYPES.get(error.status, "invalid_request_error" if error.status < 500 else "api_error")
    return {"error": {"message": error.message, "type": kind, "param": error.param, "code": error.code}}
