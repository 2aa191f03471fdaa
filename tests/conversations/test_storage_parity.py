"""Each storage seam's two paths, the ORM and PostgreSQL's one statement, leave the same rows.

Run on PostgreSQL (CI's database); SQLite has only the ORM path.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from conversations.eventlog import event_build
from conversations.models import Conversation, ConversationEvent, InferenceJob, Message
from conversations.storage import chat, claim, finish
from tests.factories import ConversationFactory, UserFactory

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(connection.vendor != "postgresql", reason="the SQL paths are PostgreSQL's"),
]

# Columns that differ between two otherwise equal rows: keys, and times set by the
# database or at build time rather than by the state change.
_VOLATILE = {
    "id",
    "conversation",
    "conversation_id",
    "message",
    "message_id",
    "owner",
    "owner_id",
    "parent",
    "parent_id",
}
_VOLATILE_TIMES = {"created_at", "updated_at", "queued_at"}


def _row(obj: Any, *, times: bool) -> dict[str, Any]:
    skip = _VOLATILE | (set() if times else _VOLATILE_TIMES)
    return {f.attname: getattr(obj, f.attname) for f in obj._meta.concrete_fields if f.attname not in skip}


def _snapshot(conversation: Conversation, *, job_times: bool = True) -> dict[str, Any]:
    """What a conversation's rows hold, without their keys (and, unless ``job_times``,
    without the time its job was last written)."""
    conversation.refresh_from_db()
    messages = list(Message.objects.filter(conversation=conversation).order_by("id"))
    index = {m.pk: i for i, m in enumerate(messages)}
    return {
        "conversation": _row(conversation, times=False),
        "messages": [{**_row(m, times=False), "parent_index": index.get(m.parent_id)} for m in messages],
        "jobs": [
            {**_row(j, times=False), **({"updated_at": j.updated_at} if job_times else {})}
            for j in InferenceJob.objects.filter(message__conversation=conversation).order_by("id")
        ],
        "events": [
            {
                **_row(e, times=False),
                "payload": {k: v for k, v in e.payload.items() if k != "job_id"},
                "message_index": [m.pk for m in messages].index(e.message_id) if e.message_id else None,
            }
            for e in ConversationEvent.objects.filter(conversation=conversation).order_by("id")
        ],
    }


def _queued_conversation(*, owner: Any, correlation_id: uuid.UUID, **job: Any) -> Conversation:
    """A conversation with two branches and a queued reply with its job on one of them::

        be brief > first question > first answer > second question > (failed) > third question > reply
                                                 > second question, edited > another branch's answer

    The other branch's messages were written before the reply's last ones (lower ids).
    """
    conversation = ConversationFactory(owner=owner, title="same")
    made: dict[str, Message] = {}
    for role, content, status, parent in [
        ("system", "be brief", "completed", None),
        ("user", "first question", "completed", "be brief"),
        ("assistant", "first answer", "completed", "first question"),
        ("user", "second question", "completed", "first answer"),
        ("assistant", "", "failed", "second question"),
        ("user", "second question, edited", "completed", "first answer"),
        ("assistant", "another branch's answer", "completed", "second question, edited"),
        ("user", "third question", "completed", ""),
    ]:
        made[content] = Message.objects.create(
            conversation=conversation,
            role=role,
            content=content,
            status=status,
            parent=made[parent] if parent is not None else None,
        )
    reply = Message.objects.create(
        conversation=conversation,
        role="assistant",
        status="queued",
        model="echo",
        queued_at=timezone.now(),
        parent=made["third question"],
    )
    InferenceJob.objects.create(
        message=reply,
        model="echo",
        queue="llm.echo",
        params={"max_tokens": 8},
        correlation_id=correlation_id,
        **job,
    )
    return conversation


def _job(conversation: Conversation) -> InferenceJob:
    return InferenceJob.objects.get(message__conversation=conversation)


def _claim_both(**job: Any) -> tuple[Any, Any, Conversation, Conversation]:
    owner = UserFactory()
    correlation_id = uuid.uuid4()
    a = _queued_conversation(owner=owner, correlation_id=correlation_id, **job)
    b = _queued_conversation(owner=owner, correlation_id=correlation_id, **job)
    now = timezone.now()
    stale = now - timedelta(seconds=600)
    claim_a = claim.claim_orm(job_id=_job(a).pk, worker="w@host", now=now, stale_before=stale)
    claim_b = claim.claim_sql(job_id=_job(b).pk, worker="w@host", now=now, stale_before=stale)
    return claim_a, claim_b, a, b


def test_a_claim_leaves_the_same_rows_and_reads_the_same_history_either_way():
    claim_a, claim_b, a, b = _claim_both()

    assert claim_a is not None and claim_b is not None
    assert claim_a.attempt == claim_b.attempt == 1
    assert claim_a.history == claim_b.history
    # The reply's branch, less its failed reply: not the other branch, written before it.
    assert [m.content for m in claim_a.history] == [
        "be brief",
        "first question",
        "first answer",
        "second question",
        "third question",
    ]
    for field in ("model", "queue", "params", "priority", "state", "attempts", "max_attempts", "worker"):
        assert getattr(claim_a.job, field) == getattr(claim_b.job, field), field
    assert claim_a.job.correlation_id == claim_b.job.correlation_id
    assert claim_a.job.started_at == claim_b.job.started_at
    assert claim_a.job.message.status == claim_b.job.message.status == "streaming"
    assert claim_a.job.message.queued_at is not None and claim_b.job.message.queued_at is not None
    assert _snapshot(a) == _snapshot(b)
    assert _snapshot(a)["events"][-1]["kind"] == "inference_started"


@pytest.mark.parametrize(
    "job",
    [
        pytest.param({"cancel_requested": True}, id="cancel requested"),
        pytest.param({"attempts": 3, "max_attempts": 3}, id="at the attempt cap"),
        pytest.param({"state": "succeeded"}, id="finished"),
        pytest.param({"state": "running", "attempts": 1}, id="running, not stale"),
    ],
)
def test_a_job_that_is_not_claimable_is_left_alone_either_way(job):
    if job.get("state") == "running":
        job["started_at"] = timezone.now()
    untouched = _snapshot(
        _queued_conversation(owner=UserFactory(), correlation_id=uuid.uuid4(), **job), job_times=False
    )
    claim_a, claim_b, a, b = _claim_both(**job)

    assert claim_a is None and claim_b is None
    untouched["jobs"][0]["correlation_id"] = _job(a).correlation_id
    assert _snapshot(a, job_times=False) == _snapshot(b, job_times=False) == untouched


def test_a_stale_running_job_is_claimed_again_either_way():
    long_ago = timezone.now() - timedelta(hours=1)
    claim_a, claim_b, a, b = _claim_both(state="running", attempts=1, started_at=long_ago)

    assert claim_a is not None and claim_b is not None
    assert claim_a.attempt == claim_b.attempt == 2
    assert _snapshot(a) == _snapshot(b)


@pytest.mark.parametrize("cancelled", [False, True], ids=["completed", "cancelled"])
def test_storing_an_answer_leaves_the_same_rows_either_way(cancelled):
    claim_a, claim_b, a, b = _claim_both()
    now = timezone.now()
    for store, claimed in ((finish.finish_orm, claim_a), (finish.finish_sql, claim_b)):
        assert store(
            job_id=claimed.job.pk,
            message_id=claimed.job.message_id,
            attempt=claimed.attempt,
            job_state=InferenceJob.State.CANCELLED if cancelled else InferenceJob.State.SUCCEEDED,
            conversation_id=claimed.conversation_id,
            correlation_id=claimed.job.correlation_id,
            reply={
                "content": "an answer \ufffd",
                "status": Message.Status.CANCELLED if cancelled else Message.Status.COMPLETED,
                "finish_reason": "abort" if cancelled else "stop",
                "prompt_tokens": 12,
                "completion_tokens": 3,
                "first_token_at": now - timedelta(milliseconds=40),
                "finished_at": now,
            },
            event_kind=(
                ConversationEvent.Kind.INFERENCE_CANCELLED
                if cancelled
                else ConversationEvent.Kind.RESPONSE_GENERATED
            ),
            event_payload={"job_id": claimed.job.pk, "attempt": 1, "completion_tokens": 3},
            now=now,
        )

    assert _snapshot(a) == _snapshot(b)
    reply = Message.objects.filter(conversation=a).last()
    assert (reply.status, reply.content) == ("cancelled" if cancelled else "completed", "an answer \ufffd")


def test_an_answer_of_a_superseded_attempt_is_refused_either_way():
    claim_a, claim_b, a, b = _claim_both()
    # Another delivery took both jobs over (attempt 2) meanwhile.
    InferenceJob.objects.filter(pk__in=[claim_a.job.pk, claim_b.job.pk]).update(attempts=2)
    before_a, before_b = _snapshot(a), _snapshot(b)
    for store, claimed in ((finish.finish_orm, claim_a), (finish.finish_sql, claim_b)):
        assert not store(
            job_id=claimed.job.pk,
            message_id=claimed.job.message_id,
            attempt=claimed.attempt,
            job_state=InferenceJob.State.SUCCEEDED,
            conversation_id=claimed.conversation_id,
            correlation_id=claimed.job.correlation_id,
            reply={"content": "late", "status": Message.Status.COMPLETED},
            event_kind=ConversationEvent.Kind.RESPONSE_GENERATED,
            event_payload={},
            now=timezone.now(),
        )

    assert (_snapshot(a), _snapshot(b)) == (before_a, before_b)


def _chat_objects(owner: Any, correlation_id: uuid.UUID) -> dict[str, Any]:
    from conversations.dispatch import job_build
    from inference.registry import get_model

    conversation = Conversation(owner=owner, title="Hi there", model="echo")
    messages = [
        Message(conversation=conversation, role="system", content="be brief", model="echo"),
        Message(conversation=conversation, role="user", content="Hi there", model="echo"),
        Message(
            conversation=conversation,
            role="assistant",
            status="queued",
            model="echo",
            queued_at=timezone.now(),
        ),
    ]
    job = job_build(
        message=messages[-1],
        spec=get_model("echo"),
        params={"max_tokens": 8, "stop": ["\n"]},
        priority=5,
        correlation_id=correlation_id,
    )
    received = event_build(
        conversation_id=0,
        kind=ConversationEvent.Kind.USER_QUERY_RECEIVED,
        correlation_id=correlation_id,
        payload={"chars": 16, "messages": 2},
    )
    queued = event_build(
        conversation_id=0,
        kind=ConversationEvent.Kind.INFERENCE_QUEUED,
        correlation_id=correlation_id,
        payload={"model": "echo", "queue": "llm.echo"},
    )
    return {
        "conversation": conversation,
        "messages": messages,
        "job": job,
        "received": received,
        "queued": queued,
    }


def test_a_chat_completions_rows_are_the_same_either_way():
    owner = UserFactory()
    correlation_id = uuid.uuid4()
    via_orm, via_sql = _chat_objects(owner, correlation_id), _chat_objects(owner, correlation_id)
    chat.chat_insert_orm(**via_orm)
    chat.chat_insert_sql(**via_sql)

    for objects in (via_orm, via_sql):
        # Both paths hand back the stored rows' keys, as the view needs them.
        assert objects["conversation"].pk and objects["job"].pk
        assert objects["job"].message_id == objects["messages"][-1].pk
        assert objects["queued"].payload["job_id"] == objects["job"].pk
        assert objects["received"].message_id == objects["messages"][-2].pk
        stored_job = InferenceJob.objects.get(pk=objects["job"].pk)
        assert stored_job.celery_task_id == objects["job"].celery_task_id
        assert ConversationEvent.objects.get(pk=objects["queued"].pk).payload["job_id"] == stored_job.pk
    snapshots = [_snapshot(objects["conversation"]) for objects in (via_orm, via_sql)]
    for snapshot in snapshots:
        for job in snapshot["jobs"]:
            job.pop("celery_task_id")  # a new task id per job
            job.pop("updated_at")
    assert snapshots[0] == snapshots[1]
    assert [m["role"] for m in snapshots[0]["messages"]] == ["system", "user", "assistant"]
    assert [e["kind"] for e in snapshots[0]["events"]] == ["user_query_received", "inference_queued"]
    assert [e["message_index"] for e in snapshots[0]["events"]] == [1, 2]
    # A chain: each message's parent is the one before it.
    assert [m["parent_index"] for m in snapshots[0]["messages"]] == [None, 0, 1]
    for objects in (via_orm, via_sql):
        messages = objects["messages"]
        assert [m.parent_id for m in messages] == [None, messages[0].pk, messages[1].pk]


def test_a_rule_compiled_once_takes_each_calls_values():
    from conversations.storage import _compile, where

    for stale in (timezone.now(), timezone.now() - timedelta(days=3)):
        assert where(InferenceJob, InferenceJob.claimable, stale_before=stale) == _compile(
            InferenceJob, InferenceJob.claimable(stale_before=stale)
        )
    for attempt in (1, 2, 7):
        assert where(InferenceJob, InferenceJob.held, attempt=attempt) == _compile(
            InferenceJob, InferenceJob.held(attempt=attempt)
        )
    assert where(Message, Message.in_history) == _compile(Message, Message.in_history())
