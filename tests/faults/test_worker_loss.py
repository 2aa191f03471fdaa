"""A worker killed mid-answer: its jobs run again within seconds, once; a cancel still ends them."""

from __future__ import annotations

import re
import time
from collections import Counter

import httpx
import pytest

from conversations.models import ConversationEvent, InferenceJob
from inference.engines.simulated import simulated_tokens
from inference.requests import ChatMessage
from tests.conftest import wait_for
from tests.factories import ConversationFactory
from tests.faults.conftest import FaultStack, StackWorker, jobs_of, wait_until_final

pytestmark = [pytest.mark.faults, pytest.mark.django_db(transaction=True)]

# About 6 s of answer on the stack's workers: long enough to be killed twice.
LONG = {"max_tokens": 600, "ignore_eos": True}


def expected(content: str, max_tokens: int) -> str:
    return "".join(simulated_tokens((ChatMessage("user", content),), max_tokens, ignore_eos=True))


def post_jobs(stack: FaultStack, api_user, n: int, label: str) -> dict[int, str]:
    """``n`` long jobs, each in a conversation of its own: job id -> its prompt."""
    jobs = {}
    for i in range(n):
        conversation = ConversationFactory(owner=api_user.user, model="echo")
        content = f"{label} {i}"
        jobs[stack.post(api_user.key, conversation.pk, {"content": content, **LONG})["job"]["id"]] = content
    return jobs


def worker_running_most(stack: FaultStack, job_ids: list[int]) -> StackWorker:
    """Once every job of ``job_ids`` runs: the worker that runs most of them."""
    jobs = wait_for(
        lambda: (j := jobs_of(job_ids)) and all(job.state == "running" for job in j.values()) and j,
        timeout=30,
    )
    busiest, _ = Counter(job.worker for job in jobs.values()).most_common(1)[0]
    job = next(job for job in jobs.values() if job.worker == busiest)
    worker = next(w for w in stack.workers if w.runs(job))
    worker.wait_ready()
    return worker


def kill(stack: FaultStack, worker: StackWorker, among: list[int]) -> tuple[list[int], list[float]]:
    """SIGKILL ``worker`` (its sibling up) and start it again, as its supervisor would.
    Returns the jobs of ``among`` it was running, and the seconds from the kill to each
    one's next attempt starting (or, at its attempt cap, to its failure)."""
    for sibling in stack.workers:
        if sibling is not worker:
            sibling.wait_ready()
    killed_at = worker.kill()
    victims = {
        pk: job.attempts for pk, job in jobs_of(among).items() if job.state == "running" and worker.runs(job)
    }
    worker.respawn()
    moved_on = wait_for(
        lambda: (
            (j := jobs_of(list(victims)))
            and all(
                job.state == "failed" or (job.attempts > victims[pk] and job.state != "queued")
                for pk, job in j.items()
            )
            and j
        ),
        timeout=30,
    )
    return list(victims), [
        (job.finished_at if job.state == "failed" else job.started_at).timestamp() - killed_at
        for job in moved_on.values()
    ]


def test_a_killed_workers_jobs_run_again_within_seconds_and_a_job_killed_at_each_attempt_fails(
    healthy_stack, api_user
):
    stack = healthy_stack
    prompts = post_jobs(stack, api_user, 4, "kill me")
    victims: list[int] = list(prompts)
    kills: Counter[int] = Counter()
    recovery: list[float] = []
    # Three kills in a row, each of the worker that runs the job killed most so far:
    # that job dies at each of its three attempts.
    for _ in range(3):
        target = max(victims, key=lambda pk: kills[pk])
        victims, took = kill(stack, worker_running_most(stack, [target]), list(prompts))
        kills.update(victims)
        recovery += took

    jobs = wait_until_final(list(prompts), timeout=60)
    max_attempts = 3  # LLM_MAX_ATTEMPTS
    assert max(kills.values()) == max_attempts
    for pk, job in jobs.items():
        if kills[pk] >= max_attempts:
            # Its workers died at every attempt: it fails, it does not loop.
            assert (job.state, job.attempts, job.message.status) == ("failed", max_attempts, "failed")
            assert "gave up after 3 attempts: its worker" in job.last_error
            assert job.message.error == job.last_error
        else:
            assert (job.state, job.message.status) == ("succeeded", "completed"), (pk, job.last_error)
            assert job.attempts == 1 + kills[pk]
            assert job.message.content == expected(prompts[pk], LONG["max_tokens"])
    answers = Counter(
        ConversationEvent.objects.filter(
            kind="response_generated", message__job__in=list(prompts)
        ).values_list("message__job", flat=True)
    )
    assert answers == Counter(pk for pk, job in jobs.items() if job.state == "succeeded"), "one answer each"
    print(
        f"\nSIGKILL -> the worker's jobs running again on another worker (or failed at their attempt "
        f"cap), {len(recovery)} jobs over 3 kills, LLM_HEARTBEAT_TTL=6, LLM_RECONCILE_INTERVAL=1: "
        f"mean {sum(recovery) / len(recovery):.1f} s, max {max(recovery):.1f} s"
    )
    assert max(recovery) < 15

    # What the reconciler did is on its metrics port, which Prometheus finds with the workers'.
    targets = httpx.get(f"{stack.base_url}/metrics/targets", timeout=10).json()
    [reconciler] = [t for t in targets if t["labels"]["worker"].startswith("reconciler@")]
    page = httpx.get(f"http://{reconciler['targets'][0]}/metrics", timeout=10).text
    requeued = re.search(r'^llm_reconciler_actions_total\{kind="requeued",model="echo"\} (\S+)$', page, re.M)
    assert requeued and float(requeued.group(1)) >= sum(k - 1 for k in kills.values() if k)


def test_a_cancel_asked_after_its_worker_died_ends_the_job_with_the_text_its_client_saw(
    healthy_stack, api_user
):
    stack = healthy_stack
    conversation = ConversationFactory(owner=api_user.user, model="echo")
    watcher = stack.watch(api_user.key, conversation.pk)
    try:
        posted = stack.post(
            api_user.key, conversation.pk, {"content": "stop me", "max_tokens": 3000, "ignore_eos": True}
        )
        job_id, message_id = posted["job"]["id"], posted["assistant_message"]["id"]
        wait_for(lambda: sum(e["event"] == "delta" for e in watcher.events) >= 5, timeout=20)
        job = InferenceJob.objects.get(pk=job_id)
        worker = next(w for w in stack.workers if w.runs(job))
        worker.kill()
        response = stack.cancel(api_user.key, job_id)
        assert response.status_code == 202, response.text

        asked = time.monotonic()
        [job] = wait_until_final([job_id], timeout=30).values()
        took = time.monotonic() - asked
        final = wait_for(lambda: watcher.final(message_id), timeout=10)
    finally:
        watcher.close()
    assert (job.state, job.attempts, job.message.status) == ("cancelled", 1, "cancelled")
    streamed = "".join(e["text"] for e in watcher.events if e["event"] == "delta")
    assert streamed and job.message.content == streamed
    assert (final["event"], final["content"]) == ("cancelled", streamed)
    print(f"\ncancel of a job whose worker died: cancelled {took:.1f} s after the request")
