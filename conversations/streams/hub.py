"""The web process's reading side of the streams: one XREAD BLOCK for every request.

Every OpenAI API request of a web process (one event loop) follows its
conversation's stream through one ``StreamHub``, instead of one blocked Redis
connection per request.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
import weakref
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
from django.conf import settings

from conversations.streams.store import decode_entry, events_since, stream_key
from llmproject.redis_client import redis_client

logger = logging.getLogger(__name__)

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
        key = stream_key(conversation_id)
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
        key = stream_key(follower.conversation_id)
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
                batch = [decode_entry(conversation_id, entry_id, fields) for entry_id, fields in entries]
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
