"""The reconciler's passes, one after the other, every ``LLM_RECONCILE_INTERVAL`` seconds."""

from __future__ import annotations

import logging
import threading
import time

import redis.exceptions
from django.conf import settings
from django.db import DatabaseError, connection
from kombu.exceptions import OperationalError as BrokerError

from conversations.reconciler.finals import StreamFinals
from conversations.reconciler.jobs import QueuedJobs, RunningJobs
from conversations.reconciler.report import totals
from conversations.streams.publisher import EventPublisher
from conversations.streams.push import set_process_publisher
from llmproject.aio import LoopThread
from llmproject.redis_client import sync_redis_client

logger = logging.getLogger("conversations.reconciler")


class Reconciler:
    """Holds what the rules remember between passes (when a worker's beat or a message was
    first found missing, how far the event log has been read)."""

    def __init__(self) -> None:
        # Stream events (the lifecycle's ``push_event``, the finals rule) go out from one
        # loop of the reconciler's own, in order, as a worker's do.
        self._streams = LoopThread("reconciler-streams")
        self._publisher = self._streams.run(_publisher())
        set_process_publisher(self._publisher, self._streams.loop)
        redis_client = sync_redis_client()
        self._rules = (
            ("running jobs", RunningJobs(redis=redis_client, streams=self._streams)),
            (
                "queued jobs",
                QueuedJobs(broker=sync_redis_client(settings.CELERY_BROKER_URL), redis=redis_client),
            ),
            ("stream finals", StreamFinals(redis=redis_client, streams=self._streams)),
        )

    def run_pass(self) -> None:
        """One pass of every rule. A rule whose database or Redis fails waits for the next
        pass; the others go on (a database outage leaves the stream rule working)."""
        for name, rule in self._rules:
            try:
                rule.reconcile()
            except DatabaseError as exc:
                logger.warning("%s: database unavailable (%s); next pass", name, exc)
                connection.close()
            except (redis.exceptions.RedisError, BrokerError, OSError, TimeoutError) as exc:
                logger.warning("%s: Redis unavailable (%s); next pass", name, exc)
            except Exception:
                logger.exception("%s: pass failed", name)

    def run(self, *, interval: float, stop: threading.Event) -> None:
        logger.info("reconciler started (a pass every %s s)", interval)
        reported = time.monotonic()
        while not stop.is_set():
            started = time.monotonic()
            self.run_pass()
            if started - reported >= 60 and totals:
                logger.info("actions so far: %s", dict(totals))
                reported = started
            stop.wait(max(0.0, interval - (time.monotonic() - started)))

    def close(self) -> None:
        set_process_publisher(None, None)
        try:
            self._streams.run(self._publisher.close(), timeout=5)
        except Exception:
            logger.warning("could not close the stream publisher", exc_info=True)
        self._streams.stop()


async def _publisher() -> EventPublisher:
    publisher = EventPublisher()
    publisher.start()
    return publisher
