"""OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``.

The platform's ``ApplicationError``s map onto it here, in one place, with the
statuses OpenAI clients act on (the official client raises
``BadRequestError`` for 400, ``AuthenticationError`` for 401,
``NotFoundError`` for 404, ``RateLimitError`` for 429 and retries 429 and 5xx
after ``Retry-After``).
"""

from __future__ import annotations

from typing import Any

from django.http import JsonResponse

from llmproject.exceptions import ApplicationError

# OpenAI's error types by status.
_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
    504: "server_error",
}


def error_body(
    message: str, *, status: int, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {
        "error": {
            "message": message,
            "type": _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error"),
            "param": param,
            "code": code,
        }
    }


def error_response(
    message: str,
    *,
    status: int,
    param: str | None = None,
    code: str | None = None,
    retry_after: int | None = None,
) -> JsonResponse:
    response = JsonResponse(error_body(message, status=status, param=param, code=code), status=status)
    if retry_after:
        response["Retry-After"] = str(retry_after)
    if status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="api"'
    return response


def status_of(exc: ApplicationError) -> int:
    # The registry's "unknown model" is a 400 for the REST API, a 404 here (as OpenAI).
    if exc.code == "model_not_found":
        return 404
    return exc.status_code


def application_error_response(exc: ApplicationError) -> JsonResponse:
    return error_response(
        exc.message, status=status_of(exc), param=exc.field, code=exc.code, retry_after=exc.retry_after
    )
