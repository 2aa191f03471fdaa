"""Reads of conversations, messages and jobs: scoped to their owner for the API, and the
operators' reads for the admin (a job's attempts, a conversation's events, failures)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Count, QuerySet

from conversations.models import Conversation, ConversationEvent, InferenceJob, Message
from llmproject.exceptions import NotFound


def conversation_list(*, owner: AbstractBaseUser) -> QuerySet[Conversation]:
    return Conversation.objects.filter(owner=owner)


def conversation_get(*, owner: AbstractBaseUser, conversation_id: int) -> Conversation:
    """The owner's conversation; someone else's is NotFound, like a missing one."""
    conversation = Conversation.objects.filter(owner=owner, pk=conversation_id).first()
    if conversation is None:
        raise NotFound(f"conversation {conversation_id} not found")
    return conversation


def conversation_owned(*, owner_id: int, conversation_id: int) -> bool:
    return Conversation.objects.filter(owner_id=owner_id, pk=conversation_id).exists()


def message_list(*, conversation: Conversation) -> QuerySet[Message]:
    return conversation.messages.select_related("job").order_by("id")


def job_get(*, owner: AbstractBaseUser, job_id: int) -> InferenceJob:
    job = (
        InferenceJob.objects.select_related("message__conversation")
        .filter(pk=job_id, message__conversation__owner=owner)
        .first()
    )
    if job is None:
        raise NotFound(f"job {job_id} not found")
    return job


def job_get_for_message(*, owner_id: int, conversation_id: int, message_id: int) -> InferenceJob:
    job = (
        InferenceJob.objects.select_related("message")
        .filter(
            message_id=message_id,
            message__conversation_id=conversation_id,
            message__conversation__owner_id=owner_id,
        )
        .first()
    )
    if job is None:
        raise NotFound(f"message {message_id} has no job in this conversation")
    return job


@dataclass
class Attempt:
    """One delivery of a job as the event log tells it."""

    number: int
    worker: str = ""
    started_at: datetime | None = None
    ended_at: datetime | None = None
    outcome: str = "running"
    error: str = ""
    error_kind: str = ""
    traceback: str = ""


_OUTCOMES = {
    ConversationEvent.Kind.INFERENCE_RETRYING: "retried",
    ConversationEvent.Kind.INFERENCE_FAILED: "failed",
    ConversationEvent.Kind.RESPONSE_GENERATED: "succeeded",
    ConversationEvent.Kind.INFERENCE_CANCELLED: "cancelled",
}


def job_attempts(*, job: InferenceJob) -> list[Attempt]:
    """The job's attempts in order, each with its worker, times, outcome and, for a failed
    one, its error and traceback (from the job's events: its correlation id)."""
    attempts: dict[int, Attempt] = {}
    for event in ConversationEvent.objects.filter(correlation_id=job.correlation_id).order_by("id"):
        payload = event.payload or {}
        if payload.get("job_id") != job.pk:
            continue
        if event.kind == ConversationEvent.Kind.INFERENCE_STARTED:
            number = int(payload.get("attempt") or 0)
            attempt = attempts.setdefault(number, Attempt(number))
            attempt.worker, attempt.started_at = payload.get("worker") or "", event.created_at
        elif event.kind in _OUTCOMES:
            if event.kind == ConversationEvent.Kind.INFERENCE_CANCELLED and payload.get("while") == "queued":
                continue  # never started: no attempt
            # A failure before any claim (the queue was down) is "attempt 0".
            number = int(payload.get("attempt", payload.get("attempts")) or 0)
            attempt = attempts.setdefault(number, Attempt(number))
            attempt.ended_at, attempt.outcome = event.created_at, _OUTCOMES[event.kind]
            attempt.worker = attempt.worker or payload.get("worker") or ""
            attempt.error = payload.get("error", "")
            attempt.error_kind = payload.get("error_kind", "")
            attempt.traceback = payload.get("traceback", "")
    return [attempts[n] for n in sorted(attempts)]


def conversation_events(*, conversation_id: int) -> QuerySet[ConversationEvent]:
    """A conversation's event log, in order."""
    return ConversationEvent.objects.filter(conversation_id=conversation_id).order_by("id")


def failures_per_model(*, since: datetime) -> dict[str, int]:
    """How many jobs of each model failed for good since ``since``."""
    rows = (
        InferenceJob.objects.filter(failed_at__gte=since)
        .values("model")
        .annotate(failures=Count("id"))
        .order_by("model")
    )
    return {row["model"]: row["failures"] for row in rows}
