"""The OpenAI-compatible API (``/v1/``) in the OpenAPI schema.

Its routes are plain async Django views, kept free of DRF because they are the
hot path (``openai_api.views``), and drf-spectacular documents DRF views only
(tfranzel/drf-spectacular#931). So ``add_openai_endpoints``, a preprocessing
hook (``SPECTACULAR_SETTINGS``), adds them to the endpoints it documents, at
their paths in the URLconf, each with a DRF view of this module that carries
its schema and nothing else: no request is ever routed to one.

The request body is the pydantic model the views validate with (drf-spectacular
renders pydantic models); the response models below exist for the schema only
(``openai_api.responses`` and ``openai_api.errors`` build the bodies), so
tests/openai_api/test_schema.py checks real responses against them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated, Any, Literal, NotRequired, get_args

from django.urls import URLPattern, URLResolver
from drf_spectacular.generators import EndpointEnumerator
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from pydantic import BaseModel, Field, RootModel
from rest_framework.parsers import JSONParser
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12

import conversations.openapi  # noqa: F401  (registers the API key scheme)
from conversations.authentication import ApiKeyAuthentication
from llmproject.openapi import RETRY_AFTER
from openai_api import views
from openai_api.protocol import ChatCompletionBody

TAG = "openai"

# --- Response bodies ---------------------------------------------------------


class ModelObject(BaseModel):
    id: str = Field(description="The model's name in the registry.")
    object: Literal["model"]
    created: int
    owned_by: str
    max_model_len: int = Field(description="The model's context window, in tokens (ours).")


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelObject]


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


_FINISH_REASON = "`stop`, `length`, or `abort` (the job was cancelled)."


class ChatCompletionMessage(BaseModel):
    role: Literal["assistant"]
    content: str


class ChatCompletionChoice(BaseModel):
    index: int
    message: ChatCompletionMessage
    logprobs: None
    finish_reason: str = Field(description=_FINISH_REASON)


class ChatCompletion(BaseModel):
    id: str = Field(description="`chatcmpl-<job id>`: `GET /api/jobs/<job id>/` leads to the stored answer.")
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatCompletionChoice] = Field(min_length=1, max_length=1)
    usage: CompletionUsage


# Chunks leave members out (``role`` but in the first, ``usage`` but in the last):
# TypedDicts say which, where a BaseModel's schema would give them a default.
class ChatCompletionChunkDelta(TypedDict, total=False):
    """The first chunk carries `role`; the last one (with `finish_reason`) is empty."""

    role: Literal["assistant"]
    content: str


class ChatCompletionChunkChoice(BaseModel):
    index: int
    delta: ChatCompletionChunkDelta
    logprobs: None
    finish_reason: str | None = Field(description=f"In the last chunk: {_FINISH_REASON}")


class ChatCompletionChunk(TypedDict):
    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: Annotated[
        list[ChatCompletionChunkChoice],
        Field(max_length=1, description="Empty in the usage chunk, the one before `[DONE]`."),
    ]
    usage: NotRequired[
        Annotated[
            CompletionUsage, Field(description="In the usage chunk only (`stream_options.include_usage`).")
        ]
    ]


ErrorType = Literal["invalid_request_error", "rate_limit_error", "server_error"]
# Named in ENUM_NAME_OVERRIDES: drf-spectacular would call the enum after its field, "TypeEnum".
ERROR_TYPES = get_args(ErrorType)


class OpenAIErrorDetail(BaseModel):
    message: str
    type: ErrorType
    param: str | None = Field(description="The parameter at fault (`messages.0.role`), if one is.")
    code: str | None


class OpenAIError(BaseModel):
    error: OpenAIErrorDetail


class ChatCompletionStreamEvent(RootModel[ChatCompletionChunk | OpenAIError]):
    """The data of one server-sent event: a chunk, or the error that ends the stream."""


# --- Operations ----------------------------------------------------------------

_ERRORS = {
    400: "Invalid parameter (`param` names it; `invalid_value`), a body that is not JSON "
    "(`invalid_json`), or a prompt over the model's context window (`context_length_exceeded`).",
    401: "No API key (`missing_api_key`), or an unknown or revoked one (`invalid_api_key`).",
    404: "Unknown model (`model_not_found`).",
    413: "The body is over `DATA_UPLOAD_MAX_MEMORY_SIZE` (`request_too_large`).",
    415: "The body is declared as something else than JSON (`unsupported_media_type`).",
    429: "The model's queue is full (`overloaded`), or a throttle of `OPENAI_API_THROTTLE_CLASSES` "
    "refused (`rate_limit_exceeded`). Retry after `Retry-After`.",
    500: "The generation failed (`generation_failed`).",
    503: "No live worker serves the model (`no_worker`), the model is failing (its circuit breaker "
    "is open, and no fallback takes it: `model_unavailable`), or the job queue or the database "
    "cannot be reached (`database_unavailable`). Retry after `Retry-After`.",
    504: "No answer within `LLM_JOB_TIME_LIMIT` plus 120 s (`timeout`).",
}


def _errors(*statuses: int) -> dict[int, OpenApiResponse]:
    return {status: OpenApiResponse(OpenAIError, description=_ERRORS[status]) for status in statuses}


_HEADERS = [
    RETRY_AFTER,
    OpenApiParameter("WWW-Authenticate", str, OpenApiParameter.HEADER, response=[401], required=True),
]


class _SchemaOnlyView(APIView):
    """The schema of a view of ``openai_api.views``, which serves the route instead."""

    authentication_classes = [ApiKeyAuthentication]  # no session: API keys only
    parser_classes = [JSONParser]
    renderer_classes = [JSONRenderer]

    def _never(self) -> Response:
        raise AssertionError(f"{type(self).__name__} only documents a route; it serves none")


class ModelListSchema(_SchemaOnlyView):
    @extend_schema(
        tags=[TAG],
        operation_id="v1_models_list",
        summary="List models",
        responses={200: ModelList, **_errors(401)},
        parameters=_HEADERS,
    )
    def get(self, request: Request) -> Response:
        """The models of the registry, as OpenAI lists its models."""
        return self._never()


class ChatCompletionsSchema(_SchemaOnlyView):
    @extend_schema(
        tags=[TAG],
        summary="Create a chat completion",
        request=ChatCompletionBody,
        responses={
            (200, "application/json"): OpenApiResponse(
                ChatCompletion,
                description=(
                    "`stream` false: the whole answer, as a `chat.completion`. `stream: true`: "
                    "server-sent events (`text/event-stream`), each `data: <JSON>` one "
                    "`chat.completion.chunk` (the first carries `role`, the last `finish_reason`, "
                    "then a usage chunk if `stream_options.include_usage`), then `data: [DONE]`. "
                    "A failure mid-stream is an error event in the error shape, then `data: [DONE]`; "
                    "comments (`: keep-alive`) come while nothing else does."
                ),
            ),
            (200, "text/event-stream"): ChatCompletionStreamEvent,
            **_errors(400, 401, 404, 413, 415, 429, 500, 503, 504),
        },
        parameters=_HEADERS,
    )
    def post(self, request: Request) -> Response:
        """OpenAI's chat completion: the request becomes a conversation of the key's owner,
        queued for the model's workers, streamed back and stored.

        Unknown parameters are ignored. Extensions: `ignore_eos` (vLLM's) and
        `continue_on_disconnect` (ours). A client that disconnects aborts the
        generation unless it asked for `continue_on_disconnect`."""
        return self._never()


# --- The preprocessing hook ------------------------------------------------------

_SCHEMAS: dict[Callable[..., Any], type[APIView]] = {
    views.model_list: ModelListSchema,
    views.chat_completions: ChatCompletionsSchema,
}

Endpoint = tuple[str, str, str, Callable[..., Any]]  # path, path regex, method, view


def add_openai_endpoints(endpoints: list[Endpoint]) -> list[Endpoint]:
    """drf-spectacular's preprocessing hook: ``endpoints`` (those of DRF views) and the
    routes of ``openai_api.views`` in the root URLconf, each documented by its schema view."""
    enumerator = EndpointEnumerator()
    added = []
    for route, callback in _routes(enumerator.patterns):
        schema = _SCHEMAS.get(callback)
        if schema is None:
            continue
        schema_view = schema.as_view()
        path = enumerator.get_path_from_regex(route)
        for method in enumerator.get_allowed_methods(schema_view):
            added.append((path, route, method, schema_view))
    return [*endpoints, *added]


def _routes(patterns: list[Any], prefix: str = "") -> Iterator[tuple[str, Callable[..., Any]]]:
    for pattern in patterns:
        route = prefix + str(pattern.pattern)
        if isinstance(pattern, URLResolver):
            yield from _routes(pattern.url_patterns, route)
        elif isinstance(pattern, URLPattern):
            yield route, pattern.callback
