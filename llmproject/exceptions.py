"""The one exception type services raise for errors a client caused or must see.

Views never build error responses themselves: ``llmproject.exception_handler``
maps these to HTTP (and the OpenAI API maps them to OpenAI's error shape).
"""

from __future__ import annotations

from typing import Any


class ApplicationError(Exception):
    status_code = 400
    code = "invalid_request"

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        code: str | None = None,
        retry_after: int | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        if code is not None:
            self.code = code
        self.retry_after = retry_after
        self.extra = extra or {}


class InvalidInput(ApplicationError):
    """The request is well-formed but a value is not acceptable (400)."""


class NotFound(ApplicationError):
    """The object does not exist or belongs to someone else (404)."""

    status_code = 404
    code = "not_found"


class Conflict(ApplicationError):
    """The object is in a state that does not allow the operation (409)."""

    status_code = 409
    code = "conflict"


class ServiceUnavailable(ApplicationError):
    """A dependency (broker, workers) cannot take the request now (503)."""

    status_code = 503
    code = "service_unavailable"


class TooManyRequests(ApplicationError):
    """The client is over its rate limit, or the model's queue is full (429)."""

    status_code = 429
    code = "rate_limited"


class NotAuthenticated(ApplicationError):
    """No credentials, or credentials that do not identify an active user (401)."""

    status_code = 401
    code = "invalid_api_key"
