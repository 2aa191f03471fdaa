from __future__ import annotations

import uuid
from datetime import datetime

from django.conf import settings
from django.core.validators import MaxValueValidator
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

    # An assistant reply in one of these states is left out of the history a
    # model sees: a failed answer, or one not finished. A cancelled reply's
    # partial text stays, as the user saw it.
    HISTORY_EXCLUDED_STATUSES = (Status.FAILED, Status.QUEUED, Status.STREAMING)

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages")
    # A conversation is a tree: each message answers or follows its parent (None for the
    # first). A regenerated answer is a sibling of the old one, an edited message a sibling
    # of the message it replaces; a branch is a message with all its ancestors
    # (conversations.branches), and a reply's history is its own branch. No foreign key
    # constraint in the database: its check (a trigger per inserted row) cost the OpenAI
    # API's one-statement insert about 30 us per message, 250 us for a request of eight
    # (bench/chat_insert_cost.py); a parent is always a message of the same conversation,
    # set by this code, and deleting one deletes its children (on_delete, in Django).
    parent = models.ForeignKey(
        "self",
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="children",
        db_constraint=False,
    )
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

    @classmethod
    def in_history(cls) -> models.Q:
        """Which of a reply's ancestors the model sees (its branch, less failed and unfinished
        replies)."""
        return ~models.Q(role=cls.Role.ASSISTANT, status__in=cls.HISTORY_EXCLUDED_STATUSES)


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
        # An operator's actions on a failed job (the admin's "retry" and "mark resolved").
        INFERENCE_REQUEUED = "inference_requeued"
        FAILURE_RESOLVED = "failure_resolved"
        # The reconciler acted on a stuck job (payload: action, reason, attempt).
        JOB_RECONCILED = "job_reconciled"

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
    # The priority (0 lowest - 9 highest) of this key's jobs when a request names none.
    default_priority = models.PositiveSmallIntegerField(
        default=5, validators=[MaxValueValidator(9)], help_text="0 (lowest) to 9 (highest)"
    )

    class Meta:
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user})"


class InferenceJob(TimestampedModel):
    """The work of producing one assistant message.

    ``attempts`` counts claims by workers: a redelivered message claims again,
    and only the holder of the latest attempt may write the answer. (The table
    keeps the name it had when jobs lived in the ``inference`` app.)
    """

    class State(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELLED = "cancelled"

    class ErrorKind(models.TextChoices):
        """What an attempt failed of: the admin filters failures by it, metrics count by it."""

        PERMANENT = "permanent", "engine error (permanent)"
        TRANSIENT = "transient", "engine error (transient)"
        TIMEOUT = "timeout", "time limit"
        STREAM = "stream", "lost Redis while streaming"
        WORKER_LOST = "worker_lost", "worker lost"
        SHUTDOWN = "shutdown", "worker shut down"
        QUEUE = "queue", "queue unavailable"
        MISROUTED = "misrouted", "wrong model's worker"
        INTERNAL = "internal", "internal error"

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
    error_kind = models.CharField(max_length=16, choices=ErrorKind.choices, blank=True)
    # When it last failed for good (kept when an operator retries it: the admin's
    # failures list shows what happened since) and when an operator closed it.
    failed_at = models.DateTimeField(null=True, blank=True, db_index=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    correlation_id = models.UUIDField(default=uuid.uuid4, db_index=True)
    cancel_requested = models.BooleanField(default=False)
    worker = models.CharField(max_length=200, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "inference_inferencejob"
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"job #{self.pk} {self.model} ({self.state})"

    @property
    def conversation_id(self) -> int:
        return self.message.conversation_id

    @classmethod
    def claimable(cls, *, stale_before: datetime) -> models.Q:
        """Jobs a delivery may take for one more attempt: queued, or running since before
        ``stale_before`` (their worker died: the broker redelivers only after the
        visibility timeout, which is longer); under the attempt cap; not cancelled."""
        return (
            (
                models.Q(state=cls.State.QUEUED)
                | models.Q(state=cls.State.RUNNING, started_at__lt=stale_before)
            )
            & models.Q(attempts__lt=models.F("max_attempts"))
            & models.Q(cancel_requested=False)
        )

    @classmethod
    def held(cls, *, attempt: int) -> models.Q:
        """The job still belongs to ``attempt``: running, and no later claim took it over."""
        return models.Q(state=cls.State.RUNNING, attempts=attempt)


class JobFailure(InferenceJob):
    """Jobs that failed for good at least once, for the admin's failures list (a proxy:
    the same rows as ``InferenceJob``)."""

    class Meta:
        proxy = True
        verbose_name = "failure"
        ordering = ["-failed_at", "-id"]
