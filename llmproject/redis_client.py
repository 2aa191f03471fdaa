"""The asyncio Redis client of the running event loop, shared by the web and worker sides."""

from __future__ import annotations

import asyncio
import weakref

import redis.asyncio as aioredis
from django.conf import settings

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
