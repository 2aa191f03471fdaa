"""Redis clients shared by the web and worker sides: the asyncio one of the running event
loop, and a blocking one for code outside any loop."""

from __future__ import annotations

import asyncio
import weakref

import redis
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


_sync_clients: dict[str, redis.Redis] = {}


def sync_redis_client(url: str | None = None) -> redis.Redis:
    """A blocking Redis client for ``url`` (default ``REDIS_URL``), one per process and URL
    (thread-safe: its connection pool hands each thread its own connection). For code
    that runs outside an event loop: a worker's task threads, the reconciler."""
    url = url or settings.REDIS_URL
    client = _sync_clients.get(url)
    if client is None:
        # Bounded waits: a Redis that stops answering must not hang a caller for good.
        client = _sync_clients[url] = redis.Redis.from_url(
            url, decode_responses=True, socket_timeout=5, socket_connect_timeout=2
        )
    return client
