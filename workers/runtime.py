"""The worker process's one engine, on its own event-loop thread.

A worker serves one model. At start (Celery's ``worker_init``, before it
consumes anything) it builds the model's engine on a dedicated asyncio loop in
a daemon thread. Each Celery task thread then hands its generation coroutine
to that loop with ``run_coroutine_threadsafe`` and blocks on the result, so
many tasks are in flight against the same engine at once and it can batch
them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
import logging
import threading
import time
from collections.abc import Coroutine
from typing import Any, Literal, TypeVar

from django.utils import timezone

from conversations.streams.events import StreamEvent
from conversations.streams.publisher import EventPublisher
from conversations.streams.push import set_process_publisher
from inference.engines.base import Engine
from inference.registry import ModelSpec
from inference.requests import GenerationRequest
from workers.generation import GenerationResult, generate_and_stream
from workers.heartbeat import Heartbeat, HeldJobs, worker_id
from workers.metrics import start_metrics_server

logger = logging.getLogger(__name__)
T = TypeVar("T")
StopReason = Literal["cancel", "shutdown"]


def load_engine(spec: ModelSpec) -> Engine:
    """Import the engine class named by the registry and instantiate it (not started)."""
    module_path, _, class_name = spec.engine_path.rpartition(".")
    engine_cls = getattr(importlib.import_module(module_path), class_name)
    return engine_cls(model=spec.name, options=spec.engine_options)  # type: ignore[no-any-return]


def _new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class EngineHost:
    def __init__(self, spec: ModelSpec, *, nodename: str) -> None:
        self.spec = spec
        # This worker's id in heartbeats and in the ``worker`` field of the jobs it claims.
        self.worker_id = worker_id(nodename)
        self.held = HeldJobs()
        # uvloop where installed (uvicorn[standard] brings it), as `vllm serve` runs
        # AsyncLLM: every token of every answer passes through this loop's callbacks.
        self.loop = _new_event_loop()
        self._thread = threading.Thread(target=self._serve, name=f"engine-{spec.name}", daemon=True)
        self.engine: Engine | None = None
        self.publisher: EventPublisher | None = None
        self.heartbeat: Heartbeat | None = None
        self.metrics_address: str | None = None
        # Engine-loop state only (never touched from other threads):
        self._inflight: dict[int, str] = {}  # job id -> engine request id
        self._stop_reasons: dict[str, StopReason] = {}  # request id -> why it was aborted
        self._early_cancels: dict[int, float] = {}  # job id -> when its cancel arrived

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def start(self) -> None:
        """Start the loop thread, the engine and the event publisher. Raises if the engine cannot start."""
        self._thread.start()
        self.metrics_address = start_metrics_server(self)
        self.run(self._start())
        logger.info("engine %s (%s) ready", self.spec.name, self.spec.engine)

    async def _start(self) -> None:
        engine = load_engine(self.spec)
        await engine.start()
        self.engine = engine
        self.publisher = EventPublisher()
        self.publisher.start()
        set_process_publisher(self.publisher, self.loop)
        # Last: the API sends this model's jobs only once a worker beats.
        self.heartbeat = Heartbeat(
            model=self.spec.name, worker=self.worker_id, held=self.held, metrics_address=self.metrics_address
        )
        await self.heartbeat.start()

    @property
    def in_flight(self) -> int:
        """Generations running now (read from any thread)."""
        return len(self._inflight)

    def engine_stats(self, *, reset: bool = False, timeout: float = 5) -> dict[str, Any]:
        """The engine's counters (``Engine.stats``), read on its loop (they change under
        other threads); ``reset`` zeroes them. Empty before the engine is up."""
        engine = self.engine
        if engine is None:
            return {}

        async def collect() -> dict[str, Any]:
            stats = engine.stats()
            if reset:
                engine.reset_stats()
            return stats

        return self.run(collect(), timeout=timeout)

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the engine loop and wait for its result (from another thread)."""
        future = self.submit(coro)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    async def generate(
        self,
        *,
        job_id: int,
        request: GenerationRequest,
        conversation_id: int,
        message_id: int,
        time_limit: float,
        started: StreamEvent | None = None,
    ) -> tuple[GenerationResult, StopReason | None]:
        """Run one job's generation, abortable by ``cancel_job`` and ``abort_all``.

        ``started``, if given, is stored and sent first (from here, the engine
        loop: no trip through the calling thread before the engine starts).
        Returns the result and, if it was aborted, why ("cancel" or "shutdown").
        """
        assert self.engine is not None and self.publisher is not None
        self._inflight[job_id] = request.request_id
        try:
            if started is not None:
                await self.publisher.publish(conversation_id, started)
            if self._early_cancels.pop(job_id, None) is not None:
                # Cancelled between the claim and its entry in _inflight.
                self._stop_reasons[request.request_id] = "cancel"
            # Or stopped while ``started`` was published: ``_abort`` found the job in
            # flight but aborted a request the engine did not have yet, which an
            # engine may ignore (the simulated one does), and the whole answer was
            # generated for a client long gone (12 runs in 140 of the OpenAI API's
            # test of a client gone while its request is stored, on a loaded host).
            # Either way it never starts; there is no await from here until the
            # engine holds the request.
            stop_reason = self._stop_reasons.get(request.request_id)
            if stop_reason is not None:
                return GenerationResult("", "abort", 0, 0, None, timezone.now()), stop_reason
            result = await generate_and_stream(
                engine=self.engine,
                publisher=self.publisher,
                request=request,
                conversation_id=conversation_id,
                message_id=message_id,
                time_limit=time_limit,
            )
            return result, self._stop_reasons.get(request.request_id)
        finally:
            self._inflight.pop(job_id, None)
            self._stop_reasons.pop(request.request_id, None)

    def cancel_job(self, job_id: int) -> None:
        """Abort ``job_id`` if this worker runs it (thread-safe, returns at once)."""
        self.submit(self._abort(job_id, "cancel"))

    def abort_all(self, reason: StopReason) -> concurrent.futures.Future[int]:
        """Abort every generation in flight (thread-safe); the future gives how many."""

        async def _abort_all() -> int:
            jobs = list(self._inflight)
            for job_id in jobs:
                await self._abort(job_id, reason)
            return len(jobs)

        return self.submit(_abort_all())

    async def _abort(self, job_id: int, reason: StopReason) -> None:
        assert self.engine is not None
        request_id = self._inflight.get(job_id)
        if request_id is None:
            if reason == "cancel":
                # The cancel may have overtaken the job's start on this worker;
                # remember it a while (it may as well be another worker's job).
                now = time.monotonic()
                self._early_cancels = {j: t for j, t in self._early_cancels.items() if now - t < 60}
                self._early_cancels[job_id] = now
            return
        self._stop_reasons.setdefault(request_id, reason)
        await self.engine.abort(request_id)

    def stop(self, timeout: float = 30) -> None:
        """Shut the engine down and stop the loop. Safe to call twice."""
        if not self.loop.is_running():
            return

        set_process_publisher(None, None)

        async def _stop() -> None:
            if self.heartbeat is not None:
                await self.heartbeat.close()
            if self.engine is not None:
                await self.engine.shutdown()
            if self.publisher is not None:
                await self.publisher.close()

        try:
            self.run(_stop(), timeout)
        except Exception:
            logger.exception("engine %s did not shut down cleanly", self.spec.name)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)


_host: EngineHost | None = None


def start_host(spec: ModelSpec, *, nodename: str) -> EngineHost:
    """Start this process's engine host; ``nodename`` is the Celery worker's (``echo-0@host``)."""
    global _host
    if _host is not None:
        raise RuntimeError(f"this process already serves {_host.spec.name}")
    host = EngineHost(spec, nodename=nodename)
    host.start()
    _host = host
    return host


def current_host() -> EngineHost:
    if _host is None:
        raise RuntimeError(
            "no engine in this process: inference tasks run only in a model worker "
            "(python manage.py run_workers)"
        )
    return _host


def stop_host() -> None:
    global _host
    if _host is not None:
        _host.stop()
        _host = None
