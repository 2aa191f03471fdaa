"""A worker's heartbeat: alive in Redis while its engine can take jobs.

The readers (the API's admission, health checks) are in ``inference.liveness``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import time

import redis.asyncio as aioredis
from django.conf import settings

from inference.liveness import heartbeat_key, queue_forget_metrics_address, queue_metrics_address
from llmproject.aio import cancel_and_wait

logger = logging.getLogger(__name__)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Heartbeat:
    """Runs on a worker's engine loop: beats until closed, then deregisters. With each beat
    it refreshes the worker's metrics address, if it serves metrics."""

    def __init__(self, *, model: str, metrics_address: str | None = None) -> None:
        self.model = model
        self.metrics_address = metrics_address
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
        key = heartbeat_key(self.model)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zadd(key, {self.member: now})
            # Dead workers' entries would otherwise stay forever.
            pipe.zremrangebyscore(key, "-inf", now - 10 * settings.LLM_HEARTBEAT_TTL)
            pipe.expire(key, math.ceil(10 * settings.LLM_HEARTBEAT_TTL))
            if self.metrics_address:
                queue_metrics_address(
                    pipe, member=self.member, model=self.model, address=self.metrics_address
                )
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
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.zrem(heartbeat_key(self.model), self.member)
                queue_forget_metrics_address(pipe, member=self.member)
                await pipe.execute()
        except Exception:
            logger.warning("could not deregister worker %s of %s", self.member, self.model, exc_info=True)
        await self._redis.aclose()
