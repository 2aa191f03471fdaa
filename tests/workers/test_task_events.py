"""Task events, what Flower shows: off by default, on while Flower asks for them."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from conversations.models import InferenceJob
from llmproject.celery import app as celery_app
from tests.conftest import ApiUser, WorkerProcess, wait_for
from tests.factories import ConversationFactory

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


class EventLog:
    """Every Celery event on the broker, as Flower's receiver gets them."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._connection = celery_app.connection_for_read()
        self._subscribed = threading.Event()
        subscribed = self._subscribed

        class Receiver(celery_app.events.Receiver):  # type: ignore[misc,name-defined]
            def on_consume_ready(self, *args: Any, **kwargs: Any) -> None:
                super().on_consume_ready(*args, **kwargs)
                subscribed.set()

        self._receiver = Receiver(self._connection, handlers={"*": self.events.append})
        self._thread = threading.Thread(
            target=self._receiver.capture, kwargs={"limit": None, "wakeup": False}, daemon=True
        )

    def start(self) -> None:
        self._thread.start()
        assert self._subscribed.wait(10), "event receiver did not subscribe"

    def stop(self) -> None:
        self._receiver.should_stop = True
        self._thread.join(10)
        self._connection.release()

    def for_job(self, job_id: int) -> list[str]:
        task_id = InferenceJob.objects.get(pk=job_id).celery_task_id
        return [e["type"] for e in self.events if e["type"].startswith("task-") and e.get("uuid") == task_id]


@pytest.fixture
def event_log(echo_worker: WorkerProcess) -> Iterator[EventLog]:
    log = EventLog()
    log.start()
    try:
        yield log
    finally:
        log.stop()
        celery_app.control.disable_events(destination=[echo_worker.name])


def run_one_job(api_user: ApiUser, worker: WorkerProcess) -> int:
    conversation = ConversationFactory(owner=api_user.user)
    response = api_user.client().post(
        f"/api/conversations/{conversation.pk}/messages/", {"content": "hi", "max_tokens": 4}, format="json"
    )
    assert response.status_code == 202, response.content
    job_id = response.json()["job"]["id"]
    wait_for(lambda: InferenceJob.objects.get(pk=job_id).state == "succeeded")
    # The answer is stored before the task returns: wait until the worker has done
    # with it, or a later enable_events could still catch its task-succeeded.
    wait_for(lambda: worker.active_tasks() == [], timeout=10)
    return job_id


def test_workers_send_task_events_only_while_flower_asks_for_them(echo_worker, api_user, event_log):
    quiet = run_one_job(api_user, echo_worker)

    # What Flower does every few seconds while it runs (its enable_events option).
    replies = celery_app.control.enable_events(destination=[echo_worker.name], reply=True, timeout=5)
    assert replies, "worker did not answer enable_events"
    watched = run_one_job(api_user, echo_worker)
    wait_for(lambda: "task-succeeded" in event_log.for_job(watched), timeout=10)

    assert event_log.for_job(quiet) == []
    assert event_log.for_job(watched) == ["task-received", "task-started", "task-succeeded"]
