"""The REST API's error responses in the OpenAPI schema: the body that
``llmproject.exception_handler`` writes, and the statuses views document with it."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, OpenApiResponse
from rest_framework import serializers


class ErrorSerializer(serializers.Serializer):
    """The body of every error of the REST API (``llmproject.exception_handler``)."""

    detail = serializers.CharField(help_text="What went wrong; for invalid input, the field first.")
    code = serializers.CharField(
        help_text="Machine-readable: `invalid`, `not_found`, `not_authenticated`, `job_finished`, ..."
    )
    field = serializers.CharField(
        required=False, allow_null=True, help_text="The field at fault, if one is (400)."
    )
    errors = serializers.JSONField(
        required=False, help_text="Every validation error, by field, as DRF reports them (400)."
    )


_ERRORS = {
    400: "Invalid input: `detail` and `field` name the first field at fault.",
    401: "No API key nor session, or an unknown or revoked key.",
    404: "No such object among the caller's (someone else's is not found either), or no such page.",
    409: "The object's state does not allow this (the job has already finished).",
    429: "The model's queue is full (`overloaded`), or a rate limit refused the request (`throttled`); "
    "nothing was queued. Retry after `Retry-After`.",
    503: "The job queue or the database cannot be reached now, or the model is failing (its circuit "
    "breaker is open: `model_unavailable`); nothing was queued. Retry after `Retry-After`.",
}


def error_responses(*statuses: int) -> dict[int, OpenApiResponse]:
    """The documented errors of an operation: 401 (every one needs a key or a session),
    then ``statuses``, each with the error body."""
    return {
        status: OpenApiResponse(ErrorSerializer, description=_ERRORS[status]) for status in (401, *statuses)
    }


RETRY_AFTER = OpenApiParameter(
    "Retry-After",
    int,
    OpenApiParameter.HEADER,
    response=[429, 503],
    required=True,
    description="Seconds to wait before trying again.",
)
