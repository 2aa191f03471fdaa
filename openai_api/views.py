"""The OpenAI-compatible routes: authenticate, hand the request to its handler, answer.

Native async Django views: under ASGI a synchronous iterator would be
buffered whole before the first byte goes out. What a chat completion does is
``openai_api.serving_chat``'s (as vLLM keeps its routes apart from
``serving_chat.py``); errors of the platform are answered in OpenAI's shape
here, in one place.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

from conversations.authentication import KeyGrant, api_key_grant, api_key_grant_cached, bearer_token
from inference import registry
from llmproject.exceptions import (
    DATABASE_UNAVAILABLE_ERRORS,
    ApplicationError,
    NotAuthenticated,
    UnsupportedMediaType,
    database_unavailable,
)
from openai_api.errors import application_error_response, error_response
from openai_api.serving_chat import create_chat_completion

logger = logging.getLogger(__name__)

View = Callable[..., Awaitable[HttpResponse]]


def openai_errors(view: View) -> View:
    """Answer the platform's errors, and the database's being unreachable (503), in
    OpenAI's shape."""

    @functools.wraps(view)
    async def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        try:
            return await view(request, *args, **kwargs)
        except ApplicationError as exc:
            return application_error_response(exc)
        except DATABASE_UNAVAILABLE_ERRORS as exc:
            logger.warning("database unavailable: %s: %s", type(exc).__name__, exc)
            return application_error_response(database_unavailable())

    return wrapper


def allow(method: str) -> Callable[[View], View]:
    """Only ``method``; any other is a 405 in OpenAI's shape (Django's ``require_POST``
    answers with an empty body)."""

    def decorator(view: View) -> View:
        @functools.wraps(view)
        async def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if request.method != method:
                response = error_response(
                    f"method {request.method} is not allowed here; use {method}",
                    status=405,
                    code="method_not_allowed",
                )
                response["Allow"] = method
                return response
            return await view(request, *args, **kwargs)

        return wrapper

    return decorator


def require_json(request: HttpRequest) -> None:
    """Refuse a body declared as anything but JSON (``curl -d`` sends a form). No
    ``Content-Type`` at all is read as JSON, as vLLM's (FastAPI's) server does."""
    kind = request.content_type
    if kind and kind != "application/json" and not kind.endswith("+json"):
        raise UnsupportedMediaType(f"the body must be JSON (Content-Type: application/json), not {kind!r}")


async def authenticate(request: HttpRequest) -> KeyGrant:
    header = request.headers.get("Authorization", "")
    token = bearer_token(header) if header else None
    if token is None:
        raise NotAuthenticated(
            "no API key: send the header 'Authorization: Bearer <api key>'", code="missing_api_key"
        )
    grant = api_key_grant_cached(raw=token) or await sync_to_async(api_key_grant)(raw=token)
    if grant is None:
        raise NotAuthenticated("invalid or revoked API key")
    return grant


@csrf_exempt
@allow("GET")
@openai_errors
async def model_list(request: HttpRequest) -> HttpResponse:
    await authenticate(request)
    specs = sorted(registry.models().values(), key=lambda s: s.name)
    data = [
        {
            "id": spec.name,
            "object": "model",
            "created": 0,
            "owned_by": "llmserve",
            "max_model_len": spec.max_model_len,
        }
        for spec in specs
    ]
    return JsonResponse({"object": "list", "data": data})


@csrf_exempt
@allow("POST")
@openai_errors
async def chat_completions(request: HttpRequest) -> HttpResponse:
    """``POST /v1/chat/completions``: OpenAI's body; ``stream: true`` answers with SSE.

    Extensions: ``ignore_eos`` (vLLM's) and ``continue_on_disconnect`` (keep
    generating, and store the answer, if the client goes away).
    """
    grant = await authenticate(request)
    require_json(request)
    answer = await create_chat_completion(request, user=grant.user, priority=grant.priority)
    if isinstance(answer, HttpResponse):
        return answer
    response = StreamingHttpResponse(answer, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # no proxy buffering of the stream
    return response
