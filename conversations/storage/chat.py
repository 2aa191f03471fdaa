"""A chat completion's rows: the conversation, its messages and queued reply, the job
and the ``user_query_received`` and ``inference_queued`` events.

Through the ORM that is a transaction of four inserts and a commit: five
round trips, each a wait for the database and the thread scheduler on a
loaded web server. On PostgreSQL one statement of data-modifying CTEs inserts
them all, in autocommit. Its columns and values come from the unsaved model
instances (``pre_save``/``get_db_prep_save``, as the ORM's own insert), so the
SQL follows the models.

The messages are a chain (each one's parent is the one before it, as in a
conversation posted one message at a time): the statement draws their ids
from the table's sequence first, so one multi-row insert sets every id and
parent. Drawing them and naming the parents cost 10-25 us of Python per request
of one message, about 60 us for eight, and no measurable database time
(without a foreign key constraint on ``parent``, see ``Message.parent``;
bench/chat_insert_cost.py against the version before, run alternately, and
cProfile of the statement's building).
"""

from __future__ import annotations

import functools
import itertools
from typing import Any

import psycopg
from django.db import DEFAULT_DB_ALIAS, connection, connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Model

from conversations.eventlog import events_record
from conversations.models import Conversation, ConversationEvent, InferenceJob, Message
from conversations.storage import on_postgresql


def _row(
    obj: Model, computed: dict[str, str | tuple[str, Any]], db: BaseDatabaseWrapper
) -> tuple[list[str], list[str], list[Any]]:
    """Quoted columns, value SQL and parameters for inserting ``obj`` (its auto primary key
    left out unless ``computed`` gives it). ``computed`` gives some columns' SQL instead, by
    column, as ``sql`` or ``(sql with one placeholder, its parameter)``."""
    columns, values, params = [], [], []
    for field in obj._meta.concrete_fields:
        if field.primary_key and field.column not in computed:
            continue
        columns.append(db.ops.quote_name(field.column))
        given = computed.get(field.column)
        if given is None:
            values.append("%s")
            params.append(field.get_db_prep_save(field.pre_save(obj, True), db))
        elif isinstance(given, tuple):
            values.append(given[0])
            params.append(given[1])
        else:
            values.append(given)
    return columns, values, params


@functools.lru_cache(maxsize=32)
def _numbered(sql: str) -> str:
    """``sql`` with PostgreSQL's own ``$1, $2, ...`` for its ``%s`` placeholders (it has
    no other ``%``), for a raw cursor. psycopg converts a statement of more than 50
    parameters anew at every run (it caches smaller ones): 10 % of a loaded web
    server's GIL time, for the chat insert's 80 or so."""
    parts = sql.split("%s")
    return "".join(part + (f"${i}" if i < len(parts) else "") for i, part in enumerate(parts, 1))


@functools.cache
def _message_sequence() -> str:
    """The message table's id sequence, as a SQL literal (once per process: it is part
    of the statement's text, which PostgreSQL then prepares)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_get_serial_sequence(%s, 'id')", [Message._meta.db_table])
        (name,) = cursor.fetchone()
    return "'" + name.replace("'", "''") + "'::regclass"


def chat_insert(
    *,
    conversation: Conversation,
    messages: list[Message],
    job: InferenceJob,
    received: ConversationEvent,
    queued: ConversationEvent,
) -> None:
    """Insert ``conversation`` with ``messages`` (the given ones, then the queued reply,
    which ``job`` is for) and the ``received`` event (of the last given message) and the
    ``queued`` one (of the reply); sets their primary keys and foreign keys. ``queued``'s
    payload gets the job's id as ``job_id``.

    Each message's parent is the one before it (the first has none), so the reply's
    branch, the history the worker reads, is every given message. Ids follow the
    list's order.
    """
    insert = chat_insert_sql if on_postgresql() else chat_insert_orm
    insert(conversation=conversation, messages=messages, job=job, received=received, queued=queued)


def chat_insert_orm(
    *,
    conversation: Conversation,
    messages: list[Message],
    job: InferenceJob,
    received: ConversationEvent,
    queued: ConversationEvent,
) -> None:
    with transaction.atomic():
        conversation.save(force_insert=True)
        # One statement for the messages and one for their parents (known once they
        # have ids), one for the job, one for both events; the rows' foreign keys
        # are taken from the objects, now saved.
        Message.objects.bulk_create(messages)
        for parent, message in itertools.pairwise(messages):
            message.parent = parent
        Message.objects.bulk_update(messages[1:], ["parent"])
        job.save(force_insert=True)
        received.conversation_id, received.message_id = conversation.pk, messages[-2].pk
        queued.conversation_id, queued.message_id = conversation.pk, messages[-1].pk
        queued.payload = {**queued.payload, "job_id": job.pk}
        events_record([received, queued])


def chat_insert_sql(
    *,
    conversation: Conversation,
    messages: list[Message],
    job: InferenceJob,
    received: ConversationEvent,
    queued: ConversationEvent,
) -> None:
    # The thread's connection itself: ``django.db.connection`` is a proxy that looks it
    # up at every attribute access, which took half of this function's CPU (about
    # 180 us of 370 per request, measured with cProfile).
    db = connections[DEFAULT_DB_ALIAS]
    quote = db.ops.quote_name
    conv_id = "(SELECT id FROM conv)"
    count = len(messages)

    def message_id(i: int) -> str:
        return f"(SELECT a[{i + 1}] FROM ids)"

    # The messages' ids, drawn in order, so each row can name its parent's.
    drawn = f"SELECT nextval({_message_sequence()}) AS n FROM generate_series(1, {count})"
    parts, params = [f"ids AS (SELECT array_agg(n ORDER BY n) AS a FROM ({drawn}) AS drawn)"], []

    def cte(name: str, model: type[Model], rows: list[tuple[list[str], list[str], list[Any]]]) -> None:
        columns = rows[0][0]
        values = ", ".join("(" + ", ".join(row[1]) + ")" for row in rows)
        parts.append(
            f"{name} AS (INSERT INTO {quote(model._meta.db_table)} ({', '.join(columns)}) "
            f"VALUES {values} RETURNING id)"
        )
        for row in rows:
            params.extend(row[2])

    cte("conv", Conversation, [_row(conversation, {}, db)])
    cte(
        "msgs",
        Message,
        [
            _row(
                message,
                {
                    "id": message_id(i),
                    "conversation_id": conv_id,
                    "parent_id": message_id(i - 1) if i else "NULL",
                },
                db,
            )
            for i, message in enumerate(messages)
        ],
    )
    reply_id, last_given = message_id(count - 1), message_id(count - 2)
    cte("job", InferenceJob, [_row(job, {"message_id": reply_id}, db)])
    with_job_id = "jsonb_set(%s::jsonb, '{job_id}', to_jsonb((SELECT id FROM job)))"
    payload = ConversationEvent._meta.get_field("payload").get_db_prep_save(queued.payload, db)
    received_row = _row(received, {"conversation_id": conv_id, "message_id": last_given}, db)
    queued_row = _row(
        queued, {"conversation_id": conv_id, "message_id": reply_id, "payload": (with_job_id, payload)}, db
    )
    cte("events", ConversationEvent, [received_row, queued_row])
    sql = (
        "WITH " + ", ".join(parts) + " SELECT (SELECT id FROM conv), (SELECT a FROM ids),"
        " (SELECT id FROM job), (SELECT array_agg(id ORDER BY id) FROM events)"
    )
    db.ensure_connection()
    with db.wrap_database_errors, psycopg.RawCursor(db.connection) as cursor:
        cursor.execute(_numbered(sql), params)
        conversation_pk, message_pks, job_pk, event_pks = cursor.fetchone()
    conversation.pk = conversation_pk
    for i, (message, pk) in enumerate(zip(messages, message_pks, strict=True)):
        message.pk, message.conversation_id = pk, conversation_pk
        message.parent_id = message_pks[i - 1] if i else None
    job.pk, job.message_id = job_pk, messages[-1].pk
    queued.payload = {**queued.payload, "job_id": job_pk}
    for event, pk in zip((received, queued), event_pks, strict=True):
        event.pk, event.conversation_id = pk, conversation_pk
    received.message_id, queued.message_id = messages[-2].pk, messages[-1].pk
    for obj in (conversation, *messages, job, received, queued):
        obj._state.adding = False
