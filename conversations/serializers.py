"""Output shapes of the REST API: conversations, messages, jobs (in several responses each)."""

from __future__ import annotations

from rest_framework import serializers

from conversations.models import Conversation, InferenceJob, Message


class JobOutputSerializer(serializers.ModelSerializer):
    message_id = serializers.IntegerField(read_only=True)
    conversation_id = serializers.IntegerField(source="message.conversation_id", read_only=True)

    class Meta:
        model = InferenceJob
        fields = [
            "id",
            "message_id",
            "conversation_id",
            "model",
            "queue",
            "state",
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
    job_id = serializers.SerializerMethodField()

    class Meta:
        model = Message
        fields = [
            "id",
            "conversation_id",
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
