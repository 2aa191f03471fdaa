"""The queue bound holds under a burst, refusals stay cheap, and the REST API has it too.

A worker for ``spare`` is paused (it beats, so the model counts as served, but
takes nothing), so every admitted job stays in the queue and the queue's
length is exactly what admission let through.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import threading
import time
from collections.abc import Iterator

import pytest
import redis
from django.conf import settings
from django.test import override_settings

from conversations.admission import queue_keys
from conversations.models import InferenceJob
from inference.registry import get_model
from tests.conftest import WorkerProcess, wait_for, worker_running
from tests.factories import ConversationFactory
from tests.openai_api.conftest import ServerProcess, start_server
from tests.openai_api.test_disconnect_and_overload import database_writes_blocked

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

LIMIT = 20
BURST = 200


def purge_spare_queue() -> None:
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.delete(*queue_keys(get_model("spare")), "llm:admitting:spare")
    client.close()


def queued() -> int:
    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        return sum(client.llen(key) for key in queue_keys(get_model("spare")))
    finally:
        client.close()


@pytest.fixture
def paused_spare_worker(django_db_blocker, tmp_path) -> Iterator[WorkerProcess]:
    purge_spare_queue()
    try:
        with worker_running(django_db_blocker, "spare", tmp_path / "spare.log") as worker:
            worker.pause()
            yield worker
    finally:
        purge_spare_queue()  # the jobs left queued are this test's


@pytest.fixture
def bounded_server(django_db_blocker, tmp_path) -> Iterator[ServerProcess]:
    server = start_server(django_db_blocker, tmp_path / "uvicorn.log", LLM_MAX_QUEUED_PER_MODEL=str(LIMIT))
    try:
        yield server
    finally:
        server.stop()


async def burst(
    port: int, key: str, method: str, path: str, body: dict | None, results: list[tuple[int, float]]
) -> None:
    """BURST requests at once, over connections opened beforehand; each one's status and
    time to its status line go to ``results`` as they come. Raw HTTP/1.1: an HTTP
    client's own work per request (httpx: a few ms here) would hide the server's."""
    data = json.dumps(body).encode() if body is not None else b""
    request = (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    ).encode() + data
    connections = [await asyncio.open_connection("127.0.0.1", port) for _ in range(BURST)]

    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sent = time.monotonic()
        writer.write(request)
        status_line = await reader.readline()
        results.append((int(status_line.split()[1]), time.monotonic() - sent))
        writer.close()  # an admitted job stays queued (continue_on_disconnect)

    await asyncio.gather(*(one(reader, writer) for reader, writer in connections))


def test_a_burst_is_admitted_up_to_the_queue_limit_exactly_and_refused_without_the_database(
    bounded_server, paused_spare_worker, api_user
):
    port, key = bounded_server.port, api_user.key
    # The same burst of requests that do nothing: what the machine, the server and
    # the client take for BURST requests at once, whatever else runs now.
    baseline: list[tuple[int, float]] = []
    asyncio.run(burst(port, key, "GET", "/v1/models", None, baseline))
    assert {status for status, _ in baseline} == {200}

    chat = {
        "model": "spare",
        "messages": [{"role": "user", "content": "one of many"}],
        "max_tokens": 4,
        "stream": True,
        "continue_on_disconnect": True,
    }
    results: list[tuple[int, float]] = []
    sender = threading.Thread(
        target=lambda: asyncio.run(burst(port, key, "POST", "/v1/chat/completions", chat, results))
    )
    # The admitted requests' stores wait behind a lock: every refusal must come back
    # meanwhile, for it needs no database.
    with database_writes_blocked():
        sender.start()
        wait_for(lambda: len(results) >= BURST - LIMIT, timeout=30)
        during_lock = list(results)
    sender.join(60)

    assert [status for status, _ in during_lock] == [429] * (BURST - LIMIT)
    statuses = [status for status, _ in results]
    assert statuses.count(200) == LIMIT, sorted(set(statuses))
    wait_for(lambda: InferenceJob.objects.count() == LIMIT == queued(), timeout=10)
    refused = statistics.median(elapsed for _, elapsed in during_lock)
    nothing = statistics.median(elapsed for _, elapsed in baseline)
    print(f"p50 under a burst of {BURST}: 429 {refused:.3f} s, GET /v1/models {nothing:.3f} s")
    assert refused < max(1.0, 5 * nothing), (refused, nothing)


def test_the_rest_api_refuses_a_message_over_the_queue_limit_with_429(paused_spare_worker, api_user):
    conversation = ConversationFactory(owner=api_user.user, model="spare")
    client = api_user.client()
    with override_settings(LLM_MAX_QUEUED_PER_MODEL=2):
        path = f"/api/conversations/{conversation.pk}/messages/"
        posted = [client.post(path, {"content": "hi"}) for _ in range(3)]
    assert [r.status_code for r in posted] == [202, 202, 429]
    refused = posted[-1]
    assert refused.json()["code"] == "overloaded"
    assert int(refused["Retry-After"]) > 0
    assert InferenceJob.objects.count() == 2
    assert json.loads(refused.content)["detail"].startswith("model 'spare' is overloaded")
