"""Stopping answers: cancel (REST and WebSocket), and a worker's graceful shutdown."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest
from channels.db import database_sync_to_async

from conversations.models import InferenceJob, Message
from tests.conftest import WorkerProcess
from tests.factories import ConversationFactory
from tests.workers.test_pipeline import connect, events_until_final, post

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

LONG = {"content": "go on and on", "max_tokens": 3000, "ignore_eos": True}


async def cancel_via_rest(api_user, job_id: int):
    return await database_sync_to_async(lambda: api_user.client().post(f"/api/jobs/{job_id}/cancel/"))()


async def test_cancel_stops_a_running_answer_keeps_the_partial_text_and_frees_the_slot(echo_worker, api_user):
    conversation = await database_sync_to_async(ConversationFactory)(owner=api_user.user)
    ws = await connect(conversation.pk, api_user.key)
    posted = await post(api_user, conversation.pk, LONG)
    seen = [await ws.receive_json_from(timeout=10) for _ in range(4)]  # started and some deltas

    asked = time.monotonic()
    response = await cancel_via_rest(api_user, posted["job"]["id"])
    assert response.status_code == 202
    assert response.json()["cancel_requested"] is True
    rest = await events_until_final(ws, timeout=5)
    took = time.monotonic() - asked
    await ws.disconnect()

    cancelled = rest[-1]
    assert cancelled["event"] == "cancelled"
    assert took < 2, f"cancel took {took:.2f} s"
    streamed = "".join(e["text"] for e in seen + rest if e["event"] == "delta")
    assert cancelled["content"] == streamed
    assert 0 < len(streamed.split()) < 3000
    message = await database_sync_to_async(Message.objects.get)(pk=posted["assistant_message"]["id"])
    assert (message.status, message.content, message.finish_reason) == ("cancelled", streamed, "abort")
    job = await database_sync_to_async(InferenceJob.objects.get)(pk=posted["job"]["id"])
    assert job.state == "cancelled"
    assert echo_worker.engine_stats()["running"] == 0

    again = await cancel_via_rest(api_user, posted["job"]["id"])
    assert again.status_code == 409
    assert "already cancelled" in again.json()["detail"]


async def test_a_stop_message_on_the_websocket_cancels_the_answer(echo_worker, api_user):
    conversation = await database_sync_to_async(ConversationFactory)(owner=api_user.user)
    ws = await connect(conversation.pk, api_user.key)
    posted = await post(api_user, conversation.pk, LONG)
    await ws.receive_json_from(timeout=10)
    await ws.receive_json_from(timeout=10)
    await ws.send_json_to({"type": "stop", "message_id": posted["assistant_message"]["id"]})
    events = await events_until_final(ws, timeout=5)
    assert events[-1]["event"] == "cancelled"
    await ws.send_json_to({"type": "stop", "message_id": 10**9})
    error = await ws.receive_json_from(timeout=5)
    assert error["event"] == "error" and "no job" in error["error"]
    await ws.disconnect()


async def test_a_cancelled_queued_job_never_starts(api_user, tmp_path):
    conversation = await database_sync_to_async(ConversationFactory)(owner=api_user.user, model="spare")
    ws = await connect(conversation.pk, api_user.key)
    posted = await post(api_user, conversation.pk, {"content": "never mind"})  # no worker serves "spare" yet
    response = await cancel_via_rest(api_user, posted["job"]["id"])
    assert response.status_code == 202
    assert response.json()["state"] == "cancelled"
    assert (await ws.receive_json_from(timeout=5))["event"] == "cancelled"

    worker = WorkerProcess("spare", tmp_path / "spare.log")
    try:
        await asyncio.to_thread(worker.wait_ready)
        await asyncio.sleep(1.0)  # the queued message is delivered and dropped
        assert await ws.receive_nothing(timeout=0.5)
    finally:
        await asyncio.to_thread(worker.stop)
    await ws.disconnect()
    job = await database_sync_to_async(InferenceJob.objects.get)(pk=posted["job"]["id"])
    assert (job.state, job.attempts) == ("cancelled", 0)


async def test_sigterm_requeues_unfinished_answers_and_another_worker_completes_them(api_user, tmp_path):
    conversation = await database_sync_to_async(ConversationFactory)(owner=api_user.user, model="spare")
    ws = await connect(conversation.pk, api_user.key)
    first = WorkerProcess("spare", tmp_path / "first.log", LLM_SHUTDOWN_GRACE="0.5")
    await asyncio.to_thread(first.wait_ready)
    posted = await post(api_user, conversation.pk, {"content": "long", "max_tokens": 600, "ignore_eos": True})
    assert (await ws.receive_json_from(timeout=10))["event"] == "started"

    stopping = time.monotonic()
    first.proc.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(first.proc.wait, 30)
    await asyncio.to_thread(first.stop)
    assert code == 0, first.output()
    assert time.monotonic() - stopping < 15
    job = await database_sync_to_async(InferenceJob.objects.get)(pk=posted["job"]["id"])
    assert (job.state, job.attempts) == ("queued", 0), first.output()

    second = WorkerProcess("spare", tmp_path / "second.log")
    try:
        await asyncio.to_thread(second.wait_ready)
        events = []
        while not events or events[-1]["event"] != "completed":
            events.append(await ws.receive_json_from(timeout=30))
    finally:
        await asyncio.to_thread(second.stop)
    await ws.disconnect()
    assert events[-1]["completion_tokens"] == 600
    job = await database_sync_to_async(InferenceJob.objects.get)(pk=posted["job"]["id"])
    assert (job.state, job.attempts) == ("succeeded", 1)
