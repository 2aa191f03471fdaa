"""A worker's heartbeat: alive in Redis while its engine can take jobs, with the jobs it holds.

The readers (the API's admission, the reconciler) are in ``inference.liveness``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import redis.asyncio as aioredis
from django.conf import settings

from inference.liveness import (
    Beat,
    heartbeat_key,
    queue_forget_metrics_address,
    queue_metrics_address,
    worker_key,
)
from llmproject.aio import cancel_and_wait

logger = logging.getLogger(__name__)


def worker_id(nodename: str) -> str:
    """What a worker process is called in heartbeats and in its jobs' ``worker`` field:
    Celery's node name (``echo-0@host``) and the process id. A worker restarted under
    the same node name is another worker: the jobs of the one that died must not look
    alive through it."""
    return f"{nodename}:{os.getpid()}"


class HeldJobs:
    """The jobs this worker's deliveries hold, from before their claim to their end
    (thread-safe: task threads add and remove, the heartbeat reads).

    A count per job: a duplicate delivery of a job this worker runs holds it too,
    for a moment, and must not end the first one's hold."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: Counter[int] = Counter()

    @contextmanager
    def hold(self, job_id: int) -> Iterator[None]:
        with self._lock:
            self._jobs[job_id] += 1
        try:
            yield
        finally:
            with self._lock:
                self._jobs[job_id] -= 1
                if self._jobs[job_id] <= 0:
                    del self._jobs[job_id]

    def snapshot(self) -> frozenset[int]:
        with self._lock:
            return frozenset(self._jobs)


class Heartbeat:
    """Runs on a worker's engine loop: beats until closed, then deregisters. With each beat
    it refreshes the worker's metrics address, if it serves metrics."""

    def __init__(
        self, *, model: str, worker: str, held: HeldJobs, metrics_address: str | None = None
    ) -> None:
        self.model = model
        self.member = worker
        self.held = held
        self.metrics_address = metrics_address
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
        # Read after the time: a job claimed before ``now`` (its ``started_at``, same
        # clock) and still held is in this snapshot.
        beat = Beat(at=now, jobs=self.held.snapshot())
        key = heartbeat_key(self.model)
        keep = math.ceil(10 * settings.LLM_HEARTBEAT_TTL)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zadd(key, {self.member: now})
            # Dead workers' entries would otherwise stay forever.
            pipe.zremrangebyscore(key, "-inf", now - 10 * settings.LLM_HEARTBEAT_TTL)
            pipe.expire(key, keep)
            pipe.set(worker_key(self.member), beat.dumps(), ex=keep)
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
                pipe.delete(worker_key(self.member))
                queue_forget_metrics_address(pipe, member=self.member)
                await pipe.execute()
        except Exception:
            logger.warning("could not deregister worker %s of %s", self.member, self.model, exc_info=True)
        await self._redis.aclose()
