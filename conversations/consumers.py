"""The WebSocket of one conversation: relays its stream events, in order, none lost.

Protocol (JSON text frames). On connect the server sends
``{"event": "hello", "conversation_id", "last_seq"}`` and then replays what
the client has not seen: everything after ``?after=<seq>`` if given, otherwise
the answers still being generated, from their start. After that every event
(``started``, ``delta``, ``completed``, ``failed``, ``cancelled``) carries a
``seq`` one higher than the previous one. A client that reconnects passes the
last ``seq`` it saw as ``?after=`` and misses nothing.

Client messages: ``{"type": "stop", "message_id": id}`` cancels an answer,
``{"type": "resume", "after": seq}`` replays, ``{"type": "ping"}``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from conversations.dispatch import job_cancel
from conversations.selectors import conversation_owned, job_get_for_message
from conversations.streams import store
from conversations.streams.events import FINAL_EVENTS
from llmproject.aio import cancel_and_wait
from llmproject.exceptions import ApplicationError

logger = logging.getLogger(__name__)

# Close codes (4000-4999 are the application's).
CLOSE_UNAUTHENTICATED = 4401
CLOSE_NOT_FOUND = 4404
# While an answer is in flight and nothing arrives for this long, look in the
# stream in case the channel layer dropped the tail.
STALL_CHECK_SECONDS = 1.0


class ConversationConsumer(AsyncJsonWebsocketConsumer):
    conversation_id: int
    last_seq: int

    async def connect(self) -> None:
        user = self.scope.get("user")
        self.conversation_id = int(self.scope["url_route"]["kwargs"]["conversation_id"])
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        if not await database_sync_to_async(conversation_owned)(
            owner_id=user.pk, conversation_id=self.conversation_id
        ):
            await self.close(code=CLOSE_NOT_FOUND)
            return
        self.group = store.group_name(self.conversation_id)
        self.inflight: set[int] = set()
        self.last_event_at = time.monotonic()
        self.lock = asyncio.Lock()  # one sender at a time keeps seq order
        # Join the group before reading the position: every event after it
        # arrives through the group or is found in the stream.
        await self.channel_layer.group_add(self.group, self.channel_name)
        # Workers send to the group only while it has a listener on record.
        await store.listener_add(
            self.conversation_id, self.channel_name, ttl=getattr(self.channel_layer, "group_expiry", 86400)
        )
        await self.accept()
        current, inflight = await store.stream_position(self.conversation_id)
        after = self._after_param()
        if after is None:
            after = min(inflight.values(), default=current + 1) - 1
        self.last_seq = min(after, current)
        await self.send_json({"event": "hello", "conversation_id": self.conversation_id, "last_seq": current})
        await self.catch_up()
        self.watchdog = asyncio.create_task(self._watch_stalls())

    def _after_param(self) -> int | None:
        query = parse_qs(self.scope.get("query_string", b"").decode())
        try:
            return max(0, int(query["after"][0]))
        except (KeyError, ValueError, IndexError):
            return None

    async def disconnect(self, code: int) -> None:
        await cancel_and_wait(getattr(self, "watchdog", None))
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)
            await store.listener_remove(self.conversation_id, self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        kind = content.get("type") if isinstance(content, dict) else None
        if kind == "ping":
            await self.send_json({"event": "pong", "last_seq": self.last_seq})
        elif kind == "resume":
            # {"type": "resume", "after": <seq>}: replay from there.
            try:
                self.last_seq = max(0, int(content.get("after", self.last_seq)))
            except (TypeError, ValueError):
                await self.send_json({"event": "error", "error": "resume.after must be an integer"})
                return
            await self.catch_up()
        elif kind == "stop":
            # {"type": "stop", "message_id": <id>}: cancel that answer.
            await self._stop(content.get("message_id"))
        else:
            await self.send_json({"event": "error", "error": f"unknown message type {kind!r}"})

    async def _stop(self, message_id: Any) -> None:
        if not isinstance(message_id, int):
            await self.send_json({"event": "error", "error": "stop.message_id must be an integer"})
            return

        def stop() -> None:
            job = job_get_for_message(
                owner_id=self.scope["user"].pk, conversation_id=self.conversation_id, message_id=message_id
            )
            job_cancel(job=job)

        try:
            await database_sync_to_async(stop)()
        except ApplicationError as exc:
            await self.send_json({"event": "error", "error": exc.message, "message_id": message_id})

    async def stream_events(self, message: dict[str, Any]) -> None:
        """Events from the worker, via the channel layer (handler of ``stream.events``)."""
        events = message["events"]
        async with self.lock:
            if events and events[0]["seq"] > self.last_seq + 1:
                # A gap: the channel layer dropped something; the stream has it.
                events = await store.events_since(self.conversation_id, self.last_seq)
            await self._forward(events)

    async def catch_up(self) -> None:
        async with self.lock:
            await self._forward(await store.events_since(self.conversation_id, self.last_seq))

    async def _forward(self, events: list[dict[str, Any]]) -> None:
        for event in events:
            if event["seq"] <= self.last_seq:
                continue  # already sent (replayed, then also delivered by the group)
            await self.send_json(event)
            self.last_seq = event["seq"]
            self.last_event_at = time.monotonic()
            if event["event"] in FINAL_EVENTS:
                self.inflight.discard(event["message_id"])
            else:
                self.inflight.add(event["message_id"])

    async def _watch_stalls(self) -> None:
        while True:
            await asyncio.sleep(STALL_CHECK_SECONDS)
            if self.inflight and time.monotonic() - self.last_event_at > STALL_CHECK_SECONDS:
                try:
                    await self.catch_up()
                except Exception:
                    logger.exception("catching up conversation %s failed", self.conversation_id)
