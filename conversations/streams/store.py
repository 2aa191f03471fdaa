"""Each conversation's event stream in Redis: the record clients read, none lost.

channels-redis delivers at most once: ``group_send`` silently drops messages
for a channel that holds ``capacity`` unread ones. So every event is first
appended to a Redis stream per conversation, whose entry id *is* the event's
sequence number (``<seq>-0``), and only then sent to the channel-layer group
of the conversation's WebSocket consumers (only while one listens: they
register in the conversation's ``listeners`` hash, and an empty group still
costs channels-redis two round trips). Consumers forward events in ``seq``
order and fill any gap from the stream (``events_since``), which is also how
a reconnecting client catches up.

Who writes: a worker's ``EventPublisher`` (``conversations.streams.publisher``),
``push_event`` (``conversations.streams.push``) outside an engine loop, and
the reconciler the final events Redis could not take when their answers were
stored (``publish_missing_finals``).
Who reads: the WebSocket consumer, and the web process's ``StreamHub``
(``conversations.streams.hub``) for the OpenAI API.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions
from channels.layers import get_channel_layer
from django.conf import settings

from conversations.streams.events import FINAL_EVENTS, StreamEvent
from llmproject.redis_client import redis_client

# INCR the conversation's counter, append the event under that id, and keep
# the set of messages in flight (message id -> seq of its ``started``) so a
# client connecting mid-answer can replay it from its start. Atomic, so the
# stream order is the seq order even with several publishers. Returns the seq
# and whether a WebSocket consumer listens to the conversation.
#
# A counter that does not exist yet starts at Redis's clock in microseconds,
# not at 1: when Redis loses a conversation's keys (a restart without
# persistence, an expiry), its new events must still come after every seq a
# client has seen, or a client resuming from its last seq skips them (its
# ``after`` would be above them). Numbers stay below 2**53 (exact in
# JavaScript) until the year 2255. Lua's own number formatting would print
# them as 1.7e+15: they are formatted as integers.
#
# A message's final event is appended once (the ``finals`` hash: message id ->
# seq): the reconciler sends the final event of an answer stored while Redis
# could not take it, and a late copy must not end the answer twice. A
# ``started`` (a new attempt) opens the message again.
_APPEND_LUA = """
local kind = ARGV[4]
if kind == 'final' then
  local done = redis.call('HGET', KEYS[5], ARGV[5])
  if done then
    return {tonumber(done), 0, 0}
  end
end
local seq = redis.call('INCR', KEYS[1])
if seq == 1 then
  local now = redis.call('TIME')
  seq = tonumber(now[1]) * 1000000 + tonumber(now[2])
  redis.call('SET', KEYS[1], string.format('%d', seq))
end
local id = string.format('%d', seq)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], id .. '-0', 'e', ARGV[1])
if kind == 'started' then
  redis.call('HSET', KEYS[3], ARGV[5], id)
  redis.call('HDEL', KEYS[5], ARGV[5])
elseif kind == 'final' then
  redis.call('HDEL', KEYS[3], ARGV[5])
  redis.call('HSET', KEYS[5], ARGV[5], id)
end
for i = 1, 5 do
  if i ~= 4 then
    redis.call('EXPIRE', KEYS[i], ARGV[3])
  end
end
return {seq, redis.call('EXISTS', KEYS[4]), 1}
"""
_APPEND_SHA = hashlib.sha1(_APPEND_LUA.encode()).hexdigest()


def group_name(conversation_id: int) -> str:
    return f"conversation.{conversation_id}"


def _keys(conversation_id: int) -> tuple[str, str, str, str, str]:
    """The conversation's counter, stream, in-flight hash, listeners hash and finals hash."""
    # The hash tag keeps one conversation's keys in one Redis Cluster slot.
    tag = f"llm:{{conv:{conversation_id}}}"
    return f"{tag}:seq", f"{tag}:events", f"{tag}:inflight", f"{tag}:listeners", f"{tag}:finals"


def stream_key(conversation_id: int) -> str:
    return _keys(conversation_id)[1]


def decode_entry(conversation_id: int, entry_id: str, fields: dict[str, str]) -> dict[str, Any]:
    event = json.loads(fields["e"])
    event["seq"] = int(entry_id.split("-", 1)[0])
    event["conversation_id"] = conversation_id
    return event


async def events_since(conversation_id: int, after_seq: int) -> list[dict[str, Any]]:
    """Every stored event with ``seq > after_seq``, in order."""
    entries = await redis_client().xrange(stream_key(conversation_id), min=f"({after_seq}-0", max="+")
    return [decode_entry(conversation_id, entry_id, fields) for entry_id, fields in entries]


async def stream_position(conversation_id: int) -> tuple[int, dict[int, int]]:
    """The last seq published, and the messages in flight with the seq they started at."""
    seq_key, _, inflight_key, _, _ = _keys(conversation_id)
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
    each event's seq and whether a WebSocket consumer listens to its conversation (never,
    for a final event the message already has: it is not appended again, its seq is the
    first one's)."""
    return [(seq, listening) for seq, listening, _ in await _append(batch, client=client)]


async def _append(
    batch: Sequence[tuple[int, StreamEvent]], *, client: aioredis.Redis | None = None
) -> list[tuple[int, bool, bool]]:
    """``store_events``, and whether each event was appended."""
    client = client or redis_client()
    maxlen, ttl = str(settings.LLM_STREAM_MAXLEN), str(settings.LLM_STREAM_TTL_SECONDS)
    calls = []
    for conversation_id, event in batch:
        kind = event["event"]
        marker = "started" if kind == "started" else "final" if kind in FINAL_EVENTS else ""
        calls.append((*_keys(conversation_id), json.dumps(event), maxlen, ttl, marker, event["message_id"]))
    results = await _evalsha_all(client, calls)
    return [(int(seq), bool(listening), bool(appended)) for seq, listening, appended in results]


async def _evalsha_all(client: aioredis.Redis, calls: list[tuple[Any, ...]]) -> list[Any]:
    """Run the append script once per call, pipelined. EVALSHA, loading the script
    only when Redis does not know it (first use, a restart), where redis-py's
    pipelined scripts ask SCRIPT EXISTS on every execute."""
    async with client.pipeline(transaction=False) as pipe:
        for call in calls:
            pipe.evalsha(_APPEND_SHA, 5, *call)
        results = await pipe.execute(raise_on_error=False)
    missing = [i for i, r in enumerate(results) if isinstance(r, redis.exceptions.NoScriptError)]
    if missing:
        # Nothing of a NOSCRIPT call ran: load the script and run those again, in order.
        await client.script_load(_APPEND_LUA)
        async with client.pipeline(transaction=False) as pipe:
            for i in missing:
                pipe.evalsha(_APPEND_SHA, 5, *calls[i])
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
    return [seq for seq, _ in await _publish(batch, client=client)]


async def publish_missing_finals(batch: Sequence[tuple[int, StreamEvent]]) -> list[bool]:
    """Publish final events of messages whose stream may lack them (Redis could not take
    them when their answer was stored); each is appended only if its message has no
    final event yet. Returns which were."""
    return [appended for _, appended in await _publish(batch)]


async def _publish(
    batch: Sequence[tuple[int, StreamEvent]], *, client: aioredis.Redis | None = None
) -> list[tuple[int, bool]]:
    stored = await _append(batch, client=client)
    by_conversation: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for (conversation_id, event), (seq, listening, _) in zip(batch, stored, strict=True):
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
    return [(seq, appended) for seq, _, appended in stored]


async def finals_recorded(messages: Sequence[tuple[int, int]]) -> list[bool]:
    """For each (conversation id, message id): whether its stream holds the message's
    final event (since its last ``started``). One round trip."""
    if not messages:
        return []
    async with redis_client().pipeline(transaction=False) as pipe:
        for conversation_id, message_id in messages:
            pipe.hexists(_keys(conversation_id)[4], str(message_id))
        return [bool(found) for found in await pipe.execute()]


async def partial_text(conversation_id: int, message_id: int) -> str:
    """The text of a message's deltas since its last ``started``, as its clients saw it
    ("" if the stream no longer has them)."""
    _, stream, inflight, _, _ = _keys(conversation_id)
    started = await redis_client().hget(inflight, str(message_id))
    if started is None:
        return ""
    entries = await redis_client().xrange(stream, min=f"{started}-0", max="+")
    parts = []
    for entry_id, fields in entries:
        event = decode_entry(conversation_id, entry_id, fields)
        if event.get("message_id") == message_id and event["event"] == "delta":
            parts.append(event["text"])
    return "".join(parts)
