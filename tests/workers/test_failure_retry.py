"""A failed job, retried by an operator from the admin, runs again on the real worker."""

from __future__ import annotations

import re
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from django.db import transaction
from django.test import Client

from conversations.lifecycle import job_fail
from conversations.models import InferenceJob, Message
from conversations.services import message_post
from inference.engines.simulated import TRANSIENT_MARKER
from tests.factories import ConversationFactory, UserFactory
from tests.workers.test_pipeline import connect, events_until_final, post

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def operator() -> Client:
    user = UserFactory(is_staff=True, is_superuser=True)
    user.save()
    client = Client()
    client.force_login(user)
    return client


def retry(client: Client, job_id: int) -> str:
    response = client.post(
        "/admin/conversations/jobfailure/",
        {"action": "retry_selected", "_selected_action": [str(job_id)]},
        follow=True,
    )
    return response.content.decode()


def failed_job_of(owner: Any) -> InferenceJob:
    """A job that failed for good while queued (as when its worker died on every attempt):
    its message reaches the worker, which finds it failed and drops it."""
    conversation = ConversationFactory(owner=owner, model="echo")
    with transaction.atomic():
        job = message_post(conversation=conversation, content="hello again").job
        job_fail(
            job_id=job.pk,
            error="gave up after 3 attempts (a worker running it may have died)",
            error_kind=InferenceJob.ErrorKind.WORKER_LOST,
        )
    return job


async def test_a_retried_job_runs_again_and_its_clients_see_it_start(echo_worker, api_user):
    job = await database_sync_to_async(failed_job_of)(api_user.user)
    ws = await connect(job.message.conversation_id, api_user.key, "?after=0")
    replayed = await events_until_final(ws)
    assert replayed[-1]["event"] == "failed"

    client = await sync_to_async(operator)()
    first, second = await sync_to_async(retry)(client, job.pk), await sync_to_async(retry)(client, job.pk)
    assert "1 job(s) queued again" in first
    assert "1 job(s) skipped: not failed (already retried?)" in second  # idempotent

    events = await events_until_final(ws)
    await ws.disconnect()
    assert events[0]["event"] == "started"
    assert events[-1]["event"] == "completed"
    assert events[-1]["content"].startswith("Echo: hello again")
    stored = await database_sync_to_async(InferenceJob.objects.select_related("message").get)(pk=job.pk)
    assert (stored.state, stored.message.status) == ("succeeded", Message.Status.COMPLETED)
    assert stored.failed_at is not None  # still on the failures list, now succeeded

    page = await sync_to_async(lambda: client.get(f"/admin/conversations/jobfailure/{job.pk}/change/"))()
    logged = re.findall(r"<td>((?:inference|response)_[a-z_]+)</td>", page.content.decode())
    assert logged == [
        "inference_queued",
        "inference_failed",
        "inference_requeued",
        "inference_started",
        "response_generated",
    ]


async def test_each_attempt_of_a_flaky_job_keeps_its_error_and_traceback(echo_worker, api_user):
    conversation = await database_sync_to_async(ConversationFactory)(owner=api_user.user)
    ws = await connect(conversation.pk, api_user.key)
    posted = await post(api_user, conversation.pk, {"content": f"flaky {TRANSIENT_MARKER}"})
    while (await ws.receive_json_from(timeout=30))["event"] != "failed":
        pass
    await ws.disconnect()

    client = await sync_to_async(operator)()
    job_id = posted["job"]["id"]
    page = (
        await sync_to_async(client.get)(f"/admin/conversations/jobfailure/{job_id}/change/")
    ).content.decode()
    attempts = re.findall(r"<tr><td>(\d)</td><td>([^<]+)</td>.*?</tr>", page, re.S)
    # A worker's id: Celery's node name and its process id.
    assert [(n, worker.rsplit(":", 1)[0]) for n, worker in attempts] == [
        (str(i), echo_worker.name) for i in (1, 2, 3)
    ]
    assert page.count("simulated transient engine error") >= 3
    assert page.count("<summary>traceback</summary>") == 3
    assert "raise item" in page  # the engine's frame, where the error was raised
    job = await database_sync_to_async(InferenceJob.objects.get)(pk=job_id)
    assert job.error_kind == InferenceJob.ErrorKind.TRANSIENT
