"""A model whose engine keeps failing is refused at once (503, Retry-After) by every web
process, lets one trial through after a while, and closes when the trial succeeds;
a fallback model takes its requests meanwhile.

A real worker for ``spare`` fails the jobs whose prompt asks it to (the simulated
engine's transient-error marker); its breaker opens after 2 failures in a row.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest
import redis
from django.conf import settings
from django.test import override_settings

from conversations.admission import queue_keys
from conversations.models import InferenceJob
from inference.breaker import breaker_key, breaker_states
from inference.engines.simulated import TRANSIENT_MARKER
from inference.registry import get_model
from tests.conftest import WorkerProcess, wait_for, worker_running
from tests.factories import ConversationFactory

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

RESET = 2  # seconds open before a trial (the web side's setting)


def forget_spare() -> None:
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.delete(breaker_key("spare"), "llm:admitting:spare", *queue_keys(get_model("spare")))
    client.close()


@pytest.fixture(scope="module")
def module_spare_worker(django_db_blocker, tmp_path_factory) -> Iterator[WorkerProcess]:
    log = tmp_path_factory.mktemp("breaker") / "spare.log"
    with worker_running(django_db_blocker, "spare", log, LLM_BREAKER_FAILURES="2") as worker:
        yield worker


@pytest.fixture
def spare_worker(module_spare_worker) -> Iterator[WorkerProcess]:
    forget_spare()  # each test starts with the breaker closed
    yield module_spare_worker
    forget_spare()


@pytest.fixture
def post(api_user):
    conversation = ConversationFactory(owner=api_user.user, model="spare")
    client = api_user.client()

    def post(content: str = "hello"):
        # One attempt per job: each failure is the job's end, and one breaker count.
        with override_settings(LLM_MAX_ATTEMPTS=1, LLM_BREAKER_RESET=RESET):
            return client.post(f"/api/conversations/{conversation.pk}/messages/", {"content": content})

    return post


def job_ends(response, state: str) -> InferenceJob:
    assert response.status_code == 202, response.content
    job_id = response.json()["job"]["id"]
    return wait_for(lambda: InferenceJob.objects.filter(pk=job_id, state=state).first(), timeout=20)


def open_breaker(post) -> None:
    for _ in range(2):
        job_ends(post(f"break {TRANSIENT_MARKER}"), "failed")
    assert breaker_states()["spare"].state == "open"


def test_after_repeated_engine_failures_the_model_is_refused_then_tried_then_closed(
    spare_worker, post, openai_server, api_user
):
    open_breaker(post)
    jobs = InferenceJob.objects.count()

    refused = post()
    assert refused.status_code == 503
    assert refused.json()["code"] == "model_unavailable"
    assert 0 < int(refused["Retry-After"]) <= RESET
    # Every web process reads the same breaker: the live server's OpenAI API too.
    response = httpx.post(
        f"{openai_server.base_url}/chat/completions",
        headers={"Authorization": f"Bearer {api_user.key}"},
        json={"model": "spare", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "model_unavailable"
    assert int(response.headers["retry-after"]) > 0
    assert InferenceJob.objects.count() == jobs  # nothing queued to fail
    # Operators see it: Prometheus's scrape and the readiness body (still 200: the web
    # process serves the other models, and answers this one's requests itself).
    root = openai_server.base_url.removesuffix("/v1")
    metrics = httpx.get(f"{root}/metrics").text
    assert 'llm_circuit_breaker_state{model="spare"} 2.0' in metrics
    assert 'llm_circuit_breaker_state{model="echo"} 0.0' in metrics
    ready = httpx.get(f"{root}/readyz").json()
    assert ready["checks"]["breakers"]["not_closed"]["spare"]["state"] == "open"

    time.sleep(int(refused["Retry-After"]))
    trial = post()
    assert trial.status_code == 202
    assert post().status_code == 503  # one trial at a time
    assert breaker_states()["spare"].state == "half_open"

    job_ends(trial, "succeeded")
    assert breaker_states()["spare"].state == "closed"
    assert 'llm_circuit_breaker_state{model="spare"} 0.0' in httpx.get(f"{root}/metrics").text
    assert post().status_code == 202


def test_a_failed_trial_opens_the_breaker_again(spare_worker, post):
    open_breaker(post)
    opened = breaker_states()["spare"].since
    time.sleep(RESET)
    job_ends(post(f"still broken {TRANSIENT_MARKER}"), "failed")
    state = breaker_states()["spare"]
    assert state.state == "open" and state.since > opened
    assert "transient engine error" in state.last_error
    assert post().status_code == 503


def test_while_open_the_fallback_model_takes_the_requests(spare_worker, echo_worker, post):
    open_breaker(post)
    models = json.loads(json.dumps(settings.LLM_MODELS))
    models["spare"]["fallback"] = "echo"
    with override_settings(LLM_MODELS=models):
        response = post("anyone there?")
    assert response.json()["job"]["model"] == "echo"
    job = job_ends(response, "succeeded")
    assert job.queue == "llm.echo"
    assert job.message.content.startswith("Echo: anyone there?")
