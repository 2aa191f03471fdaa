"""Storing an answer: the job final, its reply's text and counts, and the event logged,
all only if the job still belongs to the attempt that generated it.

The ORM path is a transaction of three statements; the PostgreSQL path is
one. Both write only under ``InferenceJob.held``.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

from django.db import connection, transaction

from conversations.eventlog import event_record
from conversations.models import ConversationEvent, InferenceJob, Message
from conversations.storage import on_postgresql, table, where


def finish(
    *,
    job_id: int,
    message_id: int,
    attempt: int,
    job_state: InferenceJob.State,
    conversation_id: int,
    correlation_id: uuid.UUID,
    reply: dict[str, Any],
    event_kind: ConversationEvent.Kind,
    event_payload: dict[str, Any],
    now: datetime,
) -> bool:
    """Store the answer if the job is still held by ``attempt``: the job gets ``job_state``,
    its reply the fields of ``reply``, and the event is logged. False if another attempt
    took the job over (or it is gone)."""
    store = finish_sql if on_postgresql() else finish_orm
    return store(
        job_id=job_id,
        message_id=message_id,
        attempt=attempt,
        job_state=job_state,
        conversation_id=conversation_id,
        correlation_id=correlation_id,
        reply=reply,
        event_kind=event_kind,
        event_payload=event_payload,
        now=now,
    )


def finish_orm(
    *,
    job_id: int,
    message_id: int,
    attempt: int,
    job_state: InferenceJob.State,
    conversation_id: int,
    correlation_id: uuid.UUID,
    reply: dict[str, Any],
    event_kind: ConversationEvent.Kind,
    event_payload: dict[str, Any],
    now: datetime,
) -> bool:
    with transaction.atomic():
        updated = InferenceJob.objects.filter(InferenceJob.held(attempt=attempt), pk=job_id).update(
            state=job_state, finished_at=now, updated_at=now, last_error=""
        )
        if not updated:
            return False
        Message.objects.filter(pk=message_id).update(**reply)
        event_record(
            conversation_id=conversation_id,
            kind=event_kind,
            correlation_id=correlation_id,
            message_id=message_id,
            payload=event_payload,
        )
    return True


def finish_sql(
    *,
    job_id: int,
    message_id: int,
    attempt: int,
    job_state: InferenceJob.State,
    conversation_id: int,
    correlation_id: uuid.UUID,
    reply: dict[str, Any],
    event_kind: ConversationEvent.Kind,
    event_payload: dict[str, Any],
    now: datetime,
) -> bool:
    held, held_params = where(InferenceJob, InferenceJob.held, attempt=attempt)
    quote = connection.ops.quote_name
    columns = ", ".join(f"{quote(name)} = %s" for name in reply)
    sql = f"""
    WITH done AS (
        UPDATE {table(InferenceJob)} SET state = %s, finished_at = %s, updated_at = %s, last_error = ''
        WHERE id = %s AND {held}
        RETURNING id, message_id
    ), reply AS (
        UPDATE {table(Message)} AS m SET {columns}
        FROM done WHERE m.id = done.message_id
        RETURNING m.id
    ), logged AS (
        INSERT INTO {table(ConversationEvent)}
            (conversation_id, message_id, kind, correlation_id, payload, created_at)
        SELECT %s, done.message_id, %s, %s, %s::jsonb, %s
        FROM done
    )
    SELECT count(*) FROM done
    """
    params = [
        job_state.value if isinstance(job_state, InferenceJob.State) else job_state,
        now,
        now,
        job_id,
        *held_params,
        *reply.values(),
        conversation_id,
        event_kind.value if isinstance(event_kind, ConversationEvent.Kind) else event_kind,
        correlation_id,
        json.dumps(event_payload),
        now,
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        (count,) = cursor.fetchone()
    return bool(count)
