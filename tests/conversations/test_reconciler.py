"""The reconciler's rules, one pass at a time, against the tests' Redis and database.

The jobs are of a queue nobody consumes, their workers' beats written by the
test, except for a cancel a live worker missed (the session's echo worker).
tests/faults runs the reconciler as a process against real faults.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from conversations.answers import Answer, answer_stash
from conversations.models import ConversationEvent, InferenceJob, Message
from conversations.reconciler import report
from conversations.reconciler.jobs import QueuedJobs, RunningJobs
from conversations.streams import store
from inference.liveness import Beat, worker_key
from llmproject.aio import LoopThread
from llmproject.redis_client import sync_redis_client
from tests.conftest import wait_for
from tests.factories import ConversationFactory

pytestmark = pytest.mark.django_db(transaction=True)

QUEUE = "llm.nobody"  # no worker consumes it: what is published there stays
TTL = 0.3


@pytest.fixture(autouse=True)
def _quick(settings: Any) -> Iterator[None]:
    settings.LLM_HEARTBEAT_TTL = TTL
    settings.LLM_RECONCILE_GRACE = 0.2
    redis = sync_redis_client()
    yield
    redis.delete(*[QUEUE, *(f"{QUEUE}:{step}" for step in range(1, 10))])
    for key in redis.scan_iter("llm:worker:test-*"):
        redis.delete(key)


@pytest.fixture
def streams() -> Iterator[LoopThread]:
    loop = LoopThread("test-streams")
    yield loop
    loop.stop()


def a_job(*, state: str, worker: str = "", started_ago: float = 1.0, **fields: Any) -> InferenceJob:
    conversation = ConversationFactory(model="nobody")
    Message.objects.create(conversation=conversation, role="user", content="hi")
    reply = Message.objects.create(
        conversation=conversation,
        role="assistant",
        status="streaming" if state == "running" else "queued",
        model="nobody",
        queued_at=timezone.now() - timedelta(seconds=started_ago + 1),
    )
    return InferenceJob.objects.create(
        message=reply,
        model="nobody",
        queue=QUEUE,
        state=state,
        attempts=1 if state == "running" else 0,
        worker=worker,
        started_at=timezone.now() - timedelta(seconds=started_ago) if state == "running" else None,
        celery_task_id=str(uuid.uuid4()),
        **fields,
    )


def beat(worker: str, *, at: float, jobs: set[int]) -> None:
    sync_redis_client().set(worker_key(worker), Beat(at=at, jobs=frozenset(jobs)).dumps())


def queued_task_ids() -> list[str]:
    return [json.loads(raw)["headers"]["id"] for raw in sync_redis_client().lrange(QUEUE, 0, -1)] + [
        json.loads(raw)["headers"]["id"]
        for step in range(1, 10)
        for raw in sync_redis_client().lrange(f"{QUEUE}:{step}", 0, -1)
    ]


def test_a_worker_is_judged_by_its_beats_changing_not_by_its_clock(streams):
    """A worker whose clock is an hour behind the reconciler's is alive while it beats; once
    its beat stops changing for the TTL, its job is taken back and published again."""
    worker = "test-nobody-0@far:1"
    job = a_job(state="running", worker=worker)
    rule = RunningJobs(redis=sync_redis_client(), streams=streams)
    skewed = time.time() - 3600
    for i in range(3):
        beat(worker, at=skewed + i, jobs={job.pk})
        rule.reconcile()
        time.sleep(TTL * 0.6)
    job.refresh_from_db()
    assert job.state == "running"

    time.sleep(TTL)  # no new beat
    rule.reconcile()
    job.refresh_from_db()
    assert (job.state, job.attempts, job.error_kind) == ("queued", 1, "worker_lost")
    assert queued_task_ids() == [job.celery_task_id]
    retried = ConversationEvent.objects.get(message_id=job.message_id, kind="inference_retrying")
    assert (retried.payload["worker"], retried.payload["by"]) == (worker, "reconciler")


def test_an_answer_its_worker_could_not_store_is_stored_from_its_stash_once(streams):
    """The worker is alive but no longer holds the job (its store failed and it gave up):
    the stashed answer is stored under the same attempt and announced."""
    worker = "test-nobody-0@here:2"
    job = a_job(state="running", worker=worker)
    now = timezone.now()
    answer = Answer("kept text", "stop", 3, 2, now, now, {"queued_ms": 1.0, "time_to_first_token_ms": 2.0,
                    "generation_ms": 3.0})  # fmt: skip
    assert answer_stash(job_id=job.pk, attempt=1, answer=answer)
    beat(worker, at=time.time(), jobs=set())  # a beat after the claim, without the job
    rule = RunningJobs(redis=sync_redis_client(), streams=streams)
    rule.reconcile()
    rule.reconcile()  # nothing more to do

    job.refresh_from_db()
    job.message.refresh_from_db()
    assert (job.state, job.attempts) == ("succeeded", 1)
    assert (job.message.status, job.message.content) == ("completed", "kept text")
    kinds = list(ConversationEvent.objects.filter(message_id=job.message_id).values_list("kind", flat=True))
    assert kinds.count("response_generated") == 1 and "job_reconciled" in kinds
    events = streams.run(store.events_since(job.message.conversation_id, 0))
    assert [(e["event"], e["content"]) for e in events] == [("completed", "kept text")]
    assert sync_redis_client().get(f"llm:answer:{job.pk}:1") is None


def test_the_cancel_of_a_job_whose_worker_died_keeps_the_text_its_clients_saw(streams):
    job = a_job(state="running", worker="test-nobody-0@gone:3", cancel_requested=True)
    conversation_id = job.message.conversation_id
    streams.run(
        store.publish_events(
            [
                (
                    conversation_id,
                    {"event": "started", "message_id": job.message_id, "job_id": job.pk, "attempt": 1},
                ),
                (
                    conversation_id,
                    {"event": "delta", "message_id": job.message_id, "text": "ab", "tokens": 1},
                ),
                (
                    conversation_id,
                    {"event": "delta", "message_id": job.message_id, "text": "cd", "tokens": 1},
                ),
            ]
        )
    )
    rule = RunningJobs(redis=sync_redis_client(), streams=streams)
    rule.reconcile()  # no beat on record: gone once missing for the TTL
    time.sleep(TTL + 0.05)
    rule.reconcile()

    job.refresh_from_db()
    job.message.refresh_from_db()
    assert (job.state, job.message.status, job.message.content) == ("cancelled", "cancelled", "abcd")
    last = streams.run(store.events_since(conversation_id, 0))[-1]
    assert (last["event"], last["content"]) == ("cancelled", "abcd")


def test_a_queued_job_whose_message_is_lost_is_published_again_once():
    job = a_job(state="queued")
    InferenceJob.objects.filter(pk=job.pk).update(updated_at=timezone.now() - timedelta(seconds=5))
    rule = QueuedJobs(broker=sync_redis_client(), redis=sync_redis_client())
    rule.reconcile()
    assert queued_task_ids() == []  # seen lost once: maybe between two commands of a worker
    rule.reconcile()
    assert queued_task_ids() == [job.celery_task_id]
    time.sleep(0.25)  # past the once-per-grace guard
    rule.reconcile()
    assert queued_task_ids() == [job.celery_task_id]  # it is there now: not published again
    actions = ConversationEvent.objects.filter(message_id=job.message_id, kind="job_reconciled")
    assert [e.payload["action"] for e in actions] == ["republished"]


@pytest.mark.worker
def test_a_cancel_its_live_worker_missed_is_sent_again(echo_worker, api_user, streams):
    """The cancel is stored but its broadcast never reached the worker (as when the
    broker was down as it was sent): the reconciler sends it again once the job has
    run on for CANCEL_RESEND seconds, and the job stops with the text streamed so far."""
    conversation = ConversationFactory(owner=api_user.user, model="echo")
    posted = api_user.client().post(
        f"/api/conversations/{conversation.pk}/messages/",
        {"content": "go on", "max_tokens": 3000, "ignore_eos": True},  # 30 s of answer
        format="json",
    )
    assert posted.status_code == 202, posted.content
    job = InferenceJob.objects.get(pk=posted.json()["job"]["id"])
    wait_for(lambda: store_tokens(streams, conversation.pk) > 0, timeout=20)
    # What job_cancel stores, without its broadcast; asked longer ago than CANCEL_RESEND.
    InferenceJob.objects.filter(pk=job.pk).update(
        cancel_requested=True, updated_at=timezone.now() - timedelta(seconds=6)
    )
    rule = RunningJobs(redis=sync_redis_client(), streams=streams)
    rule.reconcile()

    job = wait_for(lambda: InferenceJob.objects.filter(pk=job.pk, state="cancelled").first(), timeout=10)
    message = Message.objects.get(pk=job.message_id)
    assert message.status == "cancelled"
    assert 0 < len(message.content.split()) < 3000
    assert message.content.startswith("Echo: go on")
    actions = ConversationEvent.objects.filter(message_id=job.message_id, kind="job_reconciled")
    assert [e.payload["action"] for e in actions] == ["cancel_resent"]


def test_a_cancel_is_not_sent_again_before_its_worker_had_time_to_act(streams):
    job = a_job(state="running", worker="test-nobody-0@live:1", cancel_requested=True)
    beat("test-nobody-0@live:1", at=time.time(), jobs={job.pk})
    sends = report.totals[("cancel_resent", "nobody")]
    rule = RunningJobs(redis=sync_redis_client(), streams=streams)
    rule.reconcile()  # asked just now
    InferenceJob.objects.filter(pk=job.pk).update(updated_at=timezone.now() - timedelta(seconds=6))
    beat("test-nobody-0@live:1", at=time.time(), jobs={job.pk})
    rule.reconcile()  # sent again
    beat("test-nobody-0@live:1", at=time.time(), jobs={job.pk})
    rule.reconcile()  # sent less than CANCEL_RESEND ago: not yet

    assert report.totals[("cancel_resent", "nobody")] == sends + 1
    job.refresh_from_db()
    assert job.state == "running"  # its (pretend) worker is alive: nothing else is done to it
    actions = ConversationEvent.objects.filter(message_id=job.message_id, kind="job_reconciled")
    assert [e.payload["action"] for e in actions] == ["cancel_resent"]


def store_tokens(streams: LoopThread, conversation_id: int) -> int:
    events = streams.run(store.events_since(conversation_id, 0))
    return sum(e.get("tokens", 0) for e in events if e["event"] == "delta")
