"""Reads of conversations, messages and jobs, always scoped to their owner."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import QuerySet

from conversations.models import Conversation, InferenceJob, Message
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
