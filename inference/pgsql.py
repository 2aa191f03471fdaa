"""A job's claim and its answer's storage, each one statement on PostgreSQL.

Through the ORM a claim is four statements (update the job, read it back with
its reply, mark the reply streaming, log the event) and storing the answer
three; on a busy worker building those queries cost more CPU than anything
else of the platform per request. PostgreSQL's data-modifying CTEs do each in
one round trip, with the same conditions as the ORM path in
``inference.services`` (which other databases use, and which explains a
delivery that could not claim). Table and column names come from the models.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import connection

from conversations.models import ConversationEvent, Message
from inference.models import InferenceJob

# An assistant reply in one of these states is left out of the history a model sees.
HISTORY_EXCLUDED_STATUSES = (Message.Status.FAILED, Message.Status.QUEUED, Message.Status.STREAMING)


def available() -> bool:
    return connection.vendor == "postgresql"


def _tables() -> dict[str, str]:
    quote = connection.ops.quote_name
    return {
        "job": quote(InferenceJob._meta.db_table),
        "msg": quote(Message._meta.db_table),
        "ev": quote(ConversationEvent._meta.db_table),
    }


@dataclass(frozen=True, slots=True)
class ClaimedRow:
    job_id: int
    message_id: int
    model: str
    params: dict[str, Any]
    attempts: int
    max_attempts: int
    correlation_id: uuid.UUID
    conversation_id: int
    queued_at: datetime | None
    history: list[tuple[str, str]]  # (role, content) before the reply, as ``conversation_history``


def claim(*, job_id: int, worker: str, now: datetime, stale: datetime) -> ClaimedRow | None:
    """Claim ``job_id`` for one more attempt (queued, or running since before ``stale``, under
    its attempt cap, not cancelled): mark its reply streaming and log ``inference_started``.
    None if the job could not be claimed (or does not exist)."""
    sql = """
    WITH claimed AS (
        UPDATE {job} SET state = %(running)s, attempts = attempts + 1, worker = %(worker)s,
               started_at = %(now)s, updated_at = %(now)s
        WHERE id = %(job_id)s AND attempts < max_attempts AND NOT cancel_requested
          AND (state = %(queued)s OR (state = %(running)s AND started_at < %(stale)s))
        RETURNING id, message_id, model, params, attempts, max_attempts, correlation_id
    ), reply AS (
        UPDATE {msg} AS m SET status = %(streaming)s, started_at = %(now)s, content = '', error = ''
        FROM claimed WHERE m.id = claimed.message_id
        RETURNING m.id, m.conversation_id, m.queued_at
    ), logged AS (
        INSERT INTO {ev} (conversation_id, message_id, kind, correlation_id, payload, created_at)
        SELECT reply.conversation_id, reply.id, %(kind)s, claimed.correlation_id,
               jsonb_build_object('job_id', claimed.id, 'attempt', claimed.attempts,
                                  'worker', %(worker)s::text),
               %(now)s
        FROM claimed JOIN reply ON reply.id = claimed.message_id
    )
    SELECT claimed.id, claimed.message_id, claimed.model, claimed.params, claimed.attempts,
           claimed.max_attempts, claimed.correlation_id, reply.conversation_id, reply.queued_at,
           (SELECT coalesce(json_agg(json_build_array(h.role, h.content) ORDER BY h.id), '[]')
            FROM {msg} AS h
            WHERE h.conversation_id = reply.conversation_id AND h.id < reply.id
              AND NOT (h.role = %(assistant)s AND h.status = ANY(%(unfinished)s)))
    FROM claimed JOIN reply ON reply.id = claimed.message_id
    """.format(**_tables())
    params = {
        "job_id": job_id,
        "worker": worker,
        "now": now,
        "stale": stale,
        "queued": InferenceJob.State.QUEUED.value,
        "running": InferenceJob.State.RUNNING.value,
        "streaming": Message.Status.STREAMING.value,
        "kind": ConversationEvent.Kind.INFERENCE_STARTED.value,
        "assistant": Message.Role.ASSISTANT.value,
        "unfinished": [status.value for status in HISTORY_EXCLUDED_STATUSES],
    }
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    if row is None:
        return None
    (
        job_pk,
        message_id,
        model,
        job_params,
        attempts,
        max_attempts,
        correlation_id,
        conversation_id,
        queued,
        history,
    ) = row
    return ClaimedRow(
        job_id=job_pk,
        message_id=message_id,
        model=model,
        # Django has psycopg hand jsonb over as text (JSONField decodes it).
        params=json.loads(job_params) if isinstance(job_params, str) else job_params,
        attempts=attempts,
        max_attempts=max_attempts,
        correlation_id=correlation_id if isinstance(correlation_id, uuid.UUID) else uuid.UUID(correlation_id),
        conversation_id=conversation_id,
        queued_at=queued,
        history=[tuple(pair) for pair in (json.loads(history) if isinstance(history, str) else history)],
    )


def finish(
    *,
    job_id: int,
    attempt: int,
    job_state: str,
    conversation_id: int,
    correlation_id: uuid.UUID,
    reply: dict[str, Any],
    event_kind: str,
    event_payload: dict[str, Any],
    now: datetime,
) -> bool:
    """Store the answer if the job is still running under ``attempt``: the job gets
    ``job_state``, its reply the fields of ``reply``, and the event is logged. False if
    another attempt took the job over."""
    columns = ", ".join(f"{connection.ops.quote_name(name)} = %(r_{name})s" for name in reply)
    sql = """
    WITH done AS (
        UPDATE {job} SET state = %(state)s, finished_at = %(now)s, last_error = ''
        WHERE id = %(job_id)s AND attempts = %(attempt)s AND state = %(running)s
        RETURNING id, message_id
    ), reply AS (
        UPDATE {msg} AS m SET {columns}
        FROM done WHERE m.id = done.message_id
        RETURNING m.id
    ), logged AS (
        INSERT INTO {ev} (conversation_id, message_id, kind, correlation_id, payload, created_at)
        SELECT %(conversation_id)s, done.message_id, %(kind)s, %(correlation_id)s, %(payload)s::jsonb,
               %(now)s
        FROM done
    )
    SELECT count(*) FROM done
    """.format(columns=columns, **_tables())
    params = {
        "job_id": job_id,
        "attempt": attempt,
        "state": job_state,
        "running": InferenceJob.State.RUNNING.value,
        "now": now,
        "conversation_id": conversation_id,
        "kind": event_kind,
        "correlation_id": correlation_id,
        "payload": json.dumps(event_payload),
        **{f"r_{name}": value for name, value in reply.items()},
    }
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        (count,) = cursor.fetchone()
    return bool(count)
