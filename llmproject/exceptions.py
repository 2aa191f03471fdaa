"""The one exception type services raise for errors a client caused or must see.

Views never build error responses themselves: ``llmproject.exception_handler``
maps these to HTTP (and the OpenAI API maps them to OpenAI's error shape).
"""

from __future__ import annotations

from typing import Any

from django.db import InterfaceError, OperationalError


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


class PayloadTooLarge(ApplicationError):
    """The request body is over ``DATA_UPLOAD_MAX_MEMORY_SIZE`` (413)."""

    status_code = 413
    code = "request_too_large"


class UnsupportedMediaType(ApplicationError):
    """The body is not in a format the endpoint reads (415)."""

    status_code = 415
    code = "unsupported_media_type"


class DatabaseUnavailable(ServiceUnavailable):
    """The database cannot be reached, or refused the statement for a passing reason (503)."""

    code = "database_unavailable"


# What the database raises when it is down, restarting, unreachable, out of
# connections, or gave up on a lock or a statement: all of them pass, so a
# client is told 503 and when to come back, not 500.
DATABASE_UNAVAILABLE_ERRORS = (OperationalError, InterfaceError)


def database_unavailable() -> DatabaseUnavailable:
    return DatabaseUnavailable("the database is unavailable right now; try again shortly", retry_after=5)
