"""Output shapes of the REST API: conversations, messages, jobs (in several responses each)."""

from __future__ import annotations

from rest_framework import serializers

from conversations.models import Conversation, InferenceJob, Message
from conversations.selectors import job_queue_position


class JobOutputSerializer(serializers.ModelSerializer):
    message_id = serializers.IntegerField(read_only=True)
    conversation_id = serializers.IntegerField(source="message.conversation_id", read_only=True)
    queue_position = serializers.SerializerMethodField(
        help_text=(
            "While queued: 1 + the jobs of the same model that a worker takes before this one "
            "(higher priority, or the same and older); running jobs are not counted. null once "
            "it has started."
        )
    )

    class Meta:
        model = InferenceJob
        fields = [
            "id",
            "message_id",
            "conversation_id",
            "model",
            "queue",
            "state",
            "queue_position",
            "attempts",
            "max_attempts",
            "priority",
            "params",
            "last_error",
            "cancel_requested",
            "correlation_id",
            "celery_task_id",
            "created_at",
            "started_at",
            "finished_at",
        ]
        read_only_fields = fields

    def get_queue_position(self, obj: InferenceJob) -> int | None:
        return job_queue_position(job=obj)


def websocket_path(conversation_id: int) -> str:
    return f"/ws/conversations/{conversation_id}/"


class ConversationOutputSerializer(serializers.ModelSerializer):
    websocket = serializers.SerializerMethodField()

    class Meta:
        model = Conversation
        fields = ["id", "title", "model", "created_at", "updated_at", "websocket"]

    def get_websocket(self, obj: Conversation) -> str:
        return websocket_path(obj.pk)


class MessageOutputSerializer(serializers.ModelSerializer):
    conversation_id = serializers.IntegerField(read_only=True)
    parent_id = serializers.IntegerField(
        read_only=True,
        allow_null=True,
        help_text="The message this one follows (null: the first of its branch). Siblings share it.",
    )
    job_id = serializers.SerializerMethodField()

    class Meta:
        model = Message
        fields = [
            "id",
            "conversation_id",
            "parent_id",
            "role",
            "content",
            "status",
            "model",
            "error",
            "finish_reason",
            "prompt_tokens",
            "completion_tokens",
            "job_id",
            "created_at",
            "queued_at",
            "started_at",
            "first_token_at",
            "finished_at",
        ]

    def get_job_id(self, obj: Message) -> int | None:
        job = getattr(obj, "job", None) if obj.role == Message.Role.ASSISTANT else None
        return job.pk if job is not None else None
