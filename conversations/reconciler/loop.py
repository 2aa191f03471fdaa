"""The reconciler's passes, one after the other, every ``LLM_RECONCILE_INTERVAL`` seconds."""

from __future__ import annotations

import logging
import os
import socket
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
from inference.liveness import reconciler_beat, reconciler_gone
from llmproject.aio import LoopThread
from llmproject.exposition import serve_worker_metrics
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
        redis_client = self._redis = sync_redis_client()
        self.member = f"reconciler@{socket.gethostname()}:{os.getpid()}"
        self.metrics_address = _serve_metrics()
        self._beaten = 0.0
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
        self._beat()
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

    def _beat(self) -> None:
        """Listed for Prometheus's discovery while alive, as a worker is."""
        if self.metrics_address is None or time.monotonic() - self._beaten < settings.LLM_HEARTBEAT_INTERVAL:
            return
        try:
            reconciler_beat(self._redis, member=self.member, address=self.metrics_address)
            self._beaten = time.monotonic()
        except (redis.exceptions.RedisError, OSError):
            logger.warning("could not register the reconciler's metrics address", exc_info=True)

    def close(self) -> None:
        if self.metrics_address is not None:
            try:
                reconciler_gone(self._redis, member=self.member)
            except (redis.exceptions.RedisError, OSError):
                logger.warning("could not deregister the reconciler", exc_info=True)
        set_process_publisher(None, None)
        try:
            self._streams.run(self._publisher.close(), timeout=5)
        except Exception:
            logger.warning("could not close the stream publisher", exc_info=True)
        self._streams.stop()


def _serve_metrics() -> str | None:
    """Serve this process's metrics (what it did, and the job outcomes it recorded): its
    address as Prometheus reaches it, or None (turned off, or the port is taken)."""
    setting = settings.LLM_RECONCILER_METRICS_PORT.strip().lower()
    if setting in ("", "off", "none", "false", "no"):
        return None
    addr = settings.LLM_RECONCILER_METRICS_ADDR
    try:
        port = serve_worker_metrics(addr=addr, port=int(setting))
    except OSError as exc:
        logger.error("reconciler metrics: cannot listen on %s:%s (%s); running without", addr, setting, exc)
        return None
    host = settings.LLM_RECONCILER_METRICS_HOST or (socket.gethostname() if addr in ("", "0.0.0.0") else addr)
    logger.info("reconciler metrics on http://%s:%s/metrics", host, port)
    return f"{host}:{port}"


async def _publisher() -> EventPublisher:
    publisher = EventPublisher()
    publisher.start()
    return publisher
