"""The worker side of the streams: one publisher per worker process, on its engine loop.

``EventPublisher`` batches what all generations emit in one loop turn into
one Redis round trip (``publish_events``), and ``DeltaCoalescer`` turns one
generation's tokens into a few deltas a second.
"""

from __future__ import annotations

import asyncio
import logging
import time

import redis.asyncio as aioredis
from django.conf import settings

from conversations.streams.events import StreamEvent
from conversations.streams.store import publish_events
from llmproject.aio import cancel_and_wait

logger = logging.getLogger(__name__)


class EventPublisher:
    """Publishes stream events from a worker; lives on the engine's event loop.

    ``emit`` queues an event and returns at once (generation never waits on
    Redis); ``publish`` queues one and waits until it is stored and sent.
    Whatever is queued during one loop turn goes out as one batch, and batches
    go out in order.
    """

    def __init__(self) -> None:
        self._pending: list[tuple[int, StreamEvent, asyncio.Future[int] | None]] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._redis = aioredis.Redis.from_url(settings.REDIS_URL, decode_responses=True)
        self.batches = 0
        self.events = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="event-publisher")

    def emit(self, conversation_id: int, event: StreamEvent) -> None:
        self._pending.append((conversation_id, event, None))
        self._wakeup.set()

    async def publish(self, conversation_id: int, event: StreamEvent) -> int:
        """Queue ``event`` and wait until it is stored; returns its seq."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending.append((conversation_id, event, future))
        self._wakeup.set()
        return await future

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        await self._redis.aclose()

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            batch, self._pending = self._pending, []
            if not batch:
                continue
            try:
                seqs = await publish_events([(cid, event) for cid, event, _ in batch], client=self._redis)
            except Exception as exc:  # keep publishing later batches; waiters see the error
                logger.exception("publishing %d stream events failed", len(batch))
                for _, _, future in batch:
                    if future is not None and not future.done():
                        future.set_exception(exc)
                continue
            self.batches += 1
            self.events += len(batch)
            for (_, _, future), seq in zip(batch, seqs, strict=True):
                if future is not None and not future.done():
                    future.set_result(seq)


class DeltaCoalescer:
    """Coalesces one generation's deltas: flushed every ``interval`` seconds or
    ``max_tokens`` tokens, whichever comes first. Runs on the publisher's loop."""

    def __init__(
        self,
        publisher: EventPublisher,
        *,
        conversation_id: int,
        message_id: int,
        interval: float,
        max_tokens: int,
    ) -> None:
        self._publisher = publisher
        self._conversation_id = conversation_id
        self._message_id = message_id
        self._interval = interval
        self._max_tokens = max_tokens
        self._text: list[str] = []
        self._tokens = 0
        self._last_flush = time.monotonic()
        self._timer: asyncio.TimerHandle | None = None
        self._sent_first = False

    def add(self, text: str, tokens: int) -> None:
        if not text and not tokens:
            return
        self._text.append(text)
        self._tokens += tokens
        elapsed = time.monotonic() - self._last_flush
        if not self._sent_first:
            # The first token goes out at once: time to first token is what
            # a waiting user feels; coalescing pays off only after it.
            self._sent_first = True
            self.flush()
        elif self._tokens >= self._max_tokens or elapsed >= self._interval:
            self.flush()
        elif self._timer is None:
            # A stall must not hold back text already generated.
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._interval - elapsed, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._last_flush = time.monotonic()
        if not self._text:
            return
        text, tokens = "".join(self._text), self._tokens
        self._text, self._tokens = [], 0
        self._publisher.emit(
            self._conversation_id,
            {"event": "delta", "message_id": self._message_id, "text": text, "tokens": tokens},
        )
