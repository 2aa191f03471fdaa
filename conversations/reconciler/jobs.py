"""The reconciler's rules for jobs: running ones nobody runs, queued ones nothing will deliver.

Running: a job's ``worker`` is the id its worker beats under (``inference.
liveness``). The job is orphaned if its worker's beat has not changed (or has
been missing: Redis lost it, and a live worker beats again within
``LLM_HEARTBEAT_INTERVAL``) for ``LLM_HEARTBEAT_TTL`` as the reconciler sees
it, or if a beat taken after the claim does not hold the job (the delivery
ended without finishing it: the database failed the store, the release or the
failure), or if it outlived the time limit. An orphan gets, in this order: its stashed answer
stored (``conversations.answers``); its cancel finished, if asked; failed, at
its attempt cap; otherwise taken back and published again (a new attempt).
A job its live worker still runs ``CANCEL_RESEND`` seconds after its cancel was
asked missed the word (a broadcast is not queued: a worker reconnecting to
Redis, or the broker down when the web process sent it): it is sent again,
every ``CANCEL_RESEND`` seconds until the job ends.

Queued: a job queued longer than ``LLM_RECONCILE_GRACE`` whose message the
broker does not have (``broker.BrokerView.has``) on two passes in a row is
published again, once per grace across reconcilers. A queued job whose cancel
was asked is cancelled (the web process cancels it at once, unless a failure
came between its two writes).
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import Any

import redis.exceptions
from django.conf import settings
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerError

from conversations.answers import answer_stashed, answer_unstash
from conversations.dispatch import job_cancel_broadcast, job_republish
from conversations.lifecycle import (
    job_announce,
    job_cancel_orphaned,
    job_cancel_queued,
    job_claimed,
    job_fail,
    job_finish,
    job_reconciled,
    job_take_back,
)
from conversations.models import InferenceJob
from conversations.reconciler.broker import broker_view, queue_declare
from conversations.reconciler.report import action_recorded
from conversations.streams import store
from inference.liveness import Beat, beats_read
from llmproject.aio import LoopThread

logger = logging.getLogger("conversations.reconciler")

# A running job's worker aborts it at the time limit and records that within
# moments; one still running this much later has nobody to finish it.
OUTLIVED_GRACE = 60.0
# A worker aborts a cancelled job within one engine step of the word: one still
# running this long after its cancel (``updated_at``) was asked did not get it.
CANCEL_RESEND = 5.0


class RunningJobs:
    def __init__(self, *, redis: Any, streams: LoopThread) -> None:
        self._redis = redis
        self._streams = streams
        # Worker -> its last beat's time as it wrote it (None: no beat on record), and
        # when this reconciler first saw that beat (its monotonic clock). A beat is
        # judged by how long it has not changed here, not by the worker's clock: hosts'
        # clocks may disagree by more than the TTL.
        self._beats: dict[str, tuple[float | None, float]] = {}
        self._cancels_sent: dict[int, float] = {}  # job id -> when this reconciler last sent its cancel

    def reconcile(self) -> None:
        jobs = list(InferenceJob.objects.filter(state=InferenceJob.State.RUNNING).select_related("message"))
        try:
            beats = beats_read(self._redis, (job.worker for job in jobs))
        except (redis.exceptions.RedisError, OSError):
            # Workers could not beat either: their silence starts again once Redis is back.
            self._beats = {}
            raise
        now = time.monotonic()
        seen = {}
        for worker, beat in beats.items():
            at = beat.at if beat is not None else None
            previous = self._beats.get(worker)
            seen[worker] = previous if previous is not None and previous[0] == at else (at, now)
        self._beats = seen
        cancels_sent = {}
        for job in jobs:
            orphaned = self._orphaned(job, beats.get(job.worker), now - self._beats[job.worker][1])
            if orphaned is not None:
                try:
                    self._recover(job, *orphaned)
                except (redis.exceptions.RedisError, OSError):
                    # Its stash cannot be read: it may hold the answer. Next pass.
                    logger.warning("job %s: Redis unavailable, left for the next pass", job.pk, exc_info=True)
            elif job.cancel_requested and (sent := self._cancel_again(job, now)) is not None:
                cancels_sent[job.pk] = sent
        self._cancels_sent = cancels_sent

    def _cancel_again(self, job: InferenceJob, now: float) -> float | None:
        """Send the cancel of ``job`` again if its live worker has run it ``CANCEL_RESEND``
        seconds since it was asked (and since this reconciler last sent it); when it was
        last sent (None: not yet)."""
        sent = self._cancels_sent.get(job.pk)
        asked = (timezone.now() - job.updated_at).total_seconds()
        if asked < CANCEL_RESEND or (sent is not None and now - sent < CANCEL_RESEND):
            return sent
        if job_cancel_broadcast(job_id=job.pk):
            if sent is None:
                job_reconciled(
                    job=job,
                    attempt=job.attempts,
                    action="cancel_resent",
                    reason="its worker missed the cancel",
                )
            action_recorded(action="cancel_resent", model=job.model)
            logger.warning("job %s: still running %.0f s after its cancel; sent it again", job.pk, asked)
        return now

    def _orphaned(
        self, job: InferenceJob, beat: Beat | None, silent: float
    ) -> tuple[str, InferenceJob.ErrorKind] | None:
        """Why nobody will finish the running ``job``, or None if its worker still runs it.
        ``silent``: how long its worker's beat has not changed (or been missing: a live
        worker beats again within ``LLM_HEARTBEAT_INTERVAL`` after Redis lost its data)."""
        started = job.started_at.timestamp() if job.started_at else 0.0
        ttl, limit = settings.LLM_HEARTBEAT_TTL, settings.LLM_JOB_TIME_LIMIT
        lost = InferenceJob.ErrorKind.WORKER_LOST
        if started < time.time() - limit - OUTLIVED_GRACE:
            return f"it outlived the {limit} s time limit", InferenceJob.ErrorKind.TIMEOUT
        if silent >= ttl:
            return f"its worker {job.worker} has not beaten for {silent:.1f} s", lost
        # Both times by the worker's clock: a beat taken after the claim without the job.
        if beat is not None and job.pk not in beat.jobs and started < beat.at:
            return f"its worker {job.worker} no longer runs it", lost
        return None

    def _recover(self, job: InferenceJob, reason: str, kind: InferenceJob.ErrorKind) -> None:
        claim = job_claimed(job=job)
        attempt = claim.attempt
        answer = answer_stashed(job_id=job.pk, attempt=attempt)
        if answer is not None:
            if job_finish(claim=claim, answer=answer, stored_by="reconciler"):
                job_reconciled(job=job, attempt=attempt, action="stored", reason=reason)
                job_announce(claim=claim, answer=answer)
                action_recorded(action="stored", model=job.model)
                logger.warning("job %s attempt %s: stored its stashed answer (%s)", job.pk, attempt, reason)
            answer_unstash(job_id=job.pk, attempt=attempt)
            return
        if job.cancel_requested:
            text = self._partial_text(job)
            if job_cancel_orphaned(claim=claim, text=text, reason=reason):
                action_recorded(action="cancelled", model=job.model)
                logger.warning("job %s: finished its cancel (%s)", job.pk, reason)
            return
        if job.attempts >= job.max_attempts:
            error = f"gave up after {job.attempts} attempts: {reason}"
            if job_fail(job_id=job.pk, error=error, error_kind=kind, attempt=attempt):
                job_reconciled(job=job, attempt=attempt, action="failed", reason=reason)
                action_recorded(action="failed", model=job.model)
            return
        if job_take_back(claim=claim, reason=reason, error_kind=kind):
            action_recorded(action="requeued", model=job.model)
            try:
                job_republish(job=job)
            except (BrokerError, redis.exceptions.RedisError, OSError):
                # It is queued: the queued rule publishes it once the broker is back.
                logger.warning("job %s: could not publish it again yet", job.pk, exc_info=True)

    def _partial_text(self, job: InferenceJob) -> str:
        """What the job's clients saw of its answer ("" if the stream cannot say)."""
        try:
            return self._streams.run(store.partial_text(job.message.conversation_id, job.message_id))
        except (redis.exceptions.RedisError, OSError, TimeoutError):
            return ""


class QueuedJobs:
    def __init__(self, *, broker: Any, redis: Any) -> None:
        self._broker = broker
        self._redis = redis
        self._lost_since: dict[int, float] = {}  # job id -> when its message was first found missing

    def reconcile(self) -> None:
        grace = settings.LLM_RECONCILE_GRACE
        jobs = list(
            InferenceJob.objects.filter(
                state=InferenceJob.State.QUEUED, updated_at__lt=timezone.now() - timedelta(seconds=grace)
            ).select_related("message")
        )
        for job in [j for j in jobs if j.cancel_requested]:
            if job_cancel_queued(job_id=job.pk):
                job_reconciled(
                    job=job, attempt=job.attempts, action="cancelled", reason="its cancel was asked"
                )
                action_recorded(action="cancelled", model=job.model)
        jobs = [j for j in jobs if not j.cancel_requested]
        if not jobs:
            self._lost_since.clear()
            return
        view = broker_view(self._broker, (job.queue for job in jobs))
        for queue in view.unbound:
            queue_declare(queue)
            logger.warning("queue %s had lost its binding (Redis lost its data?): declared it again", queue)
            action_recorded(action="queue_declared", model=queue.removeprefix("llm."))
        now = time.time()
        lost: dict[int, float] = {}
        for job in jobs:
            if view.has(job.celery_task_id, now=now, grace=grace):
                continue
            lost[job.pk] = since = self._lost_since.get(job.pk, now)
            if since == now:
                continue  # seen lost once: a message between two Redis commands looks so, for a moment
            # Once per grace across reconcilers: the published copy needs a moment to show.
            if not self._redis.set(f"llm:reconciler:republished:{job.pk}", 1, nx=True, px=int(grace * 1000)):
                continue
            job_republish(job=job)
            job_reconciled(
                job=job, attempt=job.attempts, action="republished", reason="its queue message was lost"
            )
            action_recorded(action="republished", model=job.model)
            logger.warning("job %s: its queue message was lost; published it again", job.pk)
        self._lost_since = lost
