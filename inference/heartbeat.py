"""Which models have a live worker: a heartbeat per worker in Redis.

Each worker's engine host, once its engine is ready, refreshes its entry in
the sorted set ``llm:workers:<model>`` (member: the worker's id, score: unix
time) every ``LLM_HEARTBEAT_INTERVAL`` seconds, and removes it when it stops.
An entry older than ``LLM_HEARTBEAT_TTL`` is a worker that died without
saying so. The API asks ``workers_alive`` (one ZCOUNT) before it queues a job
that nobody would run; a Celery ping would cost a broadcast round trip and a
timeout on every request.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import time
from typing import Any

import redis.asyncio as aioredis
from django.conf import settings

from inference.streaming import redis_client
from llmproject.aio import cancel_and_wait

logger = logging.getLogger(__name__)


def _key(model: str) -> str:
    return f"llm:workers:{model}"


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


async def workers_alive(*, model: str) -> int:
    """How many workers of ``model`` have beaten within the TTL."""
    return int(await redis_client().zcount(*_alive_range(model)))


def queue_workers_alive(pipe: Any, *, model: str) -> None:
    """Add ``workers_alive``'s command to a pipeline of ``REDIS_URL``'s server (its reply: the count)."""
    pipe.zcount(*_alive_range(model))


def _alive_range(model: str) -> tuple[str, float, str]:
    return _key(model), time.time() - settings.LLM_HEARTBEAT_TTL, "+inf"


class Heartbeat:
    """Runs on a worker's engine loop: beats until closed, then deregisters."""

    def __init__(self, *, model: str) -> None:
        self.model = model
        self.member = worker_id()
        self._redis = aioredis.Redis.from_url(settings.REDIS_URL, decode_responses=True)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        try:
            await self._beat()  # alive before the worker consumes its first job
        except Exception:
            logger.warning("first heartbeat of %s failed; retrying", self.model, exc_info=True)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="heartbeat")

    async def _beat(self) -> None:
        now = time.time()
        key = _key(self.model)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zadd(key, {self.member: now})
            # Dead workers' entries would otherwise stay forever.
            pipe.zremrangebyscore(key, "-inf", now - 10 * settings.LLM_HEARTBEAT_TTL)
            pipe.expire(key, math.ceil(10 * settings.LLM_HEARTBEAT_TTL))
            await pipe.execute()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(settings.LLM_HEARTBEAT_INTERVAL)
            try:
                await self._beat()
            except Exception:  # Redis away for a moment: the next beat may succeed
                logger.warning("heartbeat of %s failed", self.model, exc_info=True)

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        try:
            await self._redis.zrem(_key(self.model), self.member)
        except Exception:
            logger.warning("could not deregister worker %s of %s", self.member, self.model, exc_info=True)
        await self._redis.aclose()
