"""``hub.follow``: one XREAD per process for every followed stream, none of them late."""

from __future__ import annotations

import asyncio
import contextlib
import time

from conversations.streams import hub, store


def delta(message_id: int, text: str) -> dict:
    return {"event": "delta", "message_id": message_id, "text": text, "tokens": 1}


async def next_batch(follower) -> list[dict]:
    async with asyncio.timeout(5):
        return await anext(follower)


async def test_a_stream_followed_while_the_hub_waits_on_others_gets_its_events_at_once():
    first = hub.follow(9001)
    second = hub.follow(9002)
    async with contextlib.aclosing(first), contextlib.aclosing(second):
        reading_first = asyncio.create_task(next_batch(first))
        await asyncio.sleep(0.2)  # the hub is now blocked on stream 9001 alone
        reading_second = asyncio.create_task(next_batch(second))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        [seq] = await store.publish_events([(9002, delta(1, "b"))])
        batch = await reading_second
        # Far less than the hub's 2 s block: the new stream woke it.
        assert time.monotonic() - started < 0.5
        assert [(e["seq"], e["text"], e["conversation_id"]) for e in batch] == [(seq, "b", 9002)]
        await store.publish_events([(9001, delta(1, "a"))])
        assert [e["text"] for e in await reading_first] == ["a"]


async def test_followers_of_one_stream_each_get_every_event_from_where_they_started():
    x, _ = await store.publish_events([(9003, delta(1, "x")), (9003, delta(1, "y"))])
    early = hub.follow(9003, 0)
    async with contextlib.aclosing(early):
        assert [e["text"] for e in await next_batch(early)] == ["x", "y"]
        late = hub.follow(9003, x)  # joins a stream the hub already reads past x
        async with contextlib.aclosing(late):
            reading_late = asyncio.create_task(next_batch(late))
            await asyncio.sleep(0.05)
            await store.publish_events([(9003, delta(1, "z"))])
            seen_late = [e["text"] for e in await reading_late]
            if seen_late == ["y"]:  # the catch-up came first, on its own
                seen_late += [e["text"] for e in await next_batch(late)]
            assert seen_late == ["y", "z"]
            assert [e["text"] for e in await next_batch(early)] == ["z"]


async def test_an_idle_stream_yields_an_empty_batch_as_a_keepalive_cue():
    follower = hub.follow(9004, idle=0.2)
    async with contextlib.aclosing(follower):
        assert await next_batch(follower) == []
