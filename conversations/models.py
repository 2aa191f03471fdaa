from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models

from llmproject.models import TimestampedModel


class Conversation(TimestampedModel):
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations"
    )
    title = models.CharField(max_length=200, blank=True)
    model = models.CharField(max_length=100, help_text="Default model for new messages.")

    class Meta:
        ordering = ["-updated_at", "-id"]
        indexes = [models.Index(fields=["owner", "-updated_at"])]

    def __str__(self) -> str:
        return self.title or f"Conversation {self.pk}"

    @property
    def group_name(self) -> str:
        """The channel-layer group its WebSocket clients join."""
        return f"conversation.{self.pk}"


class Message(TimestampedModel):
    class Role(models.TextChoices):
        SYSTEM = "system"
        USER = "user"
        ASSISTANT = "assistant"

    class Status(models.TextChoices):
        QUEUED = "queued"
        STREAMING = "streaming"
        COMPLETED = "completed"
        FAILED = "failed"
        CANCELLED = "cancelled"

    FINAL_STATUSES = (Status.COMPLETED, Status.FAILED, Status.CANCELLED)

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages")
    role = models.CharField(max_length=16, choices=Role.choices)
    content = models.TextField(blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.COMPLETED)
    model = models.CharField(max_length=100, blank=True)
    error = models.TextField(blank=True)
    finish_reason = models.CharField(max_length=16, blank=True)
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    queued_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    first_token_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["conversation", "id"])]

    def __str__(self) -> str:
        return f"{self.role} #{self.pk} ({self.status})"


class ConversationEvent(models.Model):
    """Append-only log of what happened to a conversation.

    Every event of one request (the user's message, its job, its answer)
    shares a ``correlation_id``.
    """

    class Kind(models.TextChoices):
        USER_QUERY_RECEIVED = "user_query_received"
        INFERENCE_QUEUED = "inference_queued"
        INFERENCE_STARTED = "inference_started"
        INFERENCE_RETRYING = "inference_retrying"
        RESPONSE_GENERATED = "response_generated"
        INFERENCE_FAILED = "inference_failed"
        INFERENCE_CANCELLED = "inference_cancelled"

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="events")
    message = models.ForeignKey(
        Message, on_delete=models.SET_NULL, null=True, blank=True, related_name="events"
    )
    kind = models.CharField(max_length=32, choices=Kind.choices)
    correlation_id = models.UUIDField(db_index=True)
    payload = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.kind} ({self.correlation_id})"

    def save(self, *args: object, **kwargs: object) -> None:
        if not self._state.adding:
            raise ValueError("conversation events are append-only")
        super().save(*args, **kwargs)  # type: ignore[arg-type]


class ApiKey(models.Model):
    """A bearer key for API clients. Only a SHA-256 of the secret is stored."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=16, unique=True)
    key_hash = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user})"


def new_correlation_id() -> uuid.UUID:
    return uuid.uuid4()
