"""Through the whole stack: REST -> queue -> worker (simulated engine) -> WebSocket -> database."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from conversations.dispatch import job_publish
from conversations.models import ConversationEvent, InferenceJob, Message
from inference.engines.simulated import PERMANENT_MARKER, TRANSIENT_MARKER, simulated_tokens
from inference.requests import ChatMessage
from llmproject.asgi import application
from tests.conftest import ApiUser
from tests.factories import ConversationFactory

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


async def connect(conversation_id: int, key: str, query: str = "") -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(
        application,
        f"/ws/conversations/{conversation_id}/{query}",
        headers=[(b"authorization", f"Bearer {key}".encode())],
    )
    connected, code = await communicator.connect()
    assert connected, code
    hello = await communicator.receive_json_from()
    assert hello["event"] == "hello"
    return communicator


async def events_until_final(
    communicator: WebsocketCommunicator, *, timeout: float = 20
) -> list[dict[str, Any]]:
    events = []
    while True:
        event = await communicator.receive_json_from(timeout=timeout)
        events.append(event)
        if event["event"] in ("completed", "failed", "cancelled"):
            return events


async def post(api_user: ApiUser, conversation_id: int, payload: dict[str, Any]) -> dict[str, Any]:
    def _post() -> dict[str, Any]:
        response = api_user.client().post(
            f"/api/conversations/{conversation_id}/messages/", payload, format="json"
        )
        assert response.status_code == 202, response.content
        return response.json()

    # Not thread-sensitive: concurrent posts run concurrently, like real clients.
    return await sync_to_async(_post, thread_sensitive=False)()


async def test_a_posted_message_is_streamed_in_order_and_stored(echo_worker, api_user):
    conversation = await database_sync_to_async(ConversationFactory)(owner=api_user.user)
    ws = await connect(conversation.pk, api_user.key)
    posted = await post(api_user, conversation.pk, {"content": "tell me about queues", "max_tokens": 40})
    message_id = posted["assistant_message"]["id"]

    events = await events_until_final(ws)
    await ws.disconnect()

    assert events[0]["event"] == "started"
    assert events[-1]["event"] == "completed"
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + len(events))), "seqs must be contiguous"
    deltas = [e for e in events if e["event"] == "delta"]
    assert deltas and all(e["message_id"] == message_id for e in events)
    streamed = "".join(e["text"] for e in deltas)

    expected = "".join(simulated_tokens((ChatMessage("user", "tell me about queues"),), 40))
    completed = events[-1]
    assert streamed == completed["content"] == expected
    assert completed["completion_tokens"] == sum(e["tokens"] for e in deltas)
    assert completed["timings"]["time_to_first_token_ms"] > 0

    message = await database_sync_to_async(Message.objects.get)(pk=message_id)
    assert message.status == "completed"
    assert message.content == expected
    assert message.completion_tokens == completed["completion_tokens"]
    assert message.started_at and message.first_token_at and message.finished_at
    job = await database_sync_to_async(InferenceJob.objects.get)(pk=posted["job"]["id"])
    assert (job.state, job.attempts) == ("succeeded", 1)
    events = await database_sync_to_async(
        lambda: list(
            ConversationEvent.objects.filter(correlation_id=job.correlation_id).values_list(
                "kind", "message_id", "payload"
            )
        )
    )()
    kinds = [kind for kind, _, _ in events]
    assert kinds == ["user_query_received", "inference_queued", "inference_started", "response_generated"]
    _, started_message, started = events[2]
    assert started_message == message_id
    assert (started["job_id"], started["attempt"]) == (job.pk, 1) and started["worker"]
    _, generated_message, generated = events[3]
    assert generated_message == message_id
    assert generated["completion_tokens"] == message.completion_tokens
    assert generated["finish_reason"] == message.finish_reason


async def test_the_model_sees_the_conversation_history(echo_worker, api_user):
    conversation = await database_sync_to_async(ConversationFactory)(owner=api_user.user)
    ws = await connect(conversation.pk, api_user.key)
    await post(api_user, conversation.pk, {"content": "first"})
    first = (await events_until_final(ws))[-1]["content"]
    await post(api_user, conversation.pk, {"content": "second"})
    second = (await events_until_final(ws))[-1]["content"]
    await ws.disconnect()

    history = (ChatMessage("user", "first"), ChatMessage("assistant", first), ChatMessage("user", "second"))
    assert second == "".join(simulated_tokens(history, 32))


async def test_a_failed_answer_is_left_out_of_the_history(echo_worker, api_user):
    conversation = await database_sync_to_async(ConversationFactory)(owner=api_user.user)
    ws = await connect(conversation.pk, api_user.key)
    await post(api_user, conversation.pk, {"content": f"break {PERMANENT_MARKER}"})
    assert (await events_until_final(ws))[-1]["event"] == "failed"
    await post(api_user, conversation.pk, {"content": "again"})
    answer = (await events_until_final(ws))[-1]["content"]
    await ws.disconnect()

    history = (ChatMessage("user", f"break {PERMANENT_MARKER}"), ChatMessage("user", "again"))
    assert answer == "".join(simulated_tokens(history, 32))


async def test_32_concurrent_jobs_are_batched_and_every_client_gets_every_delta(echo_worker, make_api_user):
    api_user = await database_sync_to_async(make_api_user)()
    echo_worker.engine_stats(reset=True)
    conversations = [
        await database_sync_to_async(ConversationFactory)(owner=api_user.user) for _ in range(32)
    ]
    sockets = [await connect(c.pk, api_user.key) for c in conversations]
    # A burst: all 32 are queued before the worker takes any, so a slow machine
    # posting them cannot stagger them into separate batches.
    await asyncio.to_thread(echo_worker.pause)
    try:
        posted = await asyncio.gather(
            *(
                post(api_user, c.pk, {"content": f"question {i}", "max_tokens": 128, "ignore_eos": True})
                for i, c in enumerate(conversations)
            )
        )
    finally:
        await asyncio.to_thread(echo_worker.resume)
    streams = await asyncio.gather(*(events_until_final(ws, timeout=60) for ws in sockets))
    for ws in sockets:
        await ws.disconnect()

    stats = echo_worker.engine_stats()
    assert stats["max_batch_size"] >= 24, stats
    for i, (events, p) in enumerate(zip(streams, posted, strict=True)):
        seqs = [e["seq"] for e in events]
        assert seqs == list(range(seqs[0], seqs[0] + len(events)))
        text = "".join(e["text"] for e in events if e["event"] == "delta")
        expected = "".join(simulated_tokens((ChatMessage("user", f"question {i}"),), 128, ignore_eos=True))
        assert text == events[-1]["content"] == expected
        stored = await database_sync_to_async(Message.objects.get)(pk=p["assistant_message"]["id"])
        assert stored.content == expected
    print(f"simulated engine batch sizes: max {stats['max_batch_size']}, histogram {stats['batch_sizes']}")


async def test_a_job_delivered_twice_stores_one_answer(echo_worker, api_user):
    conversation = await database_sync_to_async(ConversationFactory)(owner=api_user.user)
    ws = await connect(conversation.pk, api_user.key)
    posted = await post(
        api_user, conversation.pk, {"content": "only once", "max_tokens": 30, "ignore_eos": True}
    )
    job_id = posted["job"]["id"]
    # The broker delivers it again.
    await database_sync_to_async(lambda: job_publish(job=InferenceJob.objects.get(pk=job_id)))()

    events = await events_until_final(ws)
    await asyncio.sleep(0.5)  # time for the second delivery to run, if it were going to
    assert await ws.receive_nothing(timeout=0.5)
    await ws.disconnect()

    job = await database_sync_to_async(InferenceJob.objects.get)(pk=job_id)
    assert (job.state, job.attempts) == ("succeeded", 1)
    assert sum(e["event"] == "started" for e in events) == 1
    answers = await database_sync_to_async(
        lambda: ConversationEvent.objects.filter(
            correlation_id=job.correlation_id, kind="response_generated"
        ).count()
    )()
    assert answers == 1
    message = await database_sync_to_async(Message.objects.get)(pk=posted["assistant_message"]["id"])
    assert message.content == events[-1]["content"]
    assert len(message.content.split()) == 30


async def test_a_job_whose_worker_died_is_run_again_by_its_redelivery(echo_worker, api_user):
    conversation = await database_sync_to_async(ConversationFactory)(owner=api_user.user)
    ws = await connect(conversation.pk, api_user.key)
    posted = await post(api_user, conversation.pk, {"content": "first try", "max_tokens": 5})
    job_id = posted["job"]["id"]
    await events_until_final(ws)

    # As if attempt 1 had been claimed by a worker that died long ago.
    def orphan() -> None:
        from datetime import timedelta

        from django.conf import settings
        from django.utils import timezone

        InferenceJob.objects.filter(pk=job_id).update(
            state="running", started_at=timezone.now() - timedelta(seconds=settings.LLM_JOB_TIME_LIMIT + 1)
        )
        job_publish(job=InferenceJob.objects.get(pk=job_id))

    await database_sync_to_async(orphan)()
    events = await events_until_final(ws)
    await ws.disconnect()
    assert events[0] == {**events[0], "event": "started", "attempt": 2}
    job = await database_sync_to_async(InferenceJob.objects.get)(pk=job_id)
    assert (job.state, job.attempts) == ("succeeded", 2)


async def test_a_permanent_engine_error_fails_the_job_and_tells_the_client(echo_worker, api_user):
    conversation = await database_sync_to_async(ConversationFactory)(owner=api_user.user)
    ws = await connect(conversation.pk, api_user.key)
    posted = await post(api_user, conversation.pk, {"content": f"break {PERMANENT_MARKER}"})
    events = await events_until_final(ws)
    await ws.disconnect()

    assert events[-1]["event"] == "failed"
    assert events[-1]["error"] == "simulated permanent engine error"
    message = await database_sync_to_async(Message.objects.get)(pk=posted["assistant_message"]["id"])
    assert (message.status, message.error) == ("failed", "simulated permanent engine error")
    job = await database_sync_to_async(InferenceJob.objects.get)(pk=posted["job"]["id"])
    assert (job.state, job.attempts, job.last_error) == ("failed", 1, "simulated permanent engine error")


async def test_a_transient_engine_error_is_retried_with_backoff_then_fails(echo_worker, api_user):
    conversation = await database_sync_to_async(ConversationFactory)(owner=api_user.user)
    ws = await connect(conversation.pk, api_user.key)
    posted = await post(api_user, conversation.pk, {"content": f"flaky {TRANSIENT_MARKER}"})
    events = []
    while not events or events[-1]["event"] != "failed":
        events.append(await ws.receive_json_from(timeout=30))
    await ws.disconnect()

    assert [e["attempt"] for e in events if e["event"] == "started"] == [1, 2, 3]
    assert "gave up after 3 attempts" in events[-1]["error"]
    job = await database_sync_to_async(InferenceJob.objects.get)(pk=posted["job"]["id"])
    assert (job.state, job.attempts) == ("failed", 3)
    kinds = await database_sync_to_async(
        lambda: list(
            ConversationEvent.objects.filter(correlation_id=job.correlation_id).values_list("kind", flat=True)
        )
    )()
    assert kinds.count("inference_retrying") == 2
    assert kinds[-1] == "inference_failed"


async def test_a_client_connecting_mid_answer_gets_it_from_the_start(echo_worker, api_user):
    conversation = await database_sync_to_async(ConversationFactory)(owner=api_user.user)
    watcher = await connect(conversation.pk, api_user.key)
    await post(api_user, conversation.pk, {"content": "long one", "max_tokens": 60, "ignore_eos": True})
    seen = [await watcher.receive_json_from(timeout=10) for _ in range(2)]  # started, a delta
    late = await connect(conversation.pk, api_user.key)
    late_events = await events_until_final(late)
    watcher_events = [*seen, *await events_until_final(watcher)]
    await late.disconnect()
    await watcher.disconnect()
    assert late_events == watcher_events


async def test_a_client_resumes_after_a_reconnect_without_gaps_or_duplicates(echo_worker, api_user):
    conversation = await database_sync_to_async(ConversationFactory)(owner=api_user.user)
    ws = await connect(conversation.pk, api_user.key)
    await post(api_user, conversation.pk, {"content": "resume me", "max_tokens": 60, "ignore_eos": True})
    seen = [await ws.receive_json_from(timeout=10) for _ in range(5)]
    await ws.disconnect()
    await asyncio.sleep(0.2)  # events go on while the client is away
    ws = await connect(conversation.pk, api_user.key, query=f"?after={seen[-1]['seq']}")
    rest = await events_until_final(ws)
    await ws.disconnect()
    events = seen + rest
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + len(events)))
    text = "".join(e["text"] for e in events if e["event"] == "delta")
    assert text == events[-1]["content"]


async def test_another_user_is_refused_on_the_websocket(echo_worker, api_user, make_api_user):
    other = await database_sync_to_async(make_api_user)()
    conversation = await database_sync_to_async(ConversationFactory)(owner=api_user.user)
    communicator = WebsocketCommunicator(
        application,
        f"/ws/conversations/{conversation.pk}/",
        headers=[(b"authorization", f"Bearer {other.key}".encode())],
    )
    connected, _ = await communicator.connect()
    assert not connected
    anonymous = WebsocketCommunicator(application, f"/ws/conversations/{conversation.pk}/")
    connected, _ = await anonymous.connect()
    assert not connected
