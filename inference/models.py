from __future__ import annotations

import uuid

from django.db import models

from conversations.models import Message
from llmproject.models import TimestampedModel


class InferenceJob(TimestampedModel):
    """The work of producing one assistant message.

    ``attempts`` counts claims by workers: a redelivered message claims again,
    and only the holder of the latest attempt may write the answer.
    """

    class State(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELLED = "cancelled"

    FINAL_STATES = (State.SUCCEEDED, State.FAILED, State.CANCELLED)

    message = models.OneToOneField(Message, on_delete=models.CASCADE, related_name="job")
    model = models.CharField(max_length=100)
    queue = models.CharField(max_length=120)
    params = models.JSONField(default=dict, blank=True)
    priority = models.PositiveSmallIntegerField(default=5)
    state = models.CharField(max_length=16, choices=State.choices, default=State.QUEUED, db_index=True)
    attempts = models.PositiveIntegerField(default=0)
    max_attempts = models.PositiveIntegerField(default=3)
    celery_task_id = models.CharField(max_length=64, blank=True, db_index=True)
    last_error = models.TextField(blank=True)
    correlation_id = models.UUIDField(default=uuid.uuid4, db_index=True)
    cancel_requested = models.BooleanField(default=False)
    worker = models.CharField(max_length=200, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"job #{self.pk} {self.model} ({self.state})"

    @property
    def conversation_id(self) -> int:
        return self.message.conversation_id
