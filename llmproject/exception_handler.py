"""Map errors to JSON responses: ``{"detail": ..., "code": ..., "field": ...}``.

DRF's validation errors keep their per-field shape but gain a ``detail`` line
naming the first offending field, so a person reading the body sees at once
what to fix. The database being unreachable is a 503 with ``Retry-After``.
Errors Django answers before or around a DRF view (an unknown URL, a body
over the size limit) take the same shape through ``error_response``
(``llmproject.error_views``).
"""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import PermissionDenied
from django.http import Http404, JsonResponse
from rest_framework import exceptions as drf_exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from llmproject.exceptions import DATABASE_UNAVAILABLE_ERRORS, ApplicationError, database_unavailable

logger = logging.getLogger(__name__)


def error_response(
    message: str, *, status: int, code: str | None = None, retry_after: int | None = None
) -> JsonResponse:
    """The REST API's error shape, for errors answered outside DRF's views."""
    response = JsonResponse({"detail": message, "code": code or "error"}, status=status)
    if retry_after:
        response["Retry-After"] = str(retry_after)
    return response


def first_error(errors: Any, path: str = "") -> tuple[str, str]:
    """Return (field path, message) of the first error in a DRF error tree."""
    if isinstance(errors, dict):
        for key, value in errors.items():
            sub = key if not path else f"{path}.{key}"
            if key == "non_field_errors":
                sub = path
            return first_error(value, sub)
    if isinstance(errors, list) and errors:
        if all(not isinstance(e, dict | list) for e in errors):
            return path, str(errors[0])
        for index, value in enumerate(errors):
            if value:
                return first_error(value, f"{path}[{index}]")
    return path, str(errors)


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, DATABASE_UNAVAILABLE_ERRORS):
        logger.warning("database unavailable: %s: %s", type(exc).__name__, exc)
        exc = database_unavailable()
    if isinstance(exc, ApplicationError):
        body: dict[str, Any] = {"detail": exc.message, "code": exc.code}
        if exc.field:
            body["field"] = exc.field
        body.update(exc.extra)
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
        return Response(body, status=exc.status_code, headers=headers)

    if isinstance(exc, Http404):
        exc = drf_exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = drf_exceptions.PermissionDenied()

    if isinstance(exc, drf_exceptions.ValidationError):
        field, message = first_error(exc.detail)
        body = {
            "detail": f"{field}: {message}" if field else message,
            "code": "invalid",
            "field": field or None,
            "errors": exc.detail,
        }
        return Response(body, status=400)

    response = drf_exception_handler(exc, context)
    if response is not None and isinstance(exc, drf_exceptions.APIException):
        codes = exc.get_codes()
        response.data = {
            "detail": response.data.get("detail", str(exc)) if isinstance(response.data, dict) else str(exc),
            "code": codes if isinstance(codes, str) else "error",
        }
    return response
