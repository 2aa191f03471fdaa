"""Reads of conversations and messages, always scoped to their owner."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import QuerySet

from conversations.models import Conversation, Message
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
