"""Pushing stream events to a conversation's clients, without losing any.

channels-redis delivers at most once: ``group_send`` silently drops messages
for a channel that holds ``capacity`` unread ones. So every event is first
appended to a Redis stream per conversation, whose entry id *is* the event's
sequence number (``<seq>-0``), and only then sent to the channel-layer group.
Consumers forward events in ``seq`` order and fill any gap from the stream
(``events_since``), which is also how a reconnecting client catches up.

The worker side is ``EventPublisher``: one per worker process, on the engine's
event loop. It batches what all generations emit in one loop turn into one
Redis round trip and one ``group_send`` per conversation.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import weakref
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from typing import Any

import redis.asyncio as aioredis
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings

from inference.events import FINAL_EVENTS, StreamEvent
from llmproject.aio import cancel_and_wait

logger = logging.getLogger(__name__)

# INCR the conversation's counter, append the event under that id, and keep
# the set of messages in flight (message id -> seq of its ``started``) so a
# client connecting mid-answer can replay it from its start. Atomic, so the
# stream order is the seq order even with several publishers.
_APPEND_LUA = """
local seq = redis.call('INCR', KEYS[1])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], seq .. '-0', 'e', ARGV[1])
if ARGV[4] == 'started' then
  redis.call('HSET', KEYS[3], ARGV[5], seq)
elseif ARGV[4] == 'final' then
  redis.call('HDEL', KEYS[3], ARGV[5])
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('EXPIRE', KEYS[3], ARGV[3])
return seq
"""


def group_name(conversation_id: int) -> str:
    return f"conversation.{conversation_id}"


def _keys(conversation_id: int) -> tuple[str, str, str]:
    # The hash tag keeps one conversation's keys in one Redis Cluster slot.
    tag = f"llm:{{conv:{conversation_id}}}"
    return f"{tag}:seq", f"{tag}:events", f"{tag}:inflight"


_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, aioredis.Redis]] = (
    weakref.WeakKeyDictionary()
)


def redis_client(url: str | None = None) -> aioredis.Redis:
    """An asyncio Redis client for the running loop (clients are loop-bound), for
    ``url`` (default ``REDIS_URL``)."""
    url = url or settings.REDIS_URL
    clients = _clients.setdefault(asyncio.get_running_loop(), {})
    client = clients.get(url)
    if client is None:
        client = aioredis.Redis.from_url(url, decode_responses=True)
        clients[url] = client
    return client


def _decode(conversation_id: int, entry_id: str, fields: dict[str, str]) -> dict[str, Any]:
    event = json.loads(fields["e"])
    event["seq"] = int(entry_id.split("-", 1)[0])
    event["conversation_id"] = conversation_id
    return event


async def events_since(conversation_id: int, after_seq: int) -> list[dict[str, Any]]:
    """Every stored event with ``seq > after_seq``, in order."""
    _, stream, _ = _keys(conversation_id)
    entries = await redis_client().xrange(stream, min=f"({after_seq}-0", max="+")
    return [_decode(conversation_id, entry_id, fields) for entry_id, fields in entries]


# XREAD BLOCK must return before the client's socket timeout (redis-py's
# default is 5 s) or the read fails instead of coming back empty.
_FOLLOW_BLOCK_MS = 2000


async def follow(
    conversation_id: int, after_seq: int = 0, *, idle: float = 15.0
) -> AsyncIterator[list[dict[str, Any]]]:
    """Every event with ``seq > after_seq``, in order, as it is appended; never ends.

    Reads the conversation's stream with XREAD BLOCK, so events reach the
    reader one Redis round trip after they are stored, with no polling. Yields
    them in batches (everything one read returned, so a reader can write them
    out at once), and an empty batch after ``idle`` seconds without events (a
    cue to send a keep-alive). Each reader holds one connection while it blocks.
    """
    _, stream, _ = _keys(conversation_id)
    client = redis_client()
    last_id = f"{after_seq}-0"
    quiet_since = time.monotonic()
    while True:
        reply = await client.xread({stream: last_id}, block=_FOLLOW_BLOCK_MS)
        if not reply:
            if time.monotonic() - quiet_since >= idle:
                quiet_since = time.monotonic()
                yield []
            continue
        quiet_since = time.monotonic()
        batch = []
        for _, entries in reply:
            for entry_id, fields in entries:
                last_id = entry_id
                batch.append(_decode(conversation_id, entry_id, fields))
        yield batch


async def stream_position(conversation_id: int) -> tuple[int, dict[int, int]]:
    """The last seq published, and the messages in flight with the seq they started at."""
    seq_key, _, inflight_key = _keys(conversation_id)
    async with redis_client().pipeline(transaction=True) as pipe:
        pipe.get(seq_key)
        pipe.hgetall(inflight_key)
        seq, inflight = await pipe.execute()
    return int(seq or 0), {int(k): int(v) for k, v in inflight.items()}


async def publish_events(
    batch: Sequence[tuple[int, StreamEvent]], *, client: aioredis.Redis | None = None
) -> list[int]:
    """Store ``batch`` in the conversations' streams, then send it to their groups.

    One Redis round trip for the whole batch, one ``group_send`` per
    conversation. Returns the events' seqs, in order.
    """
    client = client or redis_client()
    script = client.register_script(_APPEND_LUA)
    maxlen, ttl = str(settings.LLM_STREAM_MAXLEN), str(settings.LLM_STREAM_TTL_SECONDS)
    async with client.pipeline(transaction=False) as pipe:
        for conversation_id, event in batch:
            kind = event["event"]
            marker = "started" if kind == "started" else "final" if kind in FINAL_EVENTS else ""
            await script(
                keys=list(_keys(conversation_id)),
                args=[json.dumps(event), maxlen, ttl, marker, event["message_id"]],
                client=pipe,
            )
        seqs = [int(seq) for seq in await pipe.execute()]

    by_conversation: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for (conversation_id, event), seq in zip(batch, seqs, strict=True):
        by_conversation[conversation_id].append({**event, "seq": seq, "conversation_id": conversation_id})
    # If a group_send is dropped, consumers recover the events from the stream.
    layer = get_channel_layer()
    await asyncio.gather(
        *(
            layer.group_send(group_name(cid), {"type": "stream.events", "events": events})
            for cid, events in by_conversation.items()
        )
    )
    return seqs


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


_process_publisher: tuple[EventPublisher, asyncio.AbstractEventLoop] | None = None


def set_process_publisher(publisher: EventPublisher | None, loop: asyncio.AbstractEventLoop | None) -> None:
    """Route this process's ``push_event`` calls through a worker's publisher."""
    global _process_publisher
    _process_publisher = (publisher, loop) if publisher is not None and loop is not None else None


def push_event(conversation_id: int, event: StreamEvent, *, timeout: float = 10) -> int:
    """Store and send one event, from synchronous code; returns its seq.

    This is the one helper for pushing events outside the engine loop. In a
    worker it goes through the process's publisher (keeping its order); in
    any other process (web, admin) it publishes directly.
    """
    if _process_publisher is not None:
        publisher, loop = _process_publisher
        future = asyncio.run_coroutine_threadsafe(publisher.publish(conversation_id, event), loop)
        return future.result(timeout)
    return async_to_sync(publish_events)([(conversation_id, event)])[0]


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
