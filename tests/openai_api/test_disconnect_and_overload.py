"""Clients that go away mid-answer, and a model whose queue is full."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
from django.db import connection, transaction

from conversations.dispatch import job_abandon
from conversations.models import InferenceJob
from inference.engines.simulated import simulated_tokens
from inference.requests import ChatMessage
from tests.conftest import registry_with, wait_for, worker_running
from tests.openai_api.conftest import start_server

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def open_stream(base_url: str, key: str, body: dict) -> tuple[httpx.Client, httpx.Response]:
    http = httpx.Client(timeout=30)
    request = http.build_request(
        "POST", f"{base_url}/chat/completions", headers={"Authorization": f"Bearer {key}"}, json=body
    )
    response = http.send(request, stream=True)
    assert response.status_code == 200, response.read()
    return http, response


def first_chunks(response: httpx.Response, n: int) -> list[dict]:
    chunks = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            chunks.append(json.loads(line.removeprefix("data: ")))
            if len(chunks) == n:
                return chunks
    raise AssertionError("the stream ended early")


def test_a_disconnect_mid_stream_cancels_the_job_and_frees_the_slot(openai_server, echo_worker, api_user):
    http, response = open_stream(
        openai_server.base_url,
        api_user.key,
        {
            "model": "echo",
            "messages": [{"role": "user", "content": "a very long answer"}],
            "max_tokens": 3000,  # about 30 s on the echo worker
            "ignore_eos": True,
            "stream": True,
        },
    )
    chunks = first_chunks(response, 3)
    response.close()
    http.close()
    closed = time.monotonic()

    job = InferenceJob.objects.select_related("message").get(
        pk=int(chunks[0]["id"].removeprefix("chatcmpl-"))
    )
    wait_for(lambda: InferenceJob.objects.get(pk=job.pk).state == "cancelled", timeout=10)
    assert time.monotonic() - closed < 5
    message = job.message
    message.refresh_from_db()
    assert message.status == "cancelled"
    assert 3 <= message.completion_tokens < 3000
    assert message.content.startswith("".join(c["choices"][0]["delta"]["content"] for c in chunks))
    wait_for(lambda: echo_worker.engine_stats()["running"] == 0, timeout=10)


def test_with_continue_on_disconnect_the_answer_is_finished_and_stored(openai_server, api_user):
    messages = [{"role": "user", "content": "keep going without me"}]
    http, response = open_stream(
        openai_server.base_url,
        api_user.key,
        {
            "model": "echo",
            "messages": messages,
            "max_tokens": 150,
            "ignore_eos": True,
            "stream": True,
            "continue_on_disconnect": True,
        },
    )
    chunk = first_chunks(response, 1)[0]
    response.close()
    http.close()

    job_id = int(chunk["id"].removeprefix("chatcmpl-"))
    wait_for(lambda: InferenceJob.objects.get(pk=job_id).state != "running", timeout=20)
    job = InferenceJob.objects.select_related("message").get(pk=job_id)
    assert (job.state, job.message.status, job.message.completion_tokens) == ("succeeded", "completed", 150)
    chat = (ChatMessage("user", messages[0]["content"]),)
    assert job.message.content == "".join(simulated_tokens(chat, 150, ignore_eos=True))


def test_a_disconnect_while_waiting_for_a_whole_answer_cancels_it_too(openai_server, api_user):
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{openai_server.base_url}/chat/completions",
            headers={"Authorization": f"Bearer {api_user.key}"},
            json={
                "model": "echo",
                "messages": [{"role": "user", "content": "slow"}],
                "max_tokens": 3000,
                "ignore_eos": True,
            },
            timeout=httpx.Timeout(30, read=1.0),
        )
    wait_for(lambda: InferenceJob.objects.filter(state="cancelled").exists(), timeout=10)


@contextlib.contextmanager
def database_writes_blocked() -> Iterator[None]:
    """Hold a write lock on the table a request is stored in, until the block ends."""
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("LOCK TABLE conversations_conversation IN EXCLUSIVE MODE")
        else:  # SQLite: any write takes the database's one write lock
            cursor.execute("UPDATE conversations_conversation SET title = title WHERE id = -1")
        yield


@pytest.mark.parametrize("continue_on_disconnect", [False, True])
def test_a_client_gone_while_its_request_is_stored_has_its_job_cancelled(
    openai_server, api_user, continue_on_disconnect
):
    body = {
        "model": "echo",
        "messages": [{"role": "user", "content": "gone before the answer starts"}],
        "max_tokens": 3000,  # about 30 s on the echo worker: long enough to see it run
        "ignore_eos": True,
        "stream": True,
        "continue_on_disconnect": continue_on_disconnect,
    }
    headers = {"Authorization": f"Bearer {api_user.key}"}
    # The server remembers the key from here on: the request below waits only in its store.
    assert httpx.get(f"{openai_server.base_url}/models", headers=headers).status_code == 200
    with database_writes_blocked():
        with pytest.raises(httpx.ReadTimeout):  # waiting for the response to start
            httpx.post(
                f"{openai_server.base_url}/chat/completions",
                headers=headers,
                json=body,
                timeout=httpx.Timeout(30, read=1.0),
            )
        assert not InferenceJob.objects.exists()  # still being stored, behind the lock
    # The store goes through once the lock is gone, and the job is published.
    job = wait_for(lambda: InferenceJob.objects.select_related("message").first(), timeout=10)
    if continue_on_disconnect:
        wait_for(lambda: InferenceJob.objects.get(pk=job.pk).state == "running", timeout=10)
        time.sleep(1)
        assert InferenceJob.objects.get(pk=job.pk).state == "running"
        job_abandon(job_id=job.pk)  # not to keep the session's worker busy
    else:
        wait_for(lambda: InferenceJob.objects.get(pk=job.pk).state == "cancelled", timeout=10)
        job.message.refresh_from_db()
        assert job.message.status == "cancelled"


@pytest.fixture
def one_slot_spare_worker(django_db_blocker, tmp_path):
    """A worker for "spare" that runs one job at a time, so the next ones wait in its queue."""
    models = registry_with("spare", max_num_seqs=1)
    with worker_running(django_db_blocker, "spare", tmp_path / "spare.log", LLM_MODELS=models) as worker:
        yield worker


@pytest.fixture
def small_queue_server(django_db_blocker, tmp_path):
    server = start_server(django_db_blocker, tmp_path / "uvicorn.log", LLM_MAX_QUEUED_PER_MODEL="1")
    try:
        yield server
    finally:
        server.stop()


def test_a_full_queue_is_429_with_retry_after(small_queue_server, one_slot_spare_worker, api_user):
    long = {
        "model": "spare",
        "messages": [{"role": "user", "content": "hold the slot"}],
        "max_tokens": 3000,
        "ignore_eos": True,
        "stream": True,
    }
    running = open_stream(small_queue_server.base_url, api_user.key, long)
    wait_for(lambda: InferenceJob.objects.filter(state="running").exists())
    waiting = open_stream(small_queue_server.base_url, api_user.key, long)  # the queue holds one
    client = openai.OpenAI(base_url=small_queue_server.base_url, api_key=api_user.key, max_retries=0)
    try:
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(model="spare", messages=[{"role": "user", "content": "one more"}])
        assert caught.value.status_code == 429
        assert caught.value.body["code"] == "overloaded"
        assert caught.value.response.headers["retry-after"]
        assert InferenceJob.objects.count() == 2
    finally:
        for http, response in (running, waiting):  # leaving cancels both jobs
            response.close()
            http.close()
    wait_for(lambda: InferenceJob.objects.filter(state="cancelled").count() == 2, timeout=10)
