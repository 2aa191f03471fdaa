"""Publishing jobs: after commit, to the model's queue, and what happens when the broker is down."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from conversations.models import ConversationEvent, InferenceJob, Message
from llmproject.celery import app as celery_app
from tests.factories import ConversationFactory

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def broker_down() -> Iterator[None]:
    """Point the Celery app at a port where nothing listens."""
    original = celery_app.conf.broker_url
    celery_app.conf.broker_url = "redis://127.0.0.1:1/0"
    celery_app._after_fork()  # drop the cached connection and producer pools
    yield
    celery_app.conf.broker_url = original
    celery_app._after_fork()


def test_when_the_broker_is_down_the_post_is_a_503_and_nothing_is_lost(api_user, broker_down):
    conversation = ConversationFactory(owner=api_user.user)
    response = api_user.client().post(
        f"/api/conversations/{conversation.pk}/messages/", {"content": "hello?"}
    )

    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    assert "queue is unavailable" in response.json()["detail"]
    user_message, reply = Message.objects.filter(conversation=conversation).order_by("id")
    assert user_message.content == "hello?"
    assert (reply.status, reply.error) == (
        "failed",
        "the job queue is unavailable; the message was not queued",
    )
    assert InferenceJob.objects.get(message=reply).state == "failed"
    assert ConversationEvent.objects.filter(message=reply, kind="inference_failed").exists()


def test_a_cancel_stands_when_redis_cannot_take_its_event(api_user, settings):
    # "spare" has no worker: the job stays queued until cancelled.
    conversation = ConversationFactory(owner=api_user.user, model="spare")
    client = api_user.client()
    posted = client.post(f"/api/conversations/{conversation.pk}/messages/", {"content": "hello?"}).json()
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # the stream store is gone; nothing listens there

    response = client.post(f"/api/jobs/{posted['job']['id']}/cancel/")

    assert response.status_code == 202
    assert response.json()["state"] == "cancelled"
    reply = Message.objects.get(pk=posted["assistant_message"]["id"])
    assert reply.status == "cancelled"
    assert ConversationEvent.objects.filter(message=reply, kind="inference_cancelled").exists()


def test_the_cancel_of_a_running_job_stands_when_the_broker_cannot_broadcast_it(api_user, broker_down):
    """The reconciler sends it again (tests/conversations/test_reconciler.py)."""
    conversation = ConversationFactory(owner=api_user.user, model="spare")
    reply = Message.objects.create(
        conversation=conversation, role="assistant", status="streaming", model="spare"
    )
    job = InferenceJob.objects.create(
        message=reply, model="spare", queue="llm.spare", state="running", attempts=1, worker="spare-0@x:1"
    )

    response = api_user.client().post(f"/api/jobs/{job.pk}/cancel/")

    assert response.status_code == 202, response.content
    job.refresh_from_db()
    assert (job.state, job.cancel_requested) == ("running", True)
