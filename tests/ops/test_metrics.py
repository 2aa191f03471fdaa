"""/metrics of the web process and of a worker: who may read them, and what they count."""

from __future__ import annotations

import httpx
import openai
import pytest
from django.db import transaction
from django.test import Client

from conversations.services import message_post
from llmproject.exposition import serve_worker_metrics
from tests.factories import ConversationFactory
from tests.ops.conftest import AUTH, samples, scrape, value


@pytest.mark.django_db
def test_metrics_answer_this_host_or_the_token_and_nobody_else(settings):
    settings.METRICS_TOKEN = "s3cret-token"
    client = Client()
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 200
    outsider = client.get("/metrics", REMOTE_ADDR="203.0.113.9")
    assert outsider.status_code == 401 and outsider["WWW-Authenticate"].startswith("Bearer")
    wrong = client.get("/metrics", REMOTE_ADDR="203.0.113.9", HTTP_AUTHORIZATION="Bearer nope")
    assert wrong.status_code == 401
    right = client.get("/metrics", REMOTE_ADDR="203.0.113.9", HTTP_AUTHORIZATION="Bearer s3cret-token")
    assert right.status_code == 200 and b"llm_queue_depth" in right.content
    assert client.get("/metrics/targets", REMOTE_ADDR="203.0.113.9").status_code == 401


def test_a_workers_metrics_port_has_the_same_rule(settings):
    from llmproject import exposition

    settings.METRICS_TOKEN = "s3cret-token"
    settings.METRICS_ALLOWED_IPS = []
    exposition._allowed_networks.cache_clear()
    try:
        port = serve_worker_metrics(addr="127.0.0.1", port=0)
        url = f"http://127.0.0.1:{port}/metrics"
        assert httpx.get(url).status_code == 401  # this host is no longer enough
        answer = httpx.get(url, headers={"Authorization": "Bearer s3cret-token"})
        assert answer.status_code == 200 and "process_cpu_seconds_total" in answer.text
    finally:
        exposition._allowed_networks.cache_clear()


@pytest.mark.django_db(transaction=True)
def test_queue_depth_is_read_from_the_broker_per_model():
    client = Client()
    before = samples(client.get("/metrics").content.decode())
    conversation = ConversationFactory(model="spare")  # no worker serves "spare": its jobs wait
    with transaction.atomic():  # published once committed, as the API does
        message_post(conversation=conversation, content="one")
        message_post(conversation=conversation, content="two")
    after = samples(client.get("/metrics").content.decode())
    assert (
        value(after, "llm_queue_depth", model="spare") - value(before, "llm_queue_depth", model="spare") == 2
    )


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_chat_completions_are_counted_by_the_web_process_and_the_worker(ops_server, echo_worker, api_user):
    web = f"http://127.0.0.1:{ops_server.port}"
    assert httpx.get(f"{web}/metrics").status_code == 401  # this stack wants the token
    targets = httpx.get(f"{web}/metrics/targets", headers=AUTH).json()
    [target] = [t for t in targets if t["labels"]["worker_model"] == "echo"]
    worker_url = f"http://{target['targets'][0]}/metrics"
    before_web, before_worker = scrape(f"{web}/metrics"), scrape(worker_url)

    client = openai.OpenAI(base_url=ops_server.base_url, api_key=api_user.key, max_retries=0, timeout=30)
    for _ in range(3):
        client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "count me"}])
    # And the site's requests, through its (async) middleware.
    rest = httpx.get(f"{web}/api/models/", headers={"Authorization": f"Bearer {api_user.key}"})
    assert rest.status_code == 200

    web_page, worker_page = scrape(f"{web}/metrics"), scrape(worker_url)

    def grew(page: dict, before: dict, name: str, **labels: str) -> float:
        return value(page, name, **labels) - value(before, name, **labels)

    # The bare /v1/ handler's requests, in django-prometheus's families.
    view = {"view": "openai-chat-completions", "method": "POST"}
    responses = "django_http_responses_total_by_status_view_method_total"
    assert grew(web_page, before_web, responses, status="200", **view) == 3
    assert (
        grew(web_page, before_web, "django_http_requests_latency_seconds_by_view_method_count", **view) == 3
    )
    rest_view = {"view": "model-list", "method": "GET"}
    assert grew(web_page, before_web, responses, status="200", **rest_view) == 1
    assert grew(web_page, before_web, "django_http_requests_latency_including_middlewares_seconds_count") >= 1
    assert value(web_page, "llm_workers_alive", model="echo") == 1
    assert ("llm_queue_depth", frozenset({("model", "echo")})) in web_page
    # The worker's own: each job once, at its end; the engine read at scrape.
    assert grew(worker_page, before_worker, "llm_jobs_total", model="echo", outcome="succeeded") == 3
    for histogram in ("llm_job_time_to_first_token_seconds", "llm_job_e2e_seconds", "llm_job_queue_seconds"):
        assert grew(worker_page, before_worker, f"{histogram}_count", model="echo") == 3
    assert grew(worker_page, before_worker, "llm_completion_tokens_total", model="echo") > 0
    assert value(worker_page, "llm_engine_batch_size_count", model="echo") > 0
    assert ("llm_jobs_in_flight", frozenset({("model", "echo")})) in worker_page
    assert value(worker_page, "process_cpu_seconds_total") > 0
    assert grew(worker_page, before_worker, "django_db_execute_total", alias="default", vendor=_vendor()) >= 6


def _vendor() -> str:
    from django.db import connection

    return connection.vendor
