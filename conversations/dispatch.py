"""The web side of a job: build it, publish it to its model's queue, cancel it.

Jobs are published by task name: the web process never imports the worker
runtime (``workers.tasks`` registers the task under ``RUN_JOB_TASK``).
"""

from __future__ import annotations

import functools
import logging
import uuid
from typing import Any

import redis.exceptions
from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerError

from conversations.eventlog import event_record
from conversations.lifecycle import job_cancel_queued, job_fail
from conversations.models import ConversationEvent, InferenceJob, Message
from inference.registry import ModelSpec
from llmproject.celery import app
from llmproject.exceptions import Conflict, ServiceUnavailable

logger = logging.getLogger(__name__)

RUN_JOB_TASK = "llm.run_job"
# Redis priorities run 0 (first) .. 9; the API's run 0 (lowest) .. 9 (highest).
_LOWEST_BROKER_PRIORITY = 9


def job_build(
    *,
    message: Message,
    spec: ModelSpec,
    params: dict[str, Any],
    priority: int,
    correlation_id: uuid.UUID,
) -> InferenceJob:
    """The job for ``message``'s reply, not yet stored."""
    return InferenceJob(
        message=message,
        model=spec.name,
        queue=spec.queue,
        params=params,
        priority=priority,
        max_attempts=settings.LLM_MAX_ATTEMPTS,
        celery_task_id=str(uuid.uuid4()),
        correlation_id=correlation_id,
    )


def job_publish(*, job: InferenceJob) -> None:
    """Send the job to its model's queue. The one place that publishes jobs.

    Precondition: the job's rows are committed (call it through
    ``transaction.on_commit``). If the broker cannot be reached the job is
    marked failed (nothing will run it) and ``ServiceUnavailable`` is raised.
    """
    try:
        _send(job)
        logger.debug("job %s published to %s", job.pk, job.queue)
    except (BrokerError, redis.exceptions.ConnectionError) as exc:
        logger.error("could not publish job %s to %s: %s", job.pk, job.queue, exc)
        job_fail(
            job_id=job.pk,
            error="the job queue is unavailable; the message was not queued",
            error_kind=InferenceJob.ErrorKind.QUEUE,
        )
        raise ServiceUnavailable(
            "the job queue is unavailable right now; try again shortly", retry_after=5
        ) from exc


def job_republish(*, job: InferenceJob) -> None:
    """Send a queued job to its queue again, under the same task id (the reconciler does,
    when its message was lost or its attempt taken back). A delivery too many is harmless:
    claims are idempotent. Raises the broker's errors; the job stays queued."""
    _send(job)


def _send(job: InferenceJob) -> None:
    app.send_task(
        RUN_JOB_TASK,
        args=[job.pk],
        queue=job.queue,
        task_id=job.celery_task_id,
        priority=_LOWEST_BROKER_PRIORITY - job.priority,
        retry=True,
    )


def job_cancel(*, job: InferenceJob) -> InferenceJob:
    """Stop a job. A queued one is cancelled at once and never starts; a running one
    is aborted by its worker within one engine step, keeping the partial answer.

    Raises ``Conflict`` if the job has already finished.
    """
    requested = (
        InferenceJob.objects.filter(pk=job.pk)
        .exclude(state__in=InferenceJob.FINAL_STATES)
        .update(cancel_requested=True, updated_at=timezone.now())
    )
    if not requested:
        job.refresh_from_db()
        raise Conflict(f"job {job.pk} is already {job.state}", code="job_finished")
    if not job_cancel_queued(job_id=job.pk):
        # Running (claims skip jobs with cancel_requested, so it was claimed
        # before): every worker gets the word, the one running it aborts it.
        job_cancel_broadcast(job_id=job.pk)
    job.refresh_from_db()
    return job


def job_cancel_broadcast(*, job_id: int) -> bool:
    """Tell every worker to abort ``job_id`` (the one running it does). The cancel is
    stored already: if the word cannot go out, or a worker misses it, the reconciler
    sends it again (``RunningJobs``). False if the broker could not take it."""
    try:
        app.control.broadcast("cancel_job", arguments={"job_id": job_id})
    except (BrokerError, redis.exceptions.RedisError, OSError) as exc:
        logger.warning("could not broadcast the cancel of job %s (%s); the reconciler will", job_id, exc)
        return False
    return True


def job_abandon(*, job_id: int) -> None:
    """The client waiting for the job has gone: cancel it (freeing its engine slot),
    unless it has already finished."""
    job = InferenceJob.objects.filter(pk=job_id).first()
    if job is None:
        return
    try:
        job_cancel(job=job)
    except Conflict:
        pass


def job_retry(*, job: InferenceJob, by: str = "") -> bool:
    """An operator's retry: queue a failed job again for a new attempt, with a fresh
    budget of ``LLM_MAX_ATTEMPTS`` deliveries, and publish it once committed.

    Idempotent: only a failed job is taken (a conditional update), so a second
    click finds it queued and returns False. Its reply is reset and its wait
    starts anew; the user's clients see ``started`` again when a worker takes it.
    Raises ``ServiceUnavailable`` if the queue cannot be reached (the job is then
    failed again, with that error).
    """
    now = timezone.now()
    task_id = str(uuid.uuid4())
    with transaction.atomic():
        retried = InferenceJob.objects.filter(pk=job.pk, state=InferenceJob.State.FAILED).update(
            state=InferenceJob.State.QUEUED,
            max_attempts=F("attempts") + settings.LLM_MAX_ATTEMPTS,
            celery_task_id=task_id,
            cancel_requested=False,
            resolved_at=None,
            started_at=None,
            finished_at=None,
            updated_at=now,
        )
        if not retried:
            return False
        job.refresh_from_db()
        Message.objects.filter(pk=job.message_id).update(
            status=Message.Status.QUEUED,
            content="",
            error="",
            queued_at=now,
            started_at=None,
            first_token_at=None,
            finished_at=None,
        )
        event_record(
            conversation_id=job.message.conversation_id,
            kind=ConversationEvent.Kind.INFERENCE_REQUEUED,
            correlation_id=job.correlation_id,
            message_id=job.message_id,
            payload={"job_id": job.pk, "after_attempts": job.attempts, "by": by},
        )
        transaction.on_commit(functools.partial(job_publish, job=job))
    logger.info("job %s retried by %s", job.pk, by or "an operator")
    return True


def job_resolve(*, job: InferenceJob, by: str = "") -> bool:
    """Close a failure: an operator has dealt with it. False if it was already resolved
    (or never failed)."""
    now = timezone.now()
    with transaction.atomic():
        resolved = InferenceJob.objects.filter(
            pk=job.pk, failed_at__isnull=False, resolved_at__isnull=True
        ).update(resolved_at=now, updated_at=now)
        if not resolved:
            return False
        event_record(
            conversation_id=job.message.conversation_id,
            kind=ConversationEvent.Kind.FAILURE_RESOLVED,
            correlation_id=job.correlation_id,
            message_id=job.message_id,
            payload={"job_id": job.pk, "by": by},
        )
    return True
