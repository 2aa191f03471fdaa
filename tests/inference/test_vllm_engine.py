"""The real engine: vLLM (CPU build) on the tiny local checkpoint, through the whole stack."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import time

import pytest
from channels.db import database_sync_to_async
from django.conf import settings
from django.core.management import call_command

from conversations.models import InferenceJob, Message
from tests.conftest import ROOT, wait_for, worker_env
from tests.factories import ConversationFactory
from tests.workers.test_pipeline import connect, events_until_final, post

pytestmark = [pytest.mark.vllm, pytest.mark.worker, pytest.mark.django_db(transaction=True)]

WINDOW = settings.LLM_MODELS["tiny"]["max_model_len"]


def words(n: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    vocabulary = "the queue holds many answers while every worker streams tokens to a client".split()
    return " ".join(rng.choice(vocabulary) for _ in range(n))


async def test_a_message_is_answered_by_vllm_through_rest_queue_websocket_and_database(tiny_worker, api_user):
    conversation = await database_sync_to_async(ConversationFactory)(owner=api_user.user, model="tiny")
    ws = await connect(conversation.pk, api_user.key)
    posted = await post(
        api_user, conversation.pk, {"content": "Hello, tiny model!", "max_tokens": 24, "ignore_eos": True}
    )
    events = await events_until_final(ws, timeout=60)
    await ws.disconnect()

    completed = events[-1]
    assert completed["event"] == "completed", events[-1]
    streamed = "".join(e["text"] for e in events if e["event"] == "delta")
    assert streamed == completed["content"] and streamed
    assert completed["completion_tokens"] == 24
    assert completed["prompt_tokens"] > 5  # the chat template wraps the message
    message = await database_sync_to_async(Message.objects.get)(pk=posted["assistant_message"]["id"])
    assert (message.status, message.content, message.completion_tokens) == ("completed", streamed, 24)


async def test_16_concurrent_jobs_are_batched_by_vllm(tiny_worker, api_user):
    tiny_worker.engine_stats(reset=True)
    conversations = [
        await database_sync_to_async(ConversationFactory)(owner=api_user.user, model="tiny")
        for _ in range(16)
    ]
    sockets = [await connect(c.pk, api_user.key) for c in conversations]
    # A burst: the 16 jobs are all queued before the worker takes any (posting
    # them one by one takes longer than the tiny model needs to answer one).
    await asyncio.to_thread(tiny_worker.pause)
    try:
        await asyncio.gather(
            *(
                post(api_user, c.pk, {"content": words(20, i), "max_tokens": 320, "ignore_eos": True})
                for i, c in enumerate(conversations)
            )
        )
    finally:
        await asyncio.to_thread(tiny_worker.resume)
    try:
        streams = await asyncio.gather(*(events_until_final(ws, timeout=120) for ws in sockets))
    finally:
        for ws in sockets:
            await ws.disconnect()

    assert all(s[-1]["event"] == "completed" and s[-1]["completion_tokens"] == 320 for s in streams)
    stats = tiny_worker.engine_stats()
    print(f"vLLM steps by batch size: {stats['batch_sizes']}, max running {stats['max_running']}")
    assert stats["max_batch_size"] >= 12, stats  # vLLM's own per-step counts
    assert stats["max_running"] >= 12


async def test_cancel_stops_vllm_within_a_step_and_frees_the_slot(tiny_worker, api_user):
    conversation = await database_sync_to_async(ConversationFactory)(owner=api_user.user, model="tiny")
    ws = await connect(conversation.pk, api_user.key)
    # The test client builds its handler (and WhiteNoise scans the static
    # files) on its first request: do that before the clock starts.
    client = api_user.client()
    await database_sync_to_async(lambda: client.get("/api/models/"))()
    # Cancel once the worker runs the job (read from the database: the test's
    # own WebSocket can lag on a loaded machine). 480 tokens of the tiny model
    # take about 1.3 s, and the cancel request itself can take that long to get
    # through: an answer that finished first is not a failure of cancel, so
    # such a round is tried again (3 at most).
    for _ in range(3):
        posted = await post(
            api_user, conversation.pk, {"content": "go", "max_tokens": 480, "ignore_eos": True}
        )
        job_id = posted["job"]["id"]
        await database_sync_to_async(wait_for)(
            lambda: InferenceJob.objects.filter(pk=job_id, state__in=["running", "succeeded"]).exists(),  # noqa: B023
            timeout=60,
            interval=0.01,
        )
        response = await database_sync_to_async(
            lambda: client.post(f"/api/jobs/{job_id}/cancel/")  # noqa: B023
        )()
        asked = time.monotonic()
        events = await events_until_final(ws, timeout=60)
        took = time.monotonic() - asked
        if response.status_code == 202 and events[-1]["event"] == "cancelled":
            break
        assert response.status_code in (202, 409), response.content
        assert events[-1]["event"] == "completed", events[-1]
    await ws.disconnect()

    assert events[0]["event"] == "started"
    assert events[-1]["event"] == "cancelled"
    assert took < 2, took
    partial = "".join(e["text"] for e in events if e["event"] == "delta")
    assert events[-1]["content"] == partial
    message = await database_sync_to_async(Message.objects.get)(pk=posted["assistant_message"]["id"])
    assert (message.status, message.content) == ("cancelled", partial)
    assert message.completion_tokens < 480
    # The slot is free: once a later request is done, vLLM's scheduler runs nothing.
    ws = await connect(conversation.pk, api_user.key)
    await post(api_user, conversation.pk, {"content": "next", "max_tokens": 8, "ignore_eos": True})
    assert (await events_until_final(ws, timeout=60))[-1]["event"] == "completed"
    await ws.disconnect()
    stats = tiny_worker.engine_stats()
    assert (stats["in_flight"], stats["running"], stats["waiting"]) == (0, 0, 0), stats


async def test_a_history_longer_than_the_window_is_trimmed_and_still_answered(tiny_worker, api_user):
    conversation = await database_sync_to_async(ConversationFactory)(owner=api_user.user, model="tiny")
    ws = await connect(conversation.pk, api_user.key)
    for turn in range(5):
        await post(
            api_user, conversation.pk, {"content": words(120, turn), "max_tokens": 48, "ignore_eos": True}
        )
        completed = (await events_until_final(ws, timeout=60))[-1]
        assert completed["event"] == "completed", completed
    await ws.disconnect()

    messages = await database_sync_to_async(lambda: list(conversation.messages.order_by("id")))()
    user_words = sum(len(m.content.split()) for m in messages if m.role == "user")
    assert user_words > WINDOW  # far more than fits: every word is at least one token
    assert completed["prompt_tokens"] + 48 <= WINDOW


async def test_a_message_that_cannot_fit_the_window_is_refused_with_the_limit(api_user):
    conversation = await database_sync_to_async(ConversationFactory)(owner=api_user.user, model="tiny")
    call_command("create_tiny_model", path=settings.LLM_MODELS["tiny"]["options"]["model"])
    response = await database_sync_to_async(
        lambda: api_user.client().post(
            f"/api/conversations/{conversation.pk}/messages/", {"content": words(600), "max_tokens": 32}
        )
    )()
    assert response.status_code == 400
    body = response.json()
    assert body["field"] == "content"
    assert f"context window of model 'tiny' ({WINDOW} tokens)" in body["detail"]
    assert await database_sync_to_async(InferenceJob.objects.count)() == 0


def test_a_vllm_worker_whose_model_cannot_load_exits_with_the_reason(tmp_path):
    models = {"tiny": {**settings.LLM_MODELS["tiny"], "options": {"model": str(tmp_path / "missing")}}}
    result = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "run_workers", "tiny"],
        env=worker_env(LLM_MODELS=json.dumps(models)),
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
    )
    assert result.returncode != 0
    assert "engine for model 'tiny' could not start" in result.stderr
    assert "is not a model folder" in result.stderr


@pytest.mark.parametrize("step_stats", [None, True, False])
def test_the_engines_own_options_do_not_reach_vllm(step_stats):
    """``step_stats`` (like ``log_stats``) is ours: vLLM's arguments never carry it, and
    vLLM's periodic log line stays off unless ``log_stats`` asks for it."""
    from vllm import AsyncEngineArgs

    from inference.engines.vllm_engine import VLLMEngine

    call_command("create_tiny_model", path=settings.LLM_MODELS["tiny"]["options"]["model"])
    options = dict(settings.LLM_MODELS["tiny"]["options"])
    if step_stats is not None:
        options["step_stats"] = step_stats
    engine = VLLMEngine(model="tiny", options=options)

    kwargs = engine._engine_kwargs(AsyncEngineArgs)

    assert "step_stats" not in kwargs
    assert kwargs["disable_log_stats"] is True
    assert engine.stats()["step_stats"] is (step_stats is not False)
    assert ("batch_sizes" in engine.stats()) is (step_stats is not False)
    AsyncEngineArgs(**kwargs)  # vLLM takes them as they are


def test_log_stats_turns_on_vllms_log_line_only_with_step_stats():
    from vllm import AsyncEngineArgs

    from inference.engines.vllm_engine import VLLMEngine

    call_command("create_tiny_model", path=settings.LLM_MODELS["tiny"]["options"]["model"])
    base = dict(settings.LLM_MODELS["tiny"]["options"], log_stats=True)
    on = VLLMEngine(model="tiny", options=base)._engine_kwargs(AsyncEngineArgs)
    off = VLLMEngine(model="tiny", options={**base, "step_stats": False})._engine_kwargs(AsyncEngineArgs)
    assert (on["disable_log_stats"], off["disable_log_stats"]) == (False, True)
