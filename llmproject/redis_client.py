"""The asyncio Redis client of the running event loop, shared by the web and worker sides,
a blocking one for synchronous code, and Lua scripts run through either."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import weakref
from collections.abc import Sequence
from typing import Any

import redis
import redis.asyncio as aioredis
import redis.exceptions
from django.conf import settings

_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, aioredis.Redis]] = (
    weakref.WeakKeyDictionary()
)


# Connections of one loop's client to one server. A request waits for a free
# one rather than opening another: redis-py's default pool opens a connection
# for every command in flight, and a burst of 200 requests opened 200, which
# took 200 ms of the event loop (1 ms each, CLIENT SETINFO included) and made
# the burst's 429s wait 1 s (p50) instead of 0.2 s. 200 pings at once: 28 ms
# through 16 connections, 203 ms through 200 new ones (measured).
MAX_CONNECTIONS = 32


def redis_client(url: str | None = None) -> aioredis.Redis:
    """An asyncio Redis client for the running loop (clients are loop-bound), for
    ``url`` (default ``REDIS_URL``)."""
    url = url or settings.REDIS_URL
    clients = _clients.setdefault(asyncio.get_running_loop(), {})
    client = clients.get(url)
    if client is None:
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=MAX_CONNECTIONS,
            timeout=10,
            decode_responses=True,
            # No CLIENT SETINFO (the library's name): two round trips per new connection.
            driver_info=None,
        )
        client = aioredis.Redis(connection_pool=pool)
        clients[url] = client
    return client


@functools.cache
def sync_redis_client(url: str | None = None) -> redis.Redis:
    """A blocking Redis client for ``url`` (default ``REDIS_URL``), one per process, for
    synchronous code (DRF views, a worker's task threads (an answer's stash), a metrics
    scrape, the reconciler); thread-safe (a pool of connections). Reads time out rather
    than hang a caller on a half-open socket."""
    return redis.Redis.from_url(
        url or settings.REDIS_URL,
        decode_responses=True,
        socket_timeout=5,
        socket_connect_timeout=2,
        driver_info=None,
    )


class LuaScript:
    """A Lua script run with EVALSHA, loaded only when Redis does not know it (first use,
    a restart): redis-py's ``Script`` objects are bound to one client, sync or async."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def run(self, client: redis.Redis, keys: Sequence[str], args: Sequence[Any]) -> Any:
        try:
            return client.evalsha(self.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            return client.eval(self.source, len(keys), *keys, *args)

    async def run_async(self, client: aioredis.Redis, keys: Sequence[str], args: Sequence[Any]) -> Any:
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            return await client.eval(self.source, len(keys), *keys, *args)
