"""The WebSocket consumer's delivery guarantees, with events injected straight into Redis."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from conversations.streams import store
from llmproject.asgi import application
from tests.factories import ConversationFactory

pytestmark = pytest.mark.django_db(transaction=True)


async def store_without_sending(conversation_id: int, event: dict) -> int:
    """Append to the stream but skip group_send: what channels-redis does to a full channel."""
    [(seq, listening)] = await store.store_events([(conversation_id, event)])
    assert listening, "the consumer registers as a listener when it connects"
    return seq


async def connect(conversation_id: int, key: str) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(
        application,
        f"/ws/conversations/{conversation_id}/",
        headers=[(b"authorization", f"Bearer {key}".encode())],
    )
    connected, code = await communicator.connect()
    assert connected, code
    assert (await communicator.receive_json_from())["event"] == "hello"
    return communicator


async def test_events_dropped_by_the_channel_layer_are_filled_in_from_the_stream(api_user):
    conversation = await database_sync_to_async(ConversationFactory)(owner=api_user.user)
    ws = await connect(conversation.pk, api_user.key)
    await store_without_sending(
        conversation.pk, {"event": "started", "message_id": 7, "job_id": 1, "attempt": 1}
    )
    await store_without_sending(
        conversation.pk, {"event": "delta", "message_id": 7, "text": "a", "tokens": 1}
    )
    await store.publish_events(
        [(conversation.pk, {"event": "delta", "message_id": 7, "text": "b", "tokens": 1})]
    )
    received = [await ws.receive_json_from(timeout=5) for _ in range(3)]
    first = received[0]["seq"]
    assert [(e["seq"] - first, e["event"]) for e in received] == [(0, "started"), (1, "delta"), (2, "delta")]
    assert await ws.receive_nothing(timeout=0.3)
    await ws.disconnect()


async def test_a_dropped_last_event_still_arrives(api_user):
    conversation = await database_sync_to_async(ConversationFactory)(owner=api_user.user)
    ws = await connect(conversation.pk, api_user.key)
    [started] = await store.publish_events(
        [(conversation.pk, {"event": "started", "message_id": 7, "job_id": 1, "attempt": 1})]
    )
    assert (await ws.receive_json_from(timeout=5))["event"] == "started"
    # Nothing follows the dropped "completed" to reveal a gap: the stall check finds it.
    await store_without_sending(
        conversation.pk,
        {
            "event": "completed",
            "message_id": 7,
            "content": "done",
            "finish_reason": "stop",
            "prompt_tokens": 1,
            "completion_tokens": 1,
            "timings": {},
        },
    )
    completed = await ws.receive_json_from(timeout=5)
    assert (completed["event"], completed["seq"], completed["content"]) == ("completed", started + 1, "done")
    await ws.disconnect()


async def test_a_client_can_ask_to_replay_from_a_seq(api_user):
    conversation = await database_sync_to_async(ConversationFactory)(owner=api_user.user)
    seqs = [
        *await store.publish_events(
            [
                (conversation.pk, {"event": "delta", "message_id": 7, "text": text, "tokens": 1})
                for text in "abc"
            ]
        )
    ]
    ws = await connect(conversation.pk, api_user.key)
    await ws.send_json_to({"type": "resume", "after": seqs[0]})
    received = [await ws.receive_json_from(timeout=5) for _ in range(2)]
    assert [(e["seq"], e["text"]) for e in received] == [(seqs[1], "b"), (seqs[2], "c")]
    await ws.send_json_to({"type": "resume", "after": "x"})
    assert (await ws.receive_json_from())["event"] == "error"
    await ws.disconnect()


async def test_a_browser_session_from_another_origin_is_refused(api_user):
    conversation = await database_sync_to_async(ConversationFactory)(owner=api_user.user)
    communicator = WebsocketCommunicator(
        application, f"/ws/conversations/{conversation.pk}/", headers=[(b"origin", b"https://evil.example")]
    )
    connected, _ = await communicator.connect()
    assert not connected


async def test_workers_send_to_a_conversation_only_while_a_websocket_listens(api_user):
    conversation = await database_sync_to_async(ConversationFactory)(owner=api_user.user)
    delta = {"event": "delta", "message_id": 7, "text": "a", "tokens": 1}
    [(_, listening)] = await store.store_events([(conversation.pk, delta)])
    assert not listening
    ws = await connect(conversation.pk, api_user.key)
    [(_, listening)] = await store.store_events([(conversation.pk, delta)])
    assert listening
    await ws.disconnect()
    [(_, listening)] = await store.store_events([(conversation.pk, delta)])
    assert not listening
