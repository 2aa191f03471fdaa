"""Appending to a conversation's event log (the only writer of ConversationEvent)."""

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
    return ConversationEvent.objects.create(
        conversation_id=conversation_id,
        message_id=message_id,
        kind=kind,
        correlation_id=correlation_id,
        payload=payload or {},
    )
