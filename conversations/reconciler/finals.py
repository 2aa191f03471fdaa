"""The reconciler's rule for streams: every stored final state reaches the clients.

A worker stores an answer, then sends its final event; if Redis cannot take
the event then (it is down, or restarting), clients following the stream
never learn the answer ended (a WebSocket client that reconnects, an OpenAI
API request waiting for it). Each pass reads the final events of the event
log (``response_generated``, ``inference_failed``, ``inference_cancelled``:
one indexed query by time) since the last pass, a little before (a
transaction commits after its rows' ``created_at``), and sends the final
event, built from the stored message, of those whose stream does not have
one (``store.publish_missing_finals`` appends it only then, so a late copy
from the worker is not appended twice).

When Redis has lost its data (the reconciler's marker key is gone: a restart
without persistence), the streams' records of which messages ended are gone
too: the pass looks back ``LOOKBACK`` seconds.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone

from conversations.answers import message_final_event
from conversations.models import ConversationEvent, Message
from conversations.reconciler.report import action_recorded
from conversations.streams import store
from conversations.streams.events import StreamEvent
from llmproject.aio import LoopThread

logger = logging.getLogger("conversations.reconciler")

FINAL_KINDS = (
    ConversationEvent.Kind.RESPONSE_GENERATED,
    ConversationEvent.Kind.INFERENCE_FAILED,
    ConversationEvent.Kind.INFERENCE_CANCELLED,
)
# A final event is sent right after its answer is stored: only those stored this
# long ago are looked at, or the pass would race the worker for every answer.
SETTLE = 2.0
# Rows committed late (a long transaction) still show up in the next passes.
OVERLAP = 30.0
# How far back to look when the reconciler starts, or Redis has lost its data.
LOOKBACK = 600.0
_MARKER = "llm:reconciler:redis-epoch"


class StreamFinals:
    def __init__(self, *, redis: Any, streams: LoopThread) -> None:
        self._redis = redis
        self._streams = streams
        self._since: datetime | None = None  # end of the last pass's window
        self._seen: dict[int, float] = {}  # message id -> when its final event was found sent

    def reconcile(self) -> None:
        now = timezone.now()
        if self._redis.set(_MARKER, int(time.time()), nx=True):
            # The marker was missing: first pass, or Redis lost its data.
            self._since, self._seen = now - timedelta(seconds=LOOKBACK), {}
        until = now - timedelta(seconds=SETTLE)
        since = (self._since or now - timedelta(seconds=LOOKBACK)) - timedelta(seconds=OVERLAP)
        rows = (
            ConversationEvent.objects.filter(kind__in=FINAL_KINDS)
            .filter(created_at__gte=since, created_at__lt=until)
            .exclude(message_id=None)
            .values_list("conversation_id", "message_id")
            .distinct()
        )
        pending = [(c, m) for c, m in rows if m not in self._seen]
        recorded = self._streams.run(store.finals_recorded(pending))
        stamp = time.time()
        missing = [pair for pair, found in zip(pending, recorded, strict=True) if not found]
        self._seen.update((m, stamp) for (_, m), found in zip(pending, recorded, strict=True) if found)
        if missing:
            self._send(missing, stamp)
        self._since = until
        self._seen = {m: t for m, t in self._seen.items() if t > stamp - 2 * (OVERLAP + LOOKBACK)}

    def _send(self, missing: list[tuple[int, int]], stamp: float) -> None:
        messages = Message.objects.select_related("conversation").in_bulk([m for _, m in missing])
        batch: list[tuple[int, StreamEvent]] = []
        models: list[str] = []
        for conversation_id, message_id in missing:
            message = messages.get(message_id)
            # Not final any more: a new attempt runs (its own final event will come).
            event = message_final_event(message) if message is not None else None
            if event is not None:
                batch.append((conversation_id, event))
                models.append(message.model or message.conversation.model)
        appended = self._streams.run(store.publish_missing_finals(batch)) if batch else []
        for (conversation_id, event), model, sent in zip(batch, models, appended, strict=True):
            self._seen[event["message_id"]] = stamp
            if sent:
                action_recorded(action="final_sent", model=model)
                logger.warning(
                    "message %s of conversation %s: sent its final event (%s), which its stream lacked",
                    event["message_id"],
                    conversation_id,
                    event["event"],
                )
