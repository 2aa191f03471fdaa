"""Writes to conversations and messages: create, rename, delete, post a message, start a chat."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from conversations.admission import model_admit_sync
from conversations.dispatch import job_build, job_publish
from conversations.eventlog import event_build, event_record
from conversations.models import Conversation, ConversationEvent, InferenceJob, Message
from conversations.storage.chat import chat_insert
from inference import params as inference_params
from inference.registry import ModelSpec
from llmproject import logcontext
from llmproject.exceptions import InvalidInput

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

    The model must have room in its queue and its breaker closed (else
    ``TooManyRequests`` / ``ServiceUnavailable``, nothing stored); while its
    breaker is open the registry's fallback model, if any, takes the job. All
    rows are written in one transaction; the job is published to its model's
    queue only once that transaction has committed (a worker must never pick
    up a job it cannot read yet). If the queue cannot be reached, the job and
    reply are marked failed and ``ServiceUnavailable`` is raised.
    """
    spec = inference_params.resolve_model(model or conversation.model)
    sampling = inference_params.sampling_params(spec, params or {})
    inference_params.check_fits(spec, content, sampling["max_tokens"])
    admission = model_admit_sync(spec=spec)
    try:
        if admission.spec is not spec:
            spec = admission.spec
            sampling = inference_params.sampling_params(spec, params or {})
            inference_params.check_fits(spec, content, sampling["max_tokens"])
        return _message_store(
            conversation=conversation, content=content, spec=spec, sampling=sampling, priority=priority
        )
    finally:
        admission.release()  # the job is in its queue by now (or failed)


def _message_store(
    *, conversation: Conversation, content: str, spec: ModelSpec, sampling: dict[str, Any], priority: int
) -> PostedMessage:
    correlation_id = uuid.uuid4()
    logcontext.bind(correlation=correlation_id)
    with transaction.atomic():
        user_message = Message.objects.create(
            conversation=conversation, role=Message.Role.USER, content=_storable(content), model=spec.name
        )
        event_record(
            conversation_id=conversation.pk,
            kind=ConversationEvent.Kind.USER_QUERY_RECEIVED,
            correlation_id=correlation_id,
            message_id=user_message.pk,
            payload={"chars": len(content)},
        )
        assistant_message, job = _reply_queue(
            conversation=conversation,
            spec=spec,
            sampling=sampling,
            priority=priority,
            correlation_id=correlation_id,
        )
        update_fields = ["updated_at"]
        if not conversation.title:
            conversation.title = _storable(_title(content))
            update_fields.append("title")
        conversation.save(update_fields=update_fields)
    return PostedMessage(user_message=user_message, assistant_message=assistant_message, job=job)


@dataclass(frozen=True, slots=True)
class StartedConversation:
    conversation: Conversation
    messages: list[Message]
    assistant_message: Message
    job: InferenceJob


def conversation_start(
    *,
    owner: AbstractBaseUser,
    model: str,
    messages: Sequence[tuple[str, str]],
    params: dict[str, Any] | None = None,
    priority: int = 5,
) -> StartedConversation:
    """Store a new conversation holding ``messages`` (``(role, content)`` pairs, stored as
    given) and a queued assistant reply, and queue its job: one stateless chat request
    (the OpenAI API), kept like any other conversation.

    Unlike ``message_post``, the whole prompt is checked against the context
    window: nothing of a given history is dropped silently. Publishing works as
    in ``message_post`` (after commit; ``ServiceUnavailable`` if the queue is down).
    The rows are stored in one statement on PostgreSQL (``conversations.storage.chat``).
    """
    if not messages:
        raise InvalidInput("messages must not be empty", field="messages")
    spec = inference_params.resolve_model(model)
    sampling = inference_params.sampling_params(spec, params or {})
    inference_params.check_prompt_fits(spec, [content for _, content in messages], sampling["max_tokens"])
    correlation_id = uuid.uuid4()
    logcontext.bind(correlation=correlation_id)
    first_user = next((content for role, content in messages if role == Message.Role.USER), "")
    conversation = Conversation(owner=owner, title=_storable(_title(first_user)), model=spec.name)
    stored = [
        Message(conversation=conversation, role=role, content=_storable(content), model=spec.name)
        for role, content in messages
    ]
    assistant_message, job = _reply_and_job(
        conversation=conversation,
        spec=spec,
        sampling=sampling,
        priority=priority,
        correlation_id=correlation_id,
    )
    received = event_build(
        conversation_id=0,  # set once stored, as the message's
        kind=ConversationEvent.Kind.USER_QUERY_RECEIVED,
        correlation_id=correlation_id,
        payload={"chars": sum(len(c) for _, c in messages), "messages": len(messages)},
    )
    chat_insert(
        conversation=conversation,
        messages=[*stored, assistant_message],
        job=job,
        received=received,
        queued=_queued_event(job=job, conversation=conversation, sampling=sampling),
    )
    # At once in autocommit; under a caller's transaction, once it commits.
    transaction.on_commit(functools.partial(job_publish, job=job))
    return StartedConversation(
        conversation=conversation, messages=stored, assistant_message=assistant_message, job=job
    )


def _storable(text: str) -> str:
    """PostgreSQL text cannot hold NUL; the model then sees U+FFFD there, as clients see it
    in answers (``workers.generation``)."""
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


def _title(content: str) -> str:
    lines = content.strip().splitlines()
    return lines[0][:TITLE_LENGTH] if lines else ""


def _reply_and_job(
    *,
    conversation: Conversation,
    spec: ModelSpec,
    sampling: dict[str, Any],
    priority: int,
    correlation_id: uuid.UUID,
) -> tuple[Message, InferenceJob]:
    """The queued assistant reply and its job (neither stored yet)."""
    reply = Message(
        conversation=conversation,
        role=Message.Role.ASSISTANT,
        status=Message.Status.QUEUED,
        model=spec.name,
        queued_at=timezone.now(),
    )
    job = job_build(
        message=reply, spec=spec, params=sampling, priority=priority, correlation_id=correlation_id
    )
    return reply, job


def _queued_event(
    *, job: InferenceJob, conversation: Conversation, sampling: dict[str, Any]
) -> ConversationEvent:
    return event_build(
        conversation_id=conversation.pk,
        kind=ConversationEvent.Kind.INFERENCE_QUEUED,
        correlation_id=job.correlation_id,
        message_id=job.message_id,
        payload={"job_id": job.pk, "model": job.model, "queue": job.queue, "params": sampling},
    )


def _reply_queue(
    *,
    conversation: Conversation,
    spec: ModelSpec,
    sampling: dict[str, Any],
    priority: int,
    correlation_id: uuid.UUID,
) -> tuple[Message, InferenceJob]:
    """Within the caller's transaction: the queued assistant reply, its job and event,
    and the job's publication once the transaction commits."""
    assistant_message, job = _reply_and_job(
        conversation=conversation,
        spec=spec,
        sampling=sampling,
        priority=priority,
        correlation_id=correlation_id,
    )
    assistant_message.save(force_insert=True)
    job.save(force_insert=True)
    _queued_event(job=job, conversation=conversation, sampling=sampling).save(force_insert=True)
    transaction.on_commit(functools.partial(job_publish, job=job))
    return assistant_message, job
