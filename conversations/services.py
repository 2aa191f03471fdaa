"""Writes to conversations and messages."""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from conversations.eventlog import event_record
from conversations.models import Conversation, ConversationEvent, Message
from inference import params as inference_params
from inference.models import InferenceJob
from inference.services import job_create, job_publish

TITLE_LENGTH = 60


def conversation_create(
    *, owner: AbstractBaseUser, title: str = "", model: str | None = None
) -> Conversation:
    spec = inference_params.resolve_model(model)
    return Conversation.objects.create(owner=owner, title=title.strip(), model=spec.name)


def conversation_update(
    *, conversation: Conversation, title: str | None = None, model: str | None = None
) -> Conversation:
    if title is not None:
        conversation.title = title.strip()
    if model is not None:
        conversation.model = inference_params.resolve_model(model).name
    conversation.save(update_fields=["title", "model", "updated_at"])
    return conversation


def conversation_delete(*, conversation: Conversation) -> None:
    """Delete the conversation, its messages, jobs and events.

    A job still running finishes on its worker; its final write finds no row
    and is dropped.
    """
    conversation.delete()


@dataclass(frozen=True, slots=True)
class PostedMessage:
    user_message: Message
    assistant_message: Message
    job: InferenceJob


def message_post(
    *,
    conversation: Conversation,
    content: str,
    model: str | None = None,
    params: dict[str, Any] | None = None,
    priority: int = 5,
) -> PostedMessage:
    """Store a user message and a queued assistant reply, and queue its job.

    All rows are written in one transaction; the job is published to its
    model's queue only once that transaction has committed (a worker must
    never pick up a job it cannot read yet). If the queue cannot be reached,
    the job and reply are marked failed and ``ServiceUnavailable`` is raised.
    """
    spec = inference_params.resolve_model(model or conversation.model)
    sampling = inference_params.sampling_params(spec, params or {})
    inference_params.check_fits(spec, content, sampling["max_tokens"])
    correlation_id = uuid.uuid4()
    now = timezone.now()
    with transaction.atomic():
        user_message = Message.objects.create(
            conversation=conversation, role=Message.Role.USER, content=content, model=spec.name
        )
        assistant_message = Message.objects.create(
            conversation=conversation,
            role=Message.Role.ASSISTANT,
            status=Message.Status.QUEUED,
            model=spec.name,
            queued_at=now,
        )
        job = job_create(
            message=assistant_message,
            spec=spec,
            params=sampling,
            priority=priority,
            correlation_id=correlation_id,
        )
        event_record(
            conversation_id=conversation.pk,
            kind=ConversationEvent.Kind.USER_QUERY_RECEIVED,
            correlation_id=correlation_id,
            message_id=user_message.pk,
            payload={"chars": len(content)},
        )
        event_record(
            conversation_id=conversation.pk,
            kind=ConversationEvent.Kind.INFERENCE_QUEUED,
            correlation_id=correlation_id,
            message_id=assistant_message.pk,
            payload={"job_id": job.pk, "model": spec.name, "queue": job.queue, "params": sampling},
        )
        update_fields = ["updated_at"]
        if not conversation.title:
            conversation.title = content.strip().splitlines()[0][:TITLE_LENGTH]
            update_fields.append("title")
        conversation.save(update_fields=update_fields)
        transaction.on_commit(functools.partial(job_publish, job_id=job.pk))
    return PostedMessage(user_message=user_message, assistant_message=assistant_message, job=job)
