"""The asyncio Redis client of the running event loop, shared by the web and worker sides
(and a blocking one for the few synchronous readers)."""

from __future__ import annotations

import asyncio
import functools
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


@functools.cache
def sync_redis_client(url: str | None = None) -> redis.Redis:
    """A blocking Redis client (thread-safe, one connection pool per process), for code
    outside an event loop: a metrics scrape, a service-discovery request, a worker's task
    threads (an answer's stash), the reconciler. Its waits are bounded: a Redis that stops
    answering must not hang a caller for good."""
    return redis.Redis.from_url(
        url or settings.REDIS_URL, decode_responses=True, socket_timeout=5, socket_connect_timeout=2
    )
