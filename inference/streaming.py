"""Pushing stream events to a conversation's clients, without losing any.

channels-redis delivers at most once: ``group_send`` silently drops messages
for a channel that holds ``capacity`` unread ones. So every event is first
appended to a Redis stream per conversation, whose entry id *is* the event's
sequence number (``<seq>-0``), and only then sent to the channel-layer group.
Consumers forward events in ``seq`` order and fill any gap from the stream
(``events_since``), which is also how a reconnecting client catches up.

The worker side is ``EventPublisher``: one per worker process, on the engine's
event loop. It batches what all generations emit in one loop turn into one
Redis round trip, and one ``group_send`` per conversation that has a WebSocket
listening (consumers register in the conversation's ``listeners`` hash; a
chat completion's conversation usually has none, and an empty group still
costs channels-redis two round trips).

The reading side of the OpenAI API is ``follow``: every request of a web
process is served by one ``StreamHub``, a single XREAD BLOCK over all the
streams followed, instead of one blocked connection per request.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import uuid
import weakref
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings

from inference.events import FINAL_EVENTS, StreamEvent
from llmproject.aio import cancel_and_wait

logger = logging.getLogger(__name__)

# INCR the conversation's counter, append the event under that id, and keep
# the set of messages in flight (message id -> seq of its ``started``) so a
# client connecting mid-answer can replay it from its start. Atomic, so the
# stream order is the seq order even with several publishers. Returns the seq
# and whether a WebSocket consumer listens to the conversation.
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
return {seq, redis.call('EXISTS', KEYS[4])}
"""
_APPEND_SHA = hashlib.sha1(_APPEND_LUA.encode()).hexdigest()


def group_name(conversation_id: int) -> str:
    return f"conversation.{conversation_id}"


def _keys(conversation_id: int) -> tuple[str, str, str, str]:
    """The conversation's counter, stream, in-flight hash and listeners hash."""
    # The hash tag keeps one conversation's keys in one Redis Cluster slot.
    tag = f"llm:{{conv:{conversation_id}}}"
    return f"{tag}:seq", f"{tag}:events", f"{tag}:inflight", f"{tag}:listeners"


def _stream_key(conversation_id: int) -> str:
    return _keys(conversation_id)[1]


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
    entries = await redis_client().xrange(_stream_key(conversation_id), min=f"({after_seq}-0", max="+")
    return [_decode(conversation_id, entry_id, fields) for entry_id, fields in entries]


# XREAD BLOCK must return before the client's socket timeout (redis-py's
# default is 5 s) or the read fails instead of coming back empty.
_FOLLOW_BLOCK_MS = 2000


class _Follower:
    __slots__ = ("conversation_id", "queue")

    def __init__(self, conversation_id: int) -> None:
        self.conversation_id = conversation_id
        # Batches of decoded events, or the exception that ended the hub's read.
        self.queue: asyncio.Queue[list[dict[str, Any]] | BaseException] = asyncio.Queue()


class StreamHub:
    """Reads every followed conversation stream of this process (this event loop)
    with one XREAD BLOCK, and hands each follower the entries of its stream.

    A blocked XREAD sees only the keys it was given; a follower of a stream the
    read does not cover yet wakes it with an entry in the hub's own wake-up
    stream, which every read also covers.
    """

    def __init__(self, url: str) -> None:
        # Its own client: the blocked read holds a connection for up to a block.
        self._reader = aioredis.Redis.from_url(url, decode_responses=True)
        self._url = url
        self._streams: dict[str, tuple[str, set[_Follower]]] = {}  # key -> (last id read, followers)
        self._wake_key = f"llm:hub:{uuid.uuid4().hex}"
        self._wake_id = "0-0"
        self._changed = asyncio.Event()
        self._reading: frozenset[str] = frozenset()  # the keys the read in progress covers
        self._wake_sent = False
        self._wakes: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None

    def subscribe(self, conversation_id: int, after_seq: int) -> tuple[_Follower, int]:
        """Follow a conversation's stream; returns the follower and the seq from which the
        hub delivers to it (entries up to that seq are the follower's to fetch)."""
        key = _stream_key(conversation_id)
        follower = _Follower(conversation_id)
        last_id, followers = self._streams.get(key, (f"{after_seq}-0", set()))
        followers.add(follower)
        self._streams[key] = (last_id, followers)
        if key not in self._reading:
            self._changed.set()
            if self._reading and not self._wake_sent:
                self._wake_sent = True
                task = asyncio.get_running_loop().create_task(self._wake())
                # The loop keeps only weak references to tasks.
                self._wakes.add(task)
                task.add_done_callback(self._wakes.discard)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="stream-hub")
        return follower, int(last_id.split("-", 1)[0])

    def unsubscribe(self, follower: _Follower) -> None:
        key = _stream_key(follower.conversation_id)
        entry = self._streams.get(key)
        if entry is None:
            return
        entry[1].discard(follower)
        if not entry[1]:
            del self._streams[key]

    async def _wake(self) -> None:
        try:
            async with redis_client(self._url).pipeline(transaction=False) as pipe:
                pipe.xadd(self._wake_key, {"w": "1"}, maxlen=1, approximate=False)
                pipe.expire(self._wake_key, 60)
                await pipe.execute()
        except Exception:
            # The read in progress comes back by itself within one block.
            logger.warning("could not wake the stream hub", exc_info=True)

    async def _run(self) -> None:
        failures = 0
        while True:
            if not self._streams:
                self._changed.clear()
                await self._changed.wait()
                continue
            self._changed.clear()
            self._wake_sent = False
            keys = {key: last_id for key, (last_id, _) in self._streams.items()}
            self._reading = frozenset(keys)
            keys[self._wake_key] = self._wake_id
            try:
                reply = await self._reader.xread(keys, block=_FOLLOW_BLOCK_MS)
            except Exception as exc:  # every follower learns of it; later ones may fare better
                self._reading = frozenset()
                for _, followers in list(self._streams.values()):
                    for follower in followers:
                        follower.queue.put_nowait(exc)
                failures += 1
                await asyncio.sleep(min(0.05 * 2**failures, 2))
                continue
            finally:
                self._reading = frozenset()
            failures = 0
            for key, entries in reply or ():
                if key == self._wake_key:
                    self._wake_id = entries[-1][0]
                    continue
                entry = self._streams.get(key)
                if entry is None:
                    continue  # nobody follows it any more
                followers = entry[1]
                self._streams[key] = (entries[-1][0], followers)
                conversation_id = next(iter(followers)).conversation_id
                batch = [_decode(conversation_id, entry_id, fields) for entry_id, fields in entries]
                for follower in followers:
                    follower.queue.put_nowait(batch)


_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, StreamHub] = weakref.WeakKeyDictionary()


def _hub() -> StreamHub:
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is None:
        hub = _hubs[loop] = StreamHub(settings.REDIS_URL)
    return hub


async def follow(
    conversation_id: int, after_seq: int = 0, *, idle: float = 15.0
) -> AsyncIterator[list[dict[str, Any]]]:
    """Every event with ``seq > after_seq``, in order, as it is appended; never ends.

    Events reach the reader one Redis round trip after they are stored, with
    no polling, through the process's ``StreamHub``. Yields them in batches
    (everything that arrived since the last yield, so a reader can write them
    out at once), and an empty batch after ``idle`` seconds without events (a
    cue to send a keep-alive). Raises what the hub's read raised (Redis down).
    """
    hub = _hub()
    follower, hub_from = hub.subscribe(conversation_id, after_seq)
    last_seq = after_seq
    try:
        if hub_from > after_seq:
            # The hub was already past ``after_seq`` for another follower.
            batch = [e for e in await events_since(conversation_id, after_seq) if e["seq"] <= hub_from]
            if batch:
                last_seq = batch[-1]["seq"]
                yield batch
        while True:
            try:
                async with asyncio.timeout(idle):
                    item = await follower.queue.get()
            except TimeoutError:
                yield []
                continue
            batch = []
            while True:
                if isinstance(item, BaseException):
                    raise item
                batch += [event for event in item if event["seq"] > last_seq]
                if follower.queue.empty():
                    break
                item = follower.queue.get_nowait()
            if batch:
                last_seq = batch[-1]["seq"]
                yield batch
    finally:
        hub.unsubscribe(follower)


async def stream_position(conversation_id: int) -> tuple[int, dict[int, int]]:
    """The last seq published, and the messages in flight with the seq they started at."""
    seq_key, _, inflight_key, _ = _keys(conversation_id)
    async with redis_client().pipeline(transaction=True) as pipe:
        pipe.get(seq_key)
        pipe.hgetall(inflight_key)
        seq, inflight = await pipe.execute()
    return int(seq or 0), {int(k): int(v) for k, v in inflight.items()}


async def listener_add(conversation_id: int, channel_name: str, *, ttl: int) -> None:
    """Register a WebSocket consumer of the conversation, for ``ttl`` seconds (the channel
    layer's group expiry, after which it drops the consumer from the group too).

    Precondition: the consumer has joined the conversation's group. Events stored
    before this returns are the consumer's to read from the stream.
    """
    key = _keys(conversation_id)[3]
    async with redis_client().pipeline(transaction=True) as pipe:
        pipe.hset(key, channel_name, int(time.time()))
        pipe.expire(key, ttl)
        await pipe.execute()


async def listener_remove(conversation_id: int, channel_name: str) -> None:
    await redis_client().hdel(_keys(conversation_id)[3], channel_name)


async def store_events(
    batch: Sequence[tuple[int, StreamEvent]], *, client: aioredis.Redis | None = None
) -> list[tuple[int, bool]]:
    """Append ``batch`` to the conversations' streams in one Redis round trip; returns
    each event's seq and whether a WebSocket consumer listens to its conversation."""
    client = client or redis_client()
    maxlen, ttl = str(settings.LLM_STREAM_MAXLEN), str(settings.LLM_STREAM_TTL_SECONDS)
    calls = []
    for conversation_id, event in batch:
        kind = event["event"]
        marker = "started" if kind == "started" else "final" if kind in FINAL_EVENTS else ""
        calls.append((*_keys(conversation_id), json.dumps(event), maxlen, ttl, marker, event["message_id"]))
    results = await _evalsha_all(client, calls)
    return [(int(seq), bool(listening)) for seq, listening in results]


async def _evalsha_all(client: aioredis.Redis, calls: list[tuple[Any, ...]]) -> list[Any]:
    """Run the append script once per call, pipelined. EVALSHA, loading the script
    only when Redis does not know it (first use, a restart), where redis-py's
    pipelined scripts ask SCRIPT EXISTS on every execute."""
    async with client.pipeline(transaction=False) as pipe:
        for call in calls:
            pipe.evalsha(_APPEND_SHA, 4, *call)
        results = await pipe.execute(raise_on_error=False)
    missing = [i for i, r in enumerate(results) if isinstance(r, redis.exceptions.NoScriptError)]
    if missing:
        # Nothing of a NOSCRIPT call ran: load the script and run those again, in order.
        await client.script_load(_APPEND_LUA)
        async with client.pipeline(transaction=False) as pipe:
            for i in missing:
                pipe.evalsha(_APPEND_SHA, 4, *calls[i])
            for i, result in zip(missing, await pipe.execute(raise_on_error=False), strict=True):
                results[i] = result
    for result in results:
        if isinstance(result, Exception):
            raise result
    return results


async def publish_events(
    batch: Sequence[tuple[int, StreamEvent]], *, client: aioredis.Redis | None = None
) -> list[int]:
    """Store ``batch`` in the conversations' streams, then send it to the groups of those
    with a WebSocket listening.

    One Redis round trip for the whole batch, one ``group_send`` per listened-to
    conversation. Returns the events' seqs, in order.
    """
    stored = await store_events(batch, client=client)
    by_conversation: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for (conversation_id, event), (seq, listening) in zip(batch, stored, strict=True):
        if listening:
            by_conversation[conversation_id].append({**event, "seq": seq, "conversation_id": conversation_id})
    if by_conversation:
        # If a group_send is dropped, consumers recover the events from the stream.
        layer = get_channel_layer()
        await asyncio.gather(
            *(
                layer.group_send(group_name(cid), {"type": "stream.events", "events": events})
                for cid, events in by_conversation.items()
            )
        )
    return [seq for seq, _ in stored]


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
