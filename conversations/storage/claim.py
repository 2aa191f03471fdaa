"""A worker's claim of a job: the job running under one more attempt, its reply
streaming, ``inference_started`` logged, and the history the model will see.

The ORM path is a transaction of five statements; the PostgreSQL path is one
(it was the largest CPU cost per request of a busy worker). Both take a job
only under ``InferenceJob.claimable`` and read the history under
``Message.in_history``: the reply's ancestors (its branch,
``conversations.branches``) that the rule keeps, oldest first. The ORM path
reads the conversation's earlier messages in one query and walks up their
parents in Python; the SQL path walks up with a recursive CTE.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime

from django.db import connection, transaction
from django.db.models import BooleanField, ExpressionWrapper, F

from conversations.branches import ancestry
from conversations.eventlog import event_record
from conversations.models import ConversationEvent, InferenceJob, Message
from conversations.storage import on_postgresql, table, where
from inference.requests import ChatMessage


@dataclass(frozen=True, slots=True)
class Claim:
    """A job taken for one attempt, with its reply and the history before it."""

    job: InferenceJob  # its ``message`` loaded
    attempt: int
    history: tuple[ChatMessage, ...]

    @property
    def conversation_id(self) -> int:
        return self.job.message.conversation_id


def claim(*, job_id: int, worker: str, now: datetime, stale_before: datetime) -> Claim | None:
    """Take ``job_id`` for one more attempt if it is claimable; None otherwise (or if it
    does not exist)."""
    if on_postgresql():
        return claim_sql(job_id=job_id, worker=worker, now=now, stale_before=stale_before)
    return claim_orm(job_id=job_id, worker=worker, now=now, stale_before=stale_before)


def claim_orm(*, job_id: int, worker: str, now: datetime, stale_before: datetime) -> Claim | None:
    with transaction.atomic():
        claimed = InferenceJob.objects.filter(
            InferenceJob.claimable(stale_before=stale_before), pk=job_id
        ).update(
            state=InferenceJob.State.RUNNING,
            attempts=F("attempts") + 1,
            worker=worker,
            started_at=now,
            updated_at=now,
        )
        if not claimed:
            return None
        job = InferenceJob.objects.select_related("message").get(pk=job_id)
        Message.objects.filter(pk=job.message_id).update(
            status=Message.Status.STREAMING, started_at=now, content="", error=""
        )
        job.message.status, job.message.started_at = Message.Status.STREAMING, now
        job.message.content = job.message.error = ""
        event_record(
            conversation_id=job.message.conversation_id,
            kind=ConversationEvent.Kind.INFERENCE_STARTED,
            correlation_id=job.correlation_id,
            message_id=job.message_id,
            payload={"job_id": job.pk, "attempt": job.attempts, "worker": worker},
        )
        # Ancestors have lower ids than their descendants.
        earlier = (
            Message.objects.filter(conversation_id=job.message.conversation_id, pk__lt=job.message_id)
            .annotate(seen=ExpressionWrapper(Message.in_history(), output_field=BooleanField()))
            .values_list("id", "parent_id", "role", "content", "seen")
        )
        rows = {row[0]: row for row in earlier}
        branch = ancestry({pk: row[1] for pk, row in rows.items()}, job.message.parent_id)
        return Claim(
            job=job,
            attempt=job.attempts,
            history=tuple(ChatMessage(role=rows[pk][2], content=rows[pk][3]) for pk in branch if rows[pk][4]),
        )


def claim_sql(*, job_id: int, worker: str, now: datetime, stale_before: datetime) -> Claim | None:
    claimable, claimable_params = where(InferenceJob, InferenceJob.claimable, stale_before=stale_before)
    in_history, in_history_params = where(Message, Message.in_history)
    job, msg, ev = table(InferenceJob), table(Message), table(ConversationEvent)
    # ``branch`` walks up the reply's ancestors, one primary key lookup each, carrying
    # what the history needs (and whether the rule keeps it). Reading the history in a
    # second pass instead (``WHERE id IN (SELECT id FROM branch)``) made a prepared claim
    # 1 to 7 ms slower on a table of some 10^4 messages; this one costs what the claim
    # cost before branches, within a few microseconds (alternate runs of both).
    sql = f"""
    WITH RECURSIVE claimed AS (
        UPDATE {job} SET state = %s, attempts = attempts + 1, worker = %s, started_at = %s, updated_at = %s
        WHERE id = %s AND {claimable}
        RETURNING id, message_id, model, params, attempts, max_attempts, correlation_id, priority, queue
    ), reply AS (
        UPDATE {msg} AS m SET status = %s, started_at = %s, content = '', error = ''
        FROM claimed WHERE m.id = claimed.message_id
        RETURNING m.id, m.conversation_id, m.queued_at, m.model, m.parent_id
    ), logged AS (
        INSERT INTO {ev} (conversation_id, message_id, kind, correlation_id, payload, created_at)
        SELECT reply.conversation_id, reply.id, %s, claimed.correlation_id,
               jsonb_build_object('job_id', claimed.id, 'attempt', claimed.attempts, 'worker', %s::text),
               %s
        FROM claimed JOIN reply ON reply.id = claimed.message_id
    ), branch (b_id, b_parent, b_role, b_content, b_seen) AS (
        SELECT id, parent_id, role, content, {in_history} FROM {msg} WHERE id = (SELECT parent_id FROM reply)
        UNION ALL
        SELECT m.id, m.parent_id, m.role, m.content, {in_history}
        FROM {msg} AS m JOIN branch ON m.id = branch.b_parent
    )
    SELECT claimed.id, claimed.message_id, claimed.model, claimed.params, claimed.attempts,
           claimed.max_attempts, claimed.correlation_id, claimed.priority, claimed.queue,
           reply.conversation_id, reply.queued_at, reply.model,
           (SELECT coalesce(json_agg(json_build_array(b_role, b_content) ORDER BY b_id), '[]')
            FROM branch WHERE b_seen)
    FROM claimed JOIN reply ON reply.id = claimed.message_id
    """
    params = [
        InferenceJob.State.RUNNING.value,
        worker,
        now,
        now,
        job_id,
        *claimable_params,
        Message.Status.STREAMING.value,
        now,
        ConversationEvent.Kind.INFERENCE_STARTED.value,
        worker,
        now,
        *in_history_params,
        *in_history_params,
    ]
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
        priority,
        queue,
        conversation_id,
        queued_at,
        message_model,
        history,
    ) = row
    # The claimed job and its reply as the ORM path reads them back (the fields the
    # worker uses).
    message = Message(
        id=message_id,
        conversation_id=conversation_id,
        role=Message.Role.ASSISTANT,
        status=Message.Status.STREAMING,
        model=message_model,
        queued_at=queued_at,
        started_at=now,
    )
    claimed = InferenceJob(
        id=job_pk,
        message=message,
        model=model,
        queue=queue,
        # Django has psycopg hand jsonb over as text (JSONField decodes it).
        params=json.loads(job_params) if isinstance(job_params, str) else job_params,
        priority=priority,
        state=InferenceJob.State.RUNNING,
        attempts=attempts,
        max_attempts=max_attempts,
        correlation_id=correlation_id if isinstance(correlation_id, uuid.UUID) else uuid.UUID(correlation_id),
        worker=worker,
        started_at=now,
    )
    claimed._state.adding = message._state.adding = False  # they are stored rows
    pairs = json.loads(history) if isinstance(history, str) else history
    return Claim(
        job=claimed,
        attempt=attempts,
        history=tuple(ChatMessage(role=role, content=content) for role, content in pairs),
    )
