"""Output shapes shared by the REST APIs (jobs appear in several responses)."""

from __future__ import annotations

from rest_framework import serializers

from inference.models import InferenceJob


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
