"""The operators' admin, as an operator uses it: failures, jobs, conversations, API keys."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from conversations.authentication import api_key_user
from conversations.lifecycle import job_claim, job_fail, job_release
from conversations.models import ApiKey, InferenceJob, Message
from conversations.services import message_post
from tests.factories import ConversationFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator() -> Client:
    user = UserFactory(is_staff=True, is_superuser=True)
    user.save()  # the factory's password, which the session's hash is made of
    client = Client()
    client.force_login(user)
    return client


def queued_job(model: str = "echo", content: str = "hello") -> InferenceJob:
    """A job as the API stores it (not published: the test's transaction never commits)."""
    conversation = ConversationFactory(model=model)
    return message_post(conversation=conversation, content=content).job


def failed_after_two_attempts(model: str = "echo") -> InferenceJob:
    job = queued_job(model)
    try:
        raise ConnectionResetError("engine connection reset")
    except ConnectionResetError as exc:
        first = exc
    claim = job_claim(job_id=job.pk, worker="echo-0@host-a")
    assert claim is not None
    job_release(
        claim=claim, error=str(first), error_kind=InferenceJob.ErrorKind.TRANSIENT, traceback="Traceback A"
    )
    claim = job_claim(job_id=job.pk, worker="echo-0@host-b")
    assert claim is not None
    job_fail(
        job_id=job.pk,
        error="engine connection reset (gave up after 2 attempts)",
        error_kind=InferenceJob.ErrorKind.TRANSIENT,
        traceback="Traceback B",
        attempt=claim.attempt,
    )
    job.refresh_from_db()
    return job


def action(client: Client, url: str, name: str, ids: list[int]) -> Any:
    return client.post(url, {"action": name, "_selected_action": [str(i) for i in ids]}, follow=True)


def test_a_failures_page_shows_each_attempts_worker_error_and_traceback(operator):
    job = failed_after_two_attempts()
    page = operator.get(f"/admin/conversations/jobfailure/{job.pk}/change/").content.decode()

    for expected in ("echo-0@host-a", "echo-0@host-b", "Traceback A", "Traceback B", "retried", "failed"):
        assert expected in page
    assert "engine connection reset (gave up after 2 attempts)" in page
    # The message and conversation it belongs to, and the conversation's event log in order.
    assert f"/admin/conversations/message/{job.message_id}/change/" in page
    assert f"/admin/conversations/conversation/{job.message.conversation_id}/change/" in page
    logged = re.findall(r"<td>((?:user|inference)_[a-z_]+)</td>", page)
    assert logged == [
        "user_query_received",
        "inference_queued",
        "inference_started",
        "inference_retrying",
        "inference_started",
        "inference_failed",
    ]


def test_the_failures_list_counts_failures_per_model_in_the_last_hour_and_filters(operator):
    failed_after_two_attempts("echo")
    failed_after_two_attempts("echo")
    spare = failed_after_two_attempts("spare")
    old = failed_after_two_attempts("spare")
    InferenceJob.objects.filter(pk=old.pk).update(failed_at=timezone.now() - timezone.timedelta(hours=2))
    queued_job("echo")  # never failed: not a failure

    page = operator.get("/admin/conversations/jobfailure/")
    assert page.context["failures_last_hour"] == {"echo": 2, "spare": 1}
    assert page.context["cl"].result_count == 4

    by_model = operator.get("/admin/conversations/jobfailure/?model=spare&failed_within=1h")
    assert [j.pk for j in by_model.context["cl"].result_list] == [spare.pk]
    by_kind = operator.get("/admin/conversations/jobfailure/?error_kind=timeout")
    assert by_kind.context["cl"].result_count == 0


def test_mark_resolved_closes_a_failure_once(operator):
    job = failed_after_two_attempts()
    url = "/admin/conversations/jobfailure/"
    assert "1 failure(s) marked resolved" in action(operator, url, "mark_resolved", [job.pk]).content.decode()
    assert "0 failure(s) marked resolved" in action(operator, url, "mark_resolved", [job.pk]).content.decode()
    unresolved = operator.get(f"{url}?resolved=no")
    assert unresolved.context["cl"].result_count == 0


def test_cancel_selected_cancels_a_queued_job_and_skips_a_finished_one(operator):
    queued, failed = queued_job(), failed_after_two_attempts()
    response = action(
        operator, "/admin/conversations/inferencejob/", "cancel_selected", [queued.pk, failed.pk]
    )
    text = response.content.decode()
    assert "1 job(s) cancelled" in text and "1 job(s) skipped: already finished" in text
    queued.refresh_from_db()
    assert queued.state == "cancelled"
    assert Message.objects.get(pk=queued.message_id).status == "cancelled"


def test_a_conversation_shows_each_answers_job_state_and_timings(operator):
    job = failed_after_two_attempts()
    page = operator.get(f"/admin/conversations/conversation/{job.message.conversation_id}/change/")
    text = page.content.decode()
    assert f"#{job.pk} failed (2 attempts)" in text
    assert "Queued → started / first token / done" in text
    assert "inference_failed" in text  # its event log


def test_messages_and_jobs_cannot_be_added_from_the_admin(operator):
    for model in ("message", "inferencejob", "jobfailure", "conversationevent"):
        assert operator.get(f"/admin/conversations/{model}/add/").status_code == 403
    index = operator.get("/admin/").content.decode()
    assert "/admin/conversations/message/add/" not in index
    assert "/admin/conversations/inferencejob/add/" not in index


def test_adding_an_api_key_shows_it_once_and_it_works(operator):
    owner = UserFactory()
    response = operator.post("/admin/conversations/apikey/add/", {"user": owner.pk, "name": "ci"})
    assert response.status_code == 200
    raw = response.context["raw_key"]
    assert raw.startswith("llm-") and raw in response.content.decode()
    assert "no-store" in response["Cache-Control"]
    assert api_key_user(raw=raw) == owner
    key = ApiKey.objects.get(user=owner)
    assert key.name == "ci" and raw not in key.key_hash
    # Never shown again: not on its page, not in the list.
    assert raw not in operator.get(f"/admin/conversations/apikey/{key.pk}/change/").content.decode()
    assert raw not in operator.get("/admin/conversations/apikey/").content.decode()


def test_revoking_api_keys_is_an_action(operator, settings):
    settings.API_KEY_CACHE_SECONDS = 0
    owner = UserFactory()
    raw = operator.post("/admin/conversations/apikey/add/", {"user": owner.pk, "name": ""}).context["raw_key"]
    assert api_key_user(raw=raw) == owner
    key = ApiKey.objects.get(user=owner)
    response = action(operator, "/admin/conversations/apikey/", "revoke_selected", [key.pk])
    assert "1 key(s) revoked" in response.content.decode()
    assert api_key_user(raw=raw) is None


def test_the_failures_list_shows_each_models_circuit_breaker(operator, settings):
    import redis

    from inference.breaker import breaker_key, breaker_record_failure

    client = redis.Redis.from_url(settings.REDIS_URL)
    client.delete(breaker_key("spare"))
    settings.LLM_BREAKER_FAILURES = 1
    try:
        assert breaker_record_failure(model="spare", error="vLLM engine died: CUDA error")
        page = operator.get("/admin/conversations/jobfailure/")
        breakers = {b.model: b for b in page.context["breakers"]}
        assert breakers["spare"].state == "open" and breakers["echo"].state == "closed"
        html = page.content.decode()
        assert "<strong>open</strong>" in html and "vLLM engine died: CUDA error" in html
    finally:
        client.delete(breaker_key("spare"))
        client.close()
