"""Appending to a conversation's event log.

Every write of an event goes through here, except the one-statement paths
of ``conversations.storage``, which insert the same rows in SQL.
"""

from __future__ import annotations

import uuid
from typing import Any

from conversations.models import ConversationEvent


def event_record(
    *,
    conversation_id: int,
    kind: ConversationEvent.Kind,
    correlation_id: uuid.UUID,
    message_id: int | None = None,
    payload: dict[str, Any] | None = None,
) -> ConversationEvent:
    event = event_build(
        conversation_id=conversation_id,
        kind=kind,
        correlation_id=correlation_id,
        message_id=message_id,
        payload=payload,
    )
    event.save(force_insert=True)
    return event


def event_build(
    *,
    conversation_id: int,
    kind: ConversationEvent.Kind,
    correlation_id: uuid.UUID,
    message_id: int | None = None,
    payload: dict[str, Any] | None = None,
) -> ConversationEvent:
    """An event not yet stored, for ``events_record``."""
    return ConversationEvent(
        conversation_id=conversation_id,
        message_id=message_id,
        kind=kind,
        correlation_id=correlation_id,
        payload=payload or {},
    )


def events_record(events: list[ConversationEvent]) -> list[ConversationEvent]:
    """Store several events in one statement, in order."""
    return ConversationEvent.objects.bulk_create(events)
