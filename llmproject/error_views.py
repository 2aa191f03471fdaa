"""The errors Django answers itself, in the JSON shape of the API they happen under.

An unknown URL (404), a request Django refuses (400, and 413 for a body over
``DATA_UPLOAD_MAX_MEMORY_SIZE``), a refused permission (403) and an uncaught
exception (500; 503 when the database is unreachable) come from Django's
handlers, not from a view: without these, ``/api/`` and ``/v1/`` answer them
with an HTML page. ``settings.API_ERROR_RESPONSES`` maps a path prefix to the
function that writes that API's errors (``openai_api.errors.error_response``
for ``/v1/``), named by dotted path as DRF's ``EXCEPTION_HANDLER`` is, so this
ground layer imports no app. Other paths (the admin) keep Django's pages.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse
from django.utils.module_loading import import_string
from django.views import defaults

from llmproject.exceptions import DATABASE_UNAVAILABLE_ERRORS, database_unavailable

logger = logging.getLogger(__name__)

Responder = Callable[..., HttpResponse]


@functools.cache
def _responders() -> tuple[tuple[str, Responder], ...]:
    return tuple((prefix, import_string(path)) for prefix, path in settings.API_ERROR_RESPONSES.items())


def api_error_response(
    path: str, message: str, *, status: int, code: str, retry_after: int | None = None
) -> HttpResponse | None:
    """The error in the shape of the API serving ``path``; None if no API serves it."""
    for prefix, respond in _responders():
        if path.startswith(prefix):
            return respond(message, status=status, code=code, retry_after=retry_after)
    return None


def too_large_message() -> str:
    return f"the request body is over the limit of {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes"


def too_large_response(path: str) -> HttpResponse:
    return api_error_response(
        path, too_large_message(), status=413, code="request_too_large"
    ) or HttpResponse("413 Payload too large", status=413)


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    if isinstance(exception, RequestDataTooBig):
        return too_large_response(request.path)
    response = api_error_response(request.path, "bad request", status=400, code="bad_request")
    return response or defaults.bad_request(request, exception)


def permission_denied(request: HttpRequest, exception: Exception) -> HttpResponse:
    response = api_error_response(request.path, "permission denied", status=403, code="permission_denied")
    return response or defaults.permission_denied(request, exception)


def page_not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    # OpenAI's words for it: "Invalid URL (POST /v1/foo)".
    message = f"Invalid URL ({request.method} {request.path})"
    response = api_error_response(request.path, message, status=404, code="not_found")
    return response or defaults.page_not_found(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    # Called inside Django's ``except`` block: the exception is the one being handled.
    if isinstance(sys.exc_info()[1], DATABASE_UNAVAILABLE_ERRORS):
        unavailable = database_unavailable()
        response = api_error_response(
            request.path,
            unavailable.message,
            status=unavailable.status_code,
            code=unavailable.code,
            retry_after=unavailable.retry_after,
        )
    else:
        response = api_error_response(
            request.path, "the server failed to answer this request", status=500, code="internal_error"
        )
    return response or defaults.server_error(request)
