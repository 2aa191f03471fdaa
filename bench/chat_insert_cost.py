"""Cost of storing one chat completion's rows (``conversations.storage.chat``) on PostgreSQL.

The /v1/ path stores every request in one statement (``chat_insert_sql``);
this times that statement alone, as the web server runs it: on one pooled
connection, prepared after its fifth run, in autocommit. It prints the
median wall and CPU microseconds per insert over several rounds, for a
request of one user message (the benchmark's) and of eight messages. The
commit does not wait for the disk (``synchronous_commit = off``): the
statement's own cost is measured, not the WAL flush's.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/<db> .venv/bin/python bench/chat_insert_cost.py

The database must be migrated (``manage.py migrate``); the rows it writes are
deleted at the end. To compare two versions of the code, run this from each
against the same database (migrated for each), several times, one after the
other.
"""

from __future__ import annotations

import os
import secrets
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmproject.settings")
os.environ.setdefault("DB_POOL", "false")
os.environ.setdefault("SECRET_KEY", secrets.token_urlsafe(50))  # the settings want one

import django

django.setup()

from django.contrib.auth import get_user_model  # noqa: E402
from django.db import connection  # noqa: E402
from django.utils import timezone  # noqa: E402

from conversations.dispatch import job_build  # noqa: E402
from conversations.eventlog import event_build  # noqa: E402
from conversations.models import Conversation, ConversationEvent, Message  # noqa: E402
from conversations.storage.chat import chat_insert_sql  # noqa: E402
from inference.registry import models  # noqa: E402

ROUNDS, PER_ROUND = 7, 400


def objects(owner, given: int) -> dict:
    spec = next(iter(models().values()))
    correlation_id = uuid.uuid4()
    conversation = Conversation(owner=owner, title="Hi there", model=spec.name)
    messages = [
        Message(conversation=conversation, role="user" if i % 2 == 0 else "assistant", content="Hi " * 40)
        for i in range(given)
    ]
    reply = Message(
        conversation=conversation,
        role="assistant",
        status="queued",
        model=spec.name,
        queued_at=timezone.now(),
    )
    job = job_build(
        message=reply, spec=spec, params={"max_tokens": 64}, priority=5, correlation_id=correlation_id
    )
    received = event_build(
        conversation_id=0, kind=ConversationEvent.Kind.USER_QUERY_RECEIVED, correlation_id=correlation_id
    )
    queued = event_build(
        conversation_id=0,
        kind=ConversationEvent.Kind.INFERENCE_QUEUED,
        correlation_id=correlation_id,
        payload={"model": spec.name, "queue": spec.queue},
    )
    return {
        "conversation": conversation,
        "messages": [*messages, reply],
        "job": job,
        "received": received,
        "queued": queued,
    }


def measure(owner, given: int) -> tuple[float, float]:
    walls, cpus = [], []
    for _ in range(5):  # prepared from the fifth run on
        chat_insert_sql(**objects(owner, given))
    for _ in range(ROUNDS):
        batch = [objects(owner, given) for _ in range(PER_ROUND)]
        wall, cpu = time.perf_counter(), time.process_time()
        for kwargs in batch:
            chat_insert_sql(**kwargs)
        walls.append((time.perf_counter() - wall) / PER_ROUND * 1e6)
        cpus.append((time.process_time() - cpu) / PER_ROUND * 1e6)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    assert connection.vendor == "postgresql", "set DATABASE_URL to a PostgreSQL database"
    with connection.cursor() as cursor:
        # The statement's cost, not the disk's: the commit's WAL flush (milliseconds on a
        # shared disk, and varying) is the same for any statement.
        cursor.execute("SET synchronous_commit = off")
    owner, _ = get_user_model().objects.get_or_create(username="bench-chat-insert")
    try:
        for given in (1, 8):
            wall, cpu = measure(owner, given)
            print(f"{given} given message(s): {wall:7.1f} us wall, {cpu:7.1f} us CPU per insert")
    finally:
        Conversation.objects.filter(owner=owner).delete()
        owner.delete()


if __name__ == "__main__":
    main()
