"""REST API for conversations, messages, jobs and models: thin views over services and selectors."""

from __future__ import annotations

from typing import Any, Literal

from asgiref.sync import async_to_sync
from django.conf import settings
from django.urls import reverse
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from conversations import selectors, services
from conversations.dispatch import job_cancel
from conversations.models import Message
from conversations.serializers import (
    ConversationOutputSerializer,
    JobOutputSerializer,
    MessageOutputSerializer,
    websocket_path,
)
from inference import liveness, registry
from llmproject.exceptions import InvalidInput
from llmproject.pagination import PageNumberPagination


class StopField(serializers.Field):
    """``stop`` is a string or a list of strings, as in OpenAI's API."""

    default_error_messages = {"invalid": "must be a string or a list of strings"}

    def to_internal_value(self, data: object) -> list[str]:
        if isinstance(data, str):
            return [data]
        if isinstance(data, list) and all(isinstance(s, str) for s in data):
            return data
        self.fail("invalid")

    def to_representation(self, value: list[str]) -> list[str]:
        return value


class GenerationInputSerializer(serializers.Serializer):
    """How to answer: the model and sampling parameters of a reply's job."""

    model = serializers.CharField(max_length=100, required=False)
    max_tokens = serializers.IntegerField(required=False, min_value=1)
    temperature = serializers.FloatField(required=False, min_value=0.0, max_value=2.0)
    top_p = serializers.FloatField(required=False, min_value=0.0, max_value=1.0)
    stop = StopField(required=False)
    seed = serializers.IntegerField(required=False, min_value=0, max_value=2**63 - 1)
    ignore_eos = serializers.BooleanField(required=False, default=False)
    priority = serializers.IntegerField(required=False, min_value=0, max_value=9, default=5)


def _generation(validated: dict[str, Any]) -> dict[str, Any]:
    """A generation serializer's data as the services take it: model, params, priority."""
    params = dict(validated)
    return {"model": params.pop("model", None), "priority": params.pop("priority"), "params": params}


class ConversationListCreateApi(APIView):
    class InputSerializer(serializers.Serializer):
        title = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
        model = serializers.CharField(max_length=100, required=False)

    @extend_schema(
        responses=ConversationOutputSerializer(many=True),
        parameters=[
            OpenApiParameter(
                "search", str, description="Only conversations whose title or messages contain this text."
            )
        ],
    )
    def get(self, request: Request) -> Response:
        """The caller's conversations, most recently active first."""
        paginator = PageNumberPagination()
        conversations = selectors.conversation_list(
            owner=request.user, search=request.query_params.get("search", "")
        )
        page = paginator.paginate_queryset(conversations, request, view=self)
        return paginator.get_paginated_response(ConversationOutputSerializer(page, many=True).data)

    @extend_schema(request=InputSerializer, responses={201: ConversationOutputSerializer})
    def post(self, request: Request) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        conversation = services.conversation_create(owner=request.user, **serializer.validated_data)
        return Response(ConversationOutputSerializer(conversation).data, status=status.HTTP_201_CREATED)


class ConversationDetailApi(APIView):
    class InputSerializer(serializers.Serializer):
        title = serializers.CharField(max_length=200, required=False, allow_blank=True)
        model = serializers.CharField(max_length=100, required=False)

    @extend_schema(responses=ConversationOutputSerializer)
    def get(self, request: Request, conversation_id: int) -> Response:
        conversation = selectors.conversation_get(owner=request.user, conversation_id=conversation_id)
        return Response(ConversationOutputSerializer(conversation).data)

    @extend_schema(request=InputSerializer, responses=ConversationOutputSerializer)
    def patch(self, request: Request, conversation_id: int) -> Response:
        conversation = selectors.conversation_get(owner=request.user, conversation_id=conversation_id)
        serializer = self.InputSerializer(data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        conversation = services.conversation_update(conversation=conversation, **serializer.validated_data)
        return Response(ConversationOutputSerializer(conversation).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, conversation_id: int) -> Response:
        conversation = selectors.conversation_get(owner=request.user, conversation_id=conversation_id)
        services.conversation_delete(conversation=conversation)
        return Response(status=status.HTTP_204_NO_CONTENT)


class MessageListCreateApi(APIView):
    class InputSerializer(GenerationInputSerializer):
        content = serializers.CharField(max_length=settings.LLM_MAX_MESSAGE_CHARS, trim_whitespace=False)
        parent = serializers.IntegerField(
            required=False,
            allow_null=True,
            help_text=(
                "The message this one follows, in this conversation: to edit a message, post the "
                "new text with the old one's parent. null starts the conversation anew (edits its "
                "first message). Left out: the conversation's latest message."
            ),
        )

        def validate_content(self, value: str) -> str:
            if not value.strip():
                raise serializers.ValidationError("This field may not be blank.")
            return value

    @extend_schema(
        responses=MessageOutputSerializer(many=True),
        parameters=[
            OpenApiParameter(
                "leaf",
                int,
                description=(
                    "Only this message's branch: it and its ancestors, oldest first (the history "
                    "its model is given, if it is a reply)."
                ),
            )
        ],
    )
    def get(self, request: Request, conversation_id: int) -> Response:
        """The conversation's messages, oldest first: every branch, each message with its
        ``parent_id``, or one branch with ``?leaf=``."""
        conversation = selectors.conversation_get(owner=request.user, conversation_id=conversation_id)
        messages = selectors.message_list(conversation=conversation)
        if "leaf" in request.query_params:
            leaf = selectors.message_get(
                conversation=conversation, message_id=_int_param(request, "leaf"), field="leaf"
            )
            messages = selectors.message_branch(conversation=conversation, leaf=leaf)
        paginator = PageNumberPagination()
        page = paginator.paginate_queryset(messages, request, view=self)
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
            )
        },
    )
    def post(self, request: Request, conversation_id: int) -> Response:
        """Post a user message; its reply is queued as a job (``202``)."""
        conversation = selectors.conversation_get(owner=request.user, conversation_id=conversation_id)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        content = data.pop("content")
        parent: Message | Literal["latest"] | None = services.LATEST
        if "parent" in data:
            parent_id = data.pop("parent")
            parent = (
                None
                if parent_id is None
                else selectors.message_get(conversation=conversation, message_id=parent_id, field="parent")
            )
        posted = services.message_post(
            conversation=conversation, content=content, parent=parent, **_generation(data)
        )
        body = {
            "user_message": MessageOutputSerializer(posted.user_message).data,
            "assistant_message": MessageOutputSerializer(posted.assistant_message).data,
            "job": JobOutputSerializer(posted.job).data,
            "websocket": websocket_path(conversation.pk),
        }
        location = reverse("job-detail", kwargs={"job_id": posted.job.pk})
        return Response(body, status=status.HTTP_202_ACCEPTED, headers={"Location": location})


class MessageRegenerateApi(APIView):
    @extend_schema(
        request=GenerationInputSerializer,
        responses={
            202: inline_serializer(
                "MessageRegenerated",
                {
                    "assistant_message": MessageOutputSerializer(),
                    "job": JobOutputSerializer(),
                    "websocket": serializers.CharField(),
                },
            )
        },
    )
    def post(self, request: Request, conversation_id: int, message_id: int) -> Response:
        """Answer again: a new reply to the message this answer replies to, beside it (a
        sibling, with the same history), queued as a job (``202``). The old answer stays.
        400 if the message is not an answer."""
        conversation = selectors.conversation_get(owner=request.user, conversation_id=conversation_id)
        reply = selectors.message_get(conversation=conversation, message_id=message_id)
        serializer = GenerationInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        regenerated = services.message_regenerate(reply=reply, **_generation(serializer.validated_data))
        body = {
            "assistant_message": MessageOutputSerializer(regenerated.assistant_message).data,
            "job": JobOutputSerializer(regenerated.job).data,
            "websocket": websocket_path(conversation.pk),
        }
        location = reverse("job-detail", kwargs={"job_id": regenerated.job.pk})
        return Response(body, status=status.HTTP_202_ACCEPTED, headers={"Location": location})


def _int_param(request: Request, name: str) -> int:
    try:
        return int(request.query_params[name])
    except ValueError:
        raise InvalidInput(f"{name} must be an integer", field=name) from None


class JobDetailApi(APIView):
    @extend_schema(responses=JobOutputSerializer)
    def get(self, request: Request, job_id: int) -> Response:
        job = selectors.job_get(owner=request.user, job_id=job_id)
        return Response(JobOutputSerializer(job).data)


class JobCancelApi(APIView):
    @extend_schema(request=None, responses=JobOutputSerializer)
    def post(self, request: Request, job_id: int) -> Response:
        """Stop the job: a queued one never starts, a running one stops within one engine
        step and keeps its partial answer. 409 if it already finished."""
        job = job_cancel(job=selectors.job_get(owner=request.user, job_id=job_id))
        return Response(JobOutputSerializer(job).data, status=status.HTTP_202_ACCEPTED)


class ModelListApi(APIView):
    class OutputSerializer(serializers.Serializer):  # type: ignore[type-arg]
        name = serializers.CharField()
        engine = serializers.CharField()
        description = serializers.CharField()
        queue = serializers.CharField()
        max_model_len = serializers.IntegerField()
        default_max_tokens = serializers.IntegerField()
        live_workers = serializers.IntegerField(
            allow_null=True,
            help_text=(
                "Workers serving the model now (their heartbeat is recent); 0: its jobs wait in "
                "the queue until one starts. null: unknown (Redis did not answer)."
            ),
        )

    @extend_schema(responses=OutputSerializer(many=True))
    def get(self, request: Request) -> Response:
        """The registry's models, with how many workers serve each right now."""
        specs = sorted(registry.models().values(), key=lambda s: s.name)
        alive = async_to_sync(liveness.workers_alive_by_model)(models=[spec.name for spec in specs])
        rows = [
            {
                **{f: getattr(spec, f) for f in self.OutputSerializer().fields if f != "live_workers"},
                "live_workers": alive.get(spec.name),
            }
            for spec in specs
        ]
        return Response(self.OutputSerializer(rows, many=True).data)
