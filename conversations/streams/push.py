"""Pushing one event from synchronous code: the one helper outside an engine loop."""

from __future__ import annotations

import asyncio
from typing import Protocol

from asgiref.sync import async_to_sync

from conversations.streams.events import StreamEvent
from conversations.streams.store import publish_events


class Publisher(Protocol):
    async def publish(self, conversation_id: int, event: StreamEvent) -> int: ...


_process_publisher: tuple[Publisher, asyncio.AbstractEventLoop] | None = None


def set_process_publisher(publisher: Publisher | None, loop: asyncio.AbstractEventLoop | None) -> None:
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
