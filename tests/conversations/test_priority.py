"""Priority orders the queue: a high-priority job posted behind a backlog starts first.

A real worker for ``spare`` that runs one job at a time (its engine's
``max_num_seqs`` is 1, so the threads pool's concurrency and its prefetch are
1: it never holds a job it cannot start). That is the case priority is for:
a saturated worker, with jobs waiting. A worker with free slots starts every
waiting job at once, and then order does not matter.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from django.conf import settings

from conversations.admission import queue_keys
from conversations.authentication import api_key_create
from conversations.models import ApiKey, InferenceJob
from inference.registry import get_model
from tests.conftest import WorkerProcess, registry_with, wait_for, worker_running
from tests.factories import ConversationFactory

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def forget_spare_queue() -> None:
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.delete("llm:admitting:spare", *queue_keys(get_model("spare")))
    client.close()


@pytest.fixture(scope="module")
def one_at_a_time_worker(django_db_blocker, tmp_path_factory) -> Iterator[WorkerProcess]:
    forget_spare_queue()
    log = tmp_path_factory.mktemp("priority") / "spare.log"
    try:
        with worker_running(
            django_db_blocker, "spare", log, LLM_MODELS=registry_with("spare", max_num_seqs=1)
        ) as worker:
            yield worker
    finally:
        forget_spare_queue()


def started_order(job_ids: list[int]) -> list[int]:
    jobs = wait_for(
        lambda: (
            list(InferenceJob.objects.filter(pk__in=job_ids, state="succeeded").order_by("started_at"))
            if InferenceJob.objects.filter(pk__in=job_ids, state="succeeded").count() == len(job_ids)
            else None
        ),
        timeout=60,
    )
    return [job.pk for job in jobs]


def post(client, conversation, **fields) -> int:
    response = client.post(
        f"/api/conversations/{conversation.pk}/messages/",
        {"content": "work", "max_tokens": 20, "ignore_eos": True, **fields},
    )
    assert response.status_code == 202, response.content
    return response.json()["job"]["id"]


def test_a_high_priority_job_starts_before_a_backlog_of_low_priority_ones(one_at_a_time_worker, api_user):
    conversation = ConversationFactory(owner=api_user.user, model="spare")
    client = api_user.client()
    one_at_a_time_worker.pause()
    try:
        low = [post(client, conversation, priority=0) for _ in range(4)]
        high = post(client, conversation, priority=9)
        normal = post(client, conversation)  # priority 5 by default
    finally:
        one_at_a_time_worker.resume()
    assert started_order([*low, high, normal]) == [high, normal, *low]


def test_a_keys_default_priority_orders_its_jobs_when_a_request_names_none(one_at_a_time_worker, api_user):
    urgent_key, raw = api_key_create(user=api_user.user, name="urgent")
    ApiKey.objects.filter(pk=urgent_key.pk).update(default_priority=8)
    conversation = ConversationFactory(owner=api_user.user, model="spare")
    client, urgent = api_user.client(), api_user.client()
    urgent.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    one_at_a_time_worker.pause()
    try:
        usual = [post(client, conversation) for _ in range(3)]
        first = post(urgent, conversation)
        explicit = post(urgent, conversation, priority=1)  # a request's own priority wins
    finally:
        one_at_a_time_worker.resume()
    assert InferenceJob.objects.get(pk=first).priority == 8
    assert started_order([*usual, first, explicit]) == [first, *usual, explicit]
