"""A job's queue message lost, or delivered more than once: the job ends, once."""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest

from conversations.dispatch import RUN_JOB_TASK
from conversations.models import ConversationEvent, InferenceJob
from inference.engines.simulated import simulated_tokens
from inference.requests import ChatMessage
from tests.conftest import wait_for
from tests.factories import ConversationFactory
from tests.faults.conftest import FaultStack, jobs_of, wait_until_final

pytestmark = [pytest.mark.faults, pytest.mark.django_db(transaction=True)]


def post(stack: FaultStack, api_user, content: str, max_tokens: int) -> dict:
    conversation = ConversationFactory(owner=api_user.user, model="echo")
    return stack.post(
        api_user.key, conversation.pk, {"content": content, "max_tokens": max_tokens, "ignore_eos": True}
    )


def queued_message(stack: FaultStack, task_id: str) -> tuple[str, str]:
    """The list and raw message of a job waiting in the queue."""
    for key in stack.redis_client.scan_iter("llm.echo*"):
        if stack.redis_client.type(key) != "list":
            continue
        for raw in stack.redis_client.lrange(key, 0, -1):
            if json.loads(raw)["headers"]["id"] == task_id:
                return key, raw
    raise AssertionError(f"no queued message for task {task_id}")


def in_broker(stack: FaultStack, task_id: str) -> bool:
    for key in stack.redis_client.scan_iter("llm.echo*"):
        if stack.redis_client.type(key) == "list" and any(
            json.loads(raw)["headers"]["id"] == task_id for raw in stack.redis_client.lrange(key, 0, -1)
        ):
            return True
    return any(json.loads(raw)[0]["headers"]["id"] == task_id for raw in stack.redis_client.hvals("unacked"))


def test_a_message_lost_by_a_worker_that_died_taking_it_is_published_again(healthy_stack, api_user):
    stack = healthy_stack
    # Every slot of both workers busy for a while: the next jobs wait in the queue.
    busy = [post(stack, api_user, f"busy {i}", 400)["job"]["id"] for i in range(8)]
    wait_for(lambda: all(j.state == "running" for j in jobs_of(busy).values()), timeout=20)
    taken, vanished = (post(stack, api_user, f"lost {i}", 20) for i in range(2))
    jobs = {job["job"]["id"]: job for job in (taken, vanished)}
    # A worker popped one and died before claiming it (the copy it recorded stays unacked),
    # and another died between popping one and recording it (kombu's two commands).
    for reply, record in ((taken, True), (vanished, False)):
        task_id = InferenceJob.objects.get(pk=reply["job"]["id"]).celery_task_id
        key, raw = queued_message(stack, task_id)
        assert stack.redis_client.lrem(key, 1, raw) == 1
        if record:
            stack.redis_client.hset(
                "unacked", f"tag-{task_id}", json.dumps([json.loads(raw), "llm.echo", "llm.echo"])
            )
            stack.redis_client.zadd("unacked_index", {f"tag-{task_id}": time.time()})

    finished = wait_until_final([*busy, *jobs], timeout=30)
    for pk, reply in jobs.items():
        job = finished[pk]
        assert (job.state, job.attempts) == ("succeeded", 1)
        content = reply["user_message"]["content"]
        assert job.message.content == "".join(
            simulated_tokens((ChatMessage("user", content),), 20, ignore_eos=True)
        )
    republished = ConversationEvent.objects.filter(kind="job_reconciled", payload__action="republished")
    assert sorted(republished.values_list("payload__job_id", flat=True)) == sorted(jobs)


def test_a_job_delivered_again_and_again_stores_one_answer_and_ends_its_stream_once(healthy_stack, api_user):
    stack = healthy_stack
    reply = post(stack, api_user, "only once", 300)
    job_id, conversation_id = reply["job"]["id"], reply["assistant_message"]["conversation_id"]
    job = InferenceJob.objects.get(pk=job_id)
    wait_for(lambda: jobs_of([job_id])[job_id].state == "running", timeout=20)

    def deliver_again() -> None:
        stack.celery.send_task(RUN_JOB_TASK, args=[job_id], queue="llm.echo", task_id=job.celery_task_id)

    for _ in range(3):  # while it runs...
        deliver_again()
    [done] = wait_until_final([job_id], timeout=30).values()
    deliver_again()  # ...and once it is done
    # Every copy taken and acknowledged: the last one too.
    wait_for(lambda: not in_broker(stack, job.celery_task_id), timeout=10)

    done.refresh_from_db()
    assert (done.state, done.attempts) == ("succeeded", 1)
    kinds = Counter(
        ConversationEvent.objects.filter(message_id=done.message_id).values_list("kind", flat=True)
    )
    assert (kinds["inference_started"], kinds["response_generated"]) == (1, 1)
    entries = stack.redis_client.xrange(f"llm:{{conv:{conversation_id}}}:events")
    events = Counter(json.loads(fields["e"])["event"] for _, fields in entries)
    assert (events["started"], events["completed"]) == (1, 1)
