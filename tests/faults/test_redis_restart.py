"""Redis restarts mid-stream: every job ends once, and every client ends with the stored answer."""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime

import pytest

from conversations.models import ConversationEvent
from inference.engines.simulated import simulated_tokens
from inference.requests import ChatMessage
from tests.conftest import wait_for
from tests.factories import ConversationFactory
from tests.faults.conftest import FaultStack, StreamWatcher, jobs_of, wait_until_final

pytestmark = [pytest.mark.faults, pytest.mark.django_db(transaction=True)]

TOKENS = 250  # about 3 s of answer: they end while Redis is away


def post(stack: FaultStack, api_user, n: int, label: str) -> dict[int, tuple[int, str]]:
    """``n`` jobs, a conversation each: job id -> (conversation id, prompt)."""
    posted = {}
    for i in range(n):
        conversation = ConversationFactory(owner=api_user.user, model="echo")
        content = f"{label} {i}"
        reply = stack.post(
            api_user.key, conversation.pk, {"content": content, "max_tokens": TOKENS, "ignore_eos": True}
        )
        posted[reply["job"]["id"]] = (conversation.pk, content)
    return posted


def finals_in_stream(stack: FaultStack, conversation_id: int) -> Counter[str]:
    entries = stack.redis_client.xrange(f"llm:{{conv:{conversation_id}}}:events")
    events = [json.loads(fields["e"]) for _, fields in entries]
    return Counter(e["event"] for e in events if e["event"] in ("completed", "failed", "cancelled"))


def assert_each_job_ended_once(
    stack: FaultStack, posted: dict[int, tuple[int, str]], timeout: float, outage: tuple[datetime, datetime]
) -> None:
    jobs = wait_until_final(list(posted), timeout=timeout)
    down, up = outage
    # The fault bit: answers were stored (and their last events sent) while Redis was away.
    assert any(down < job.message.finished_at < up for job in jobs.values())
    for pk, job in jobs.items():
        _, content = posted[pk]
        expected = "".join(simulated_tokens((ChatMessage("user", content),), TOKENS, ignore_eos=True))
        assert (job.state, job.message.status, job.message.content) == ("succeeded", "completed", expected), (
            pk
        )
    stored = Counter(
        ConversationEvent.objects.filter(
            kind="response_generated", message__job__in=list(posted)
        ).values_list("message__job", flat=True)
    )
    assert stored == Counter(list(posted)), "one stored answer per job"


def assert_clients_end_with_the_stored_answer(
    stack: FaultStack, watchers: dict[int, StreamWatcher], posted: dict[int, tuple[int, str]]
) -> None:
    jobs = jobs_of(list(watchers))
    for pk, watcher in watchers.items():
        message = jobs[pk].message
        final = wait_for(lambda w=watcher, m=message: w.final(m.pk), timeout=20)
        assert (final["event"], final["content"]) == ("completed", message.content)
        assert watcher.connections >= 2, "the client reconnected"
        assert finals_in_stream(stack, posted[pk][0]) == {"completed": 1}


def restart_mid_stream(
    stack: FaultStack,
    watchers: dict[int, StreamWatcher],
    posted: dict[int, tuple[int, str]],
    *,
    persistent: bool,
) -> None:
    """Once every watcher has had a few deltas, restart Redis (away long enough for the
    answers to end meanwhile: their last events find no Redis); then every job ended once
    and every watcher, reconnected, ends with its stored answer."""
    try:
        wait_for(lambda: all(sum(e["event"] == "delta" for e in w.events) >= 3 for w in watchers.values()))
        outage = stack.restart_redis(persistent=persistent, down_for=4)
        for watcher in watchers.values():
            watcher.reconnect()
        assert_each_job_ended_once(stack, posted, timeout=30, outage=outage)
        assert_clients_end_with_the_stored_answer(stack, watchers, posted)
    finally:
        for watcher in watchers.values():
            watcher.close()


def test_a_redis_restart_with_persistence_loses_no_job_and_no_client_misses_its_answer(
    healthy_stack, api_user
):
    stack = healthy_stack
    if not stack.redis.persistent:
        stack.restart_redis(persistent=True, down_for=0)
        stack.ensure_healthy()
    posted = post(stack, api_user, 4, "kept")
    watchers = {pk: stack.watch(api_user.key, conversation_id) for pk, (conversation_id, _) in posted.items()}
    restart_mid_stream(stack, watchers, posted, persistent=True)


def test_a_redis_restart_without_persistence_loses_no_job_and_no_client_misses_its_answer(
    healthy_stack, api_user
):
    stack = healthy_stack
    # Two workers of four slots: eight answers run, four wait in the queue.
    posted = post(stack, api_user, 12, "lost")
    running = wait_for(
        lambda: (
            len(r := [pk for pk, job in jobs_of(list(posted)).items() if job.state == "running"]) == 8 and r
        )
    )
    assert sum(j.state == "queued" for j in jobs_of(list(posted)).values()) == 4
    watchers = {pk: stack.watch(api_user.key, posted[pk][0]) for pk in running[:2]}
    restart_mid_stream(stack, watchers, posted, persistent=False)
    republished = ConversationEvent.objects.filter(
        kind="job_reconciled", payload__action="republished", message__job__in=list(posted)
    ).count()
    assert republished >= 4, "the queued jobs' messages were lost with Redis and published again"
