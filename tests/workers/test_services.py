"""One delivery of a job on a worker (``workers.services.job_run``), its failure paths.

The engine host is a stand-in here: these tests are about what a delivery
does with the outcome of a generation, not about generating.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import redis.exceptions

from conversations.models import InferenceJob, Message
from inference.engines.base import EngineError
from tests.factories import ConversationFactory
from workers import runtime
from workers.heartbeat import HeldJobs
from workers.services import TransientJobError, job_run

pytestmark = pytest.mark.django_db(transaction=True)


class FailingHost:
    """An engine host of model ``echo`` whose every generation raises ``error``."""

    def __init__(self, error: Exception) -> None:
        self.spec = SimpleNamespace(name="echo")
        self.worker_id = "echo-0@test:1"
        self.held = HeldJobs()
        self.error = error

    async def generate(self, **kwargs: Any) -> None:
        raise AssertionError("not awaited")

    def run(self, coro: Any, timeout: float | None = None) -> Any:
        coro.close()
        raise self.error


@pytest.fixture
def host(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    def install(error: Exception) -> None:
        monkeypatch.setattr(runtime, "_host", FailingHost(error))

    yield install


def _queued_job(*, attempts: int) -> InferenceJob:
    conversation = ConversationFactory(model="echo")
    Message.objects.create(conversation=conversation, role="user", content="hi")
    reply = Message.objects.create(conversation=conversation, role="assistant", status="queued")
    return InferenceJob.objects.create(
        message=reply, model="echo", queue="llm.echo", attempts=attempts, max_attempts=3
    )


TRANSIENT = [
    pytest.param(EngineError("engine restarting", permanent=False), "engine restarting", id="engine"),
    pytest.param(redis.exceptions.ConnectionError("gone"), "lost Redis while streaming", id="redis"),
]


@pytest.mark.parametrize(("error", "reason"), TRANSIENT)
def test_a_transient_failure_hands_the_job_back_for_a_retry(host, error, reason):
    host(error)
    job = _queued_job(attempts=0)

    with pytest.raises(TransientJobError, match=reason):
        job_run(job_id=job.pk)

    job.refresh_from_db()
    assert (job.state, job.attempts) == ("queued", 1)
    assert reason in job.last_error


@pytest.mark.parametrize(("error", "reason"), TRANSIENT)
def test_a_transient_failure_on_the_last_attempt_fails_the_job_and_ends_the_delivery(host, error, reason):
    host(error)
    job = _queued_job(attempts=2)  # this delivery is attempt 3 of 3

    job_run(job_id=job.pk)  # returns: nothing left to retry, nothing raised

    job.refresh_from_db()
    assert (job.state, job.attempts) == ("failed", 3)
    assert reason in job.last_error and "gave up after 3 attempts" in job.last_error
    assert job.message.status == "failed"
