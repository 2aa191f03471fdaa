"""REST API for conversations, messages, jobs and models: thin views over services and selectors."""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.validators import ProhibitNullCharactersValidator
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    extend_schema,
    extend_schema_field,
    extend_schema_serializer,
    inline_serializer,
)
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.validators import ProhibitSurrogateCharactersValidator
from rest_framework.views import APIView

import conversations.openapi  # noqa: F401  (registers the API key scheme for the schema)
from conversations import selectors, services
from conversations.authentication import KeyGrant
from conversations.dispatch import job_cancel
from conversations.serializers import (
    ConversationOutputSerializer,
    JobOutputSerializer,
    MessageOutputSerializer,
    websocket_path,
)
from inference import registry
from inference.params import MAX_STOP_SEQUENCES
from llmproject.openapi import RETRY_AFTER, error_responses
from llmproject.pagination import PageNumberPagination
from llmproject.throttling import token_cost, tokens_charge


@extend_schema_field(
    {
        "oneOf": [
            {"type": "string"},
            {"type": "array", "items": {"type": "string"}, "maxItems": MAX_STOP_SEQUENCES},
        ]
    }
)
class StopField(serializers.Field):
    """``stop`` is a string or a list of strings, as in OpenAI's API; text only, as
    DRF's ``CharField`` takes it (no lone surrogate, no NUL: PostgreSQL's jsonb
    refuses both)."""

    default_error_messages = {"invalid": "must be a string or a list of strings"}
    _text_validators = (ProhibitNullCharactersValidator(), ProhibitSurrogateCharactersValidator())

    def to_internal_value(self, data: object) -> list[str]:
        strings = [data] if isinstance(data, str) else data
        if not isinstance(strings, list) or not all(isinstance(s, str) for s in strings):
            self.fail("invalid")
        for string in strings:
            for validate in self._text_validators:
                try:
                    validate(string)
                except DjangoValidationError as exc:
                    raise serializers.ValidationError(exc.messages) from None
        return strings

    def to_representation(self, value: list[str]) -> list[str]:
        return value


# Nested serializers are all called InputSerializer or OutputSerializer: each gets a
# component name of its own, or drf-spectacular documents one operation with another's body.


class ConversationListCreateApi(APIView):
    # Paginated by hand below; declared so that the schema documents the page.
    pagination_class = PageNumberPagination

    @extend_schema_serializer(component_name="ConversationCreateInput")
    class InputSerializer(serializers.Serializer):
        title = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
        model = serializers.CharField(max_length=100, required=False)

    @extend_schema(responses={200: ConversationOutputSerializer(many=True), **error_responses(404)})
    def get(self, request: Request) -> Response:
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(
            selectors.conversation_list(owner=request.user), request, view=self
        )
        return paginator.get_paginated_response(ConversationOutputSerializer(page, many=True).data)

    @extend_schema(
        request=InputSerializer, responses={201: ConversationOutputSerializer, **error_responses(400)}
    )
    def post(self, request: Request) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        conversation = services.conversation_create(owner=request.user, **serializer.validated_data)
        return Response(ConversationOutputSerializer(conversation).data, status=status.HTTP_201_CREATED)


class ConversationDetailApi(APIView):
    @extend_schema_serializer(component_name="ConversationUpdateInput")
    class InputSerializer(serializers.Serializer):
        title = serializers.CharField(max_length=200, required=False, allow_blank=True)
        model = serializers.CharField(max_length=100, required=False)

    @extend_schema(responses={200: ConversationOutputSerializer, **error_responses(404)})
    def get(self, request: Request, conversation_id: int) -> Response:
        conversation = selectors.conversation_get(owner=request.user, conversation_id=conversation_id)
        return Response(ConversationOutputSerializer(conversation).data)

    @extend_schema(
        request=InputSerializer, responses={200: ConversationOutputSerializer, **error_responses(400, 404)}
    )
    def patch(self, request: Request, conversation_id: int) -> Response:
        conversation = selectors.conversation_get(owner=request.user, conversation_id=conversation_id)
        serializer = self.InputSerializer(data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        conversation = services.conversation_update(conversation=conversation, **serializer.validated_data)
        return Response(ConversationOutputSerializer(conversation).data)

    @extend_schema(responses={204: None, **error_responses(404)})
    def delete(self, request: Request, conversation_id: int) -> Response:
        conversation = selectors.conversation_get(owner=request.user, conversation_id=conversation_id)
        services.conversation_delete(conversation=conversation)
        return Response(status=status.HTTP_204_NO_CONTENT)


class MessageListCreateApi(APIView):
    # Paginated by hand below; declared so that the schema documents the page.
    pagination_class = PageNumberPagination

    @extend_schema_serializer(component_name="MessagePostInput")
    class InputSerializer(serializers.Serializer):
        content = serializers.CharField(max_length=settings.LLM_MAX_MESSAGE_CHARS, trim_whitespace=False)
        model = serializers.CharField(max_length=100, required=False)
        max_tokens = serializers.IntegerField(required=False, min_value=1)
        temperature = serializers.FloatField(required=False, min_value=0.0, max_value=2.0)
        top_p = serializers.FloatField(required=False, min_value=0.0, max_value=1.0)
        stop = StopField(required=False)
        seed = serializers.IntegerField(required=False, min_value=0, max_value=2**63 - 1)
        ignore_eos = serializers.BooleanField(required=False, default=False)
        priority = serializers.IntegerField(
            required=False,
            min_value=0,
            max_value=9,
            help_text="0 (lowest) to 9 (highest): the queue's order. Default: the API key's (5).",
        )

        def validate_content(self, value: str) -> str:
            if not value.strip():
                raise serializers.ValidationError("This field may not be blank.")
            return value

    @extend_schema(responses={200: MessageOutputSerializer(many=True), **error_responses(404)})
    def get(self, request: Request, conversation_id: int) -> Response:
        """The conversation's messages, oldest first."""
        conversation = selectors.conversation_get(owner=request.user, conversation_id=conversation_id)
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(
            selectors.message_list(conversation=conversation), request, view=self
        )
        return paginator.get_paginated_response(MessageOutputSerializer(page, many=True).data)

    @extend_schema(
        request=InputSerializer,
        responses={
            202: inline_serializer(
                "MessagePosted",
                {
                    "user_message": MessageOutputSerializer(),
                    "assistant_message": MessageOutputSerializer(),
                    "job": JobOutputSerializer(),
                    "websocket": serializers.CharField(),
                },
            ),
            **error_responses(400, 404, 429, 503),
        },
        parameters=[
            OpenApiParameter(
                "Location",
                OpenApiTypes.URI_REF,
                OpenApiParameter.HEADER,
                response=[202],
                required=True,
                description="The job's URL (`GET` it to follow the job).",
            ),
            RETRY_AFTER,
        ],
    )
    def post(self, request: Request, conversation_id: int) -> Response:
        """Post a user message: its reply is queued as a job, answered by a worker of the
        model and streamed on the conversation's WebSocket."""
        conversation = selectors.conversation_get(owner=request.user, conversation_id=conversation_id)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        content, model = data.pop("content"), data.pop("model", None)
        priority = data.pop("priority", None)
        if priority is None:  # the key's default (a browser session: the middle)
            priority = request.auth.priority if isinstance(request.auth, KeyGrant) else 5
        posted = services.message_post(
            conversation=conversation, content=content, model=model, params=data, priority=priority
        )
        tokens = token_cost(max_tokens=posted.job.params["max_tokens"], text_chars=len(content))
        tokens_charge(user=request.user, tokens=tokens, throttles=self.throttle_classes)
        body = {
            "user_message": MessageOutputSerializer(posted.user_message).data,
            "assistant_message": MessageOutputSerializer(posted.assistant_message).data,
            "job": JobOutputSerializer(posted.job).data,
            "websocket": websocket_path(conversation.pk),
        }
        location = reverse("job-detail", kwargs={"job_id": posted.job.pk})
        return Response(body, status=status.HTTP_202_ACCEPTED, headers={"Location": location})


class JobDetailApi(APIView):
    @extend_schema(responses={200: JobOutputSerializer, **error_responses(404)})
    def get(self, request: Request, job_id: int) -> Response:
        job = selectors.job_get(owner=request.user, job_id=job_id)
        return Response(JobOutputSerializer(job).data)


class JobCancelApi(APIView):
    @extend_schema(request=None, responses={202: JobOutputSerializer, **error_responses(404, 409)})
    def post(self, request: Request, job_id: int) -> Response:
        """Stop the job: a queued one never starts, a running one stops within one engine
        step and keeps its partial answer. 409 if it already finished."""
        job = job_cancel(job=selectors.job_get(owner=request.user, job_id=job_id))
        return Response(JobOutputSerializer(job).data, status=status.HTTP_202_ACCEPTED)


class ModelListApi(APIView):
    @extend_schema_serializer(component_name="ModelOutput")
    class OutputSerializer(serializers.Serializer):  # type: ignore[type-arg]
        name = serializers.CharField()
        engine = serializers.CharField()
        description = serializers.CharField()
        queue = serializers.CharField()
        max_model_len = serializers.IntegerField()
        default_max_tokens = serializers.IntegerField()

    @extend_schema(responses={200: OutputSerializer(many=True), **error_responses()})
    def get(self, request: Request) -> Response:
        specs = sorted(registry.models().values(), key=lambda s: s.name)
        return Response(self.OutputSerializer(specs, many=True).data)
