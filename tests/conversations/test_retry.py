"""A person's retry of their own failed answer (``POST /api/jobs/<id>/retry/``)."""

from __future__ import annotations

import pytest
import redis
from django.conf import settings

from conversations.dispatch import job_retry
from conversations.lifecycle import job_fail
from conversations.models import ConversationEvent, InferenceJob, Message
from inference.breaker import breaker_key, breaker_record_failure
from tests.factories import ConversationFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def failed_job(api_user):
    # In a test's transaction nothing commits, so nothing is published: rows only.
    conversation = ConversationFactory(owner=api_user.user, model="spare")
    posted = (
        api_user.client().post(f"/api/conversations/{conversation.pk}/messages/", {"content": "hi"}).json()
    )
    job = InferenceJob.objects.get(pk=posted["job"]["id"])
    Message.objects.filter(pk=job.message_id).update(content="half an answer")
    job_fail(job_id=job.pk, error="the engine fell over", error_kind=InferenceJob.ErrorKind.PERMANENT)
    return job


def test_a_failed_answer_is_retried_in_place(api_user, failed_job):
    response = api_user.client().post(f"/api/jobs/{failed_job.pk}/retry/")

    assert response.status_code == 202, response.content
    assert response.json()["state"] == "queued"
    assert response.json()["queue_position"] == 1
    reply = Message.objects.get(pk=failed_job.message_id)
    assert (reply.status, reply.content, reply.error) == ("queued", "", "")
    requeued = ConversationEvent.objects.get(kind="inference_requeued", message=reply)
    assert requeued.payload["by"] == f"user {api_user.user.username}"


def test_only_a_failed_answer_is_retried(api_user, failed_job):
    assert job_retry(job=failed_job)  # queued again
    response = api_user.client().post(f"/api/jobs/{failed_job.pk}/retry/")
    assert response.status_code == 409
    assert response.json()["code"] == "job_not_failed"


def test_nobody_retries_someone_elses_answer(make_api_user, failed_job):
    assert make_api_user().client().post(f"/api/jobs/{failed_job.pk}/retry/").status_code == 404
    assert InferenceJob.objects.get(pk=failed_job.pk).state == "failed"


def test_no_retry_while_the_models_breaker_is_open(api_user, failed_job):
    for _ in range(settings.LLM_BREAKER_FAILURES):
        breaker_record_failure(model="spare", error="the engine fell over")
    try:
        response = api_user.client().post(f"/api/jobs/{failed_job.pk}/retry/")
    finally:
        client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
        client.delete(breaker_key("spare"))
        client.close()

    assert response.status_code == 503
    assert response["Retry-After"]
    assert InferenceJob.objects.get(pk=failed_job.pk).state == "failed"
