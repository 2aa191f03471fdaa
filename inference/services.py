"""The life of an inference job: create, publish, claim, run, finish or fail.

Delivery is at least once (``acks_late``; a redelivered message after a worker
died), the effect exactly once: a delivery first *claims* the job with a
conditional update that bumps ``attempts``, and the answer is written only if
the job still belongs to that attempt.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import redis.exceptions
from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models import F, Q
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerError

from conversations.eventlog import event_record
from conversations.models import ConversationEvent, Message
from inference import pgsql, runtime, streaming
from inference.engines.base import ChatMessage, EngineError, GenerationRequest, SamplingParams
from inference.events import StreamEvent
from inference.generation import GenerationResult
from inference.models import InferenceJob
from inference.registry import ModelSpec
from llmproject.exceptions import Conflict, ServiceUnavailable

logger = logging.getLogger(__name__)

# Redis priorities run 0 (first) .. 9; the API's run 0 (lowest) .. 9 (highest).
MAX_PRIORITY = 9


class TransientJobError(Exception):
    """The job failed in a way a later attempt may not: Celery retries it with backoff."""


class JobInterrupted(Exception):
    """The worker stopped mid-job; the job is queued again and its message must be requeued."""


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

    Precondition: the job's rows are committed. If the broker cannot be
    reached the job is marked failed (nothing will run it) and
    ``ServiceUnavailable`` is raised.
    """
    from inference.tasks import run_job

    try:
        run_job.apply_async(
            args=[job.pk],
            queue=job.queue,
            task_id=job.celery_task_id,
            priority=MAX_PRIORITY - job.priority,
            retry=True,
        )
    except (BrokerError, redis.exceptions.ConnectionError) as exc:
        logger.error("could not publish job %s to %s: %s", job.pk, job.queue, exc)
        job_fail(job_id=job.pk, error="the job queue is unavailable; the message was not queued")
        raise ServiceUnavailable(
            "the job queue is unavailable right now; try again shortly", retry_after=5
        ) from exc


@dataclass(frozen=True, slots=True)
class Claim:
    job: InferenceJob
    attempt: int
    history: tuple[ChatMessage, ...] | None = None  # read with the claim (PostgreSQL)

    @property
    def conversation_id(self) -> int:
        return self.job.message.conversation_id


def job_claim(*, job_id: int, worker: str) -> Claim | None:
    """Take the job for one attempt, or return None if this delivery must not run it.

    A job is claimable when queued, or when running for longer than the time
    limit (its worker died: the broker redelivers only after the visibility
    timeout, which is longer). A job at its attempt cap is failed instead.
    """
    now = timezone.now()
    stale = now - timedelta(seconds=settings.LLM_JOB_TIME_LIMIT)
    if pgsql.available():
        row = pgsql.claim(job_id=job_id, worker=worker, now=now, stale=stale)
        if row is not None:
            return _claim_from_row(row, worker=worker, now=now)
        job = InferenceJob.objects.select_related("message").filter(pk=job_id).first()
        if job is None:
            logger.info("job %s no longer exists (conversation deleted?); skipping", job_id)
        else:
            _explain_unclaimed(job)
        return None
    claimable = Q(state=InferenceJob.State.QUEUED) | Q(state=InferenceJob.State.RUNNING, started_at__lt=stale)
    with transaction.atomic():
        claimed = (
            InferenceJob.objects.filter(claimable, pk=job_id, attempts__lt=F("max_attempts"))
            .exclude(cancel_requested=True)
            .update(
                state=InferenceJob.State.RUNNING,
                attempts=F("attempts") + 1,
                worker=worker,
                started_at=now,
                updated_at=now,
            )
        )
        job = InferenceJob.objects.select_related("message").filter(pk=job_id).first()
        if job is None:
            logger.info("job %s no longer exists (conversation deleted?); skipping", job_id)
            return None
        if not claimed:
            _explain_unclaimed(job)
            return None
        Message.objects.filter(pk=job.message_id).update(
            status=Message.Status.STREAMING, started_at=now, content="", error=""
        )
        job.message.status, job.message.started_at = Message.Status.STREAMING, now
        event_record(
            conversation_id=job.message.conversation_id,
            kind=ConversationEvent.Kind.INFERENCE_STARTED,
            correlation_id=job.correlation_id,
            message_id=job.message_id,
            payload={"job_id": job.pk, "attempt": job.attempts, "worker": worker},
        )
    return Claim(job=job, attempt=job.attempts)


def _claim_from_row(row: pgsql.ClaimedRow, *, worker: str, now: datetime) -> Claim:
    """The claimed job and its reply as the ORM path would have read them back."""
    message = Message(
        id=row.message_id,
        conversation_id=row.conversation_id,
        role=Message.Role.ASSISTANT,
        status=Message.Status.STREAMING,
        model=row.model,
        queued_at=row.queued_at,
        started_at=now,
    )
    job = InferenceJob(
        id=row.job_id,
        message=message,
        model=row.model,
        params=row.params,
        state=InferenceJob.State.RUNNING,
        attempts=row.attempts,
        max_attempts=row.max_attempts,
        correlation_id=row.correlation_id,
        worker=worker,
        started_at=now,
    )
    job._state.adding = message._state.adding = False  # they are stored rows
    history = tuple(ChatMessage(role=role, content=content) for role, content in row.history)
    return Claim(job=job, attempt=row.attempts, history=history)


def _explain_unclaimed(job: InferenceJob) -> None:
    if job.state in InferenceJob.FINAL_STATES:
        logger.info("job %s is already %s; duplicate delivery ignored", job.pk, job.state)
    elif job.cancel_requested:
        job_cancel_queued(job_id=job.pk)
    elif job.attempts >= job.max_attempts:
        job_fail(
            job_id=job.pk,
            error=f"gave up after {job.attempts} attempts (a worker running it may have died)",
        )
    else:
        logger.info(
            "job %s is running elsewhere (attempt %s); duplicate delivery ignored", job.pk, job.attempts
        )


def conversation_history(*, job: InferenceJob) -> tuple[ChatMessage, ...]:
    """The messages the model sees: everything before the reply, oldest first.

    Failed or unfinished replies are left out; a cancelled reply's partial
    text is kept, as the user saw it.
    """
    rows = (
        Message.objects.filter(conversation_id=job.message.conversation_id, pk__lt=job.message_id)
        .exclude(role=Message.Role.ASSISTANT, status__in=pgsql.HISTORY_EXCLUDED_STATUSES)
        .order_by("id")
        .values_list("role", "content")
    )
    return tuple(ChatMessage(role=role, content=content) for role, content in rows)


def job_run(*, job_id: int, worker: str) -> None:
    """Run one delivery of a job on this worker's engine. Called by the Celery task.

    Raises ``TransientJobError`` for failures worth retrying (the claim is
    released first); records permanent failures and returns.
    """
    claim = job_claim(job_id=job_id, worker=worker)
    if claim is None:
        return
    job = claim.job
    host = runtime.current_host()
    if host.spec.name != job.model:
        job_fail(job_id=job.pk, error=f"worker serves {host.spec.name!r}, not {job.model!r}")
        return
    request = GenerationRequest(
        request_id=f"job-{job.pk}-{claim.attempt}",
        messages=claim.history if claim.history is not None else conversation_history(job=job),
        params=SamplingParams.from_dict(job.params),
    )
    # Hand the database connection back (to the pool, if any) for the length of
    # the answer: dozens of answers stream at once on one worker, and none of
    # them needs the database until it is stored.
    connection.close()
    try:
        result, stop_reason = host.run(
            host.generate(
                job_id=job.pk,
                request=request,
                conversation_id=claim.conversation_id,
                message_id=job.message_id,
                time_limit=settings.LLM_JOB_TIME_LIMIT,
                started={
                    "event": "started",
                    "message_id": job.message_id,
                    "job_id": job.pk,
                    "attempt": claim.attempt,
                },
            )
        )
    except EngineError as exc:
        if exc.permanent:
            job_fail(job_id=job.pk, error=str(exc), attempt=claim.attempt)
            return
        _retry_or_fail(claim=claim, error=str(exc), cause=exc)
    except TimeoutError:
        job_fail(
            job_id=job.pk,
            error=f"the answer took longer than the {settings.LLM_JOB_TIME_LIMIT} s limit",
            attempt=claim.attempt,
        )
        return
    except redis.exceptions.ConnectionError as exc:
        _retry_or_fail(claim=claim, error=f"lost Redis while streaming: {exc}", cause=exc)

    if stop_reason == "shutdown":
        # The worker is stopping: hand the job back whole, without using up an attempt.
        job_release(claim=claim, error="the worker shut down during the answer", count_attempt=False)
        raise JobInterrupted(f"job {job.pk} interrupted by worker shutdown")
    if job_finish(claim=claim, result=result):
        if result.finish_reason == "abort":
            event: StreamEvent = {"event": "cancelled", "message_id": job.message_id, "content": result.text}
        else:
            event = {
                "event": "completed",
                "message_id": job.message_id,
                "content": result.text,
                "finish_reason": result.finish_reason,
                "prompt_tokens": result.prompt_tokens,
                "completion_tokens": result.completion_tokens,
                "timings": _timings(job.message, result),
            }
        streaming.push_event(claim.conversation_id, event)


def _retry_or_fail(*, claim: Claim, error: str, cause: Exception) -> None:
    """After a transient failure: give the job back for a retry, or fail it on its last attempt."""
    if claim.attempt >= claim.job.max_attempts:
        job_fail(
            job_id=claim.job.pk,
            error=f"{error} (gave up after {claim.attempt} attempts)",
            attempt=claim.attempt,
        )
        return
    job_release(claim=claim, error=error)
    raise TransientJobError(error) from cause


def _ms(delta: timedelta | None) -> float | None:
    return None if delta is None else round(delta.total_seconds() * 1000, 1)


def _timings(message: Message, result: GenerationResult) -> dict[str, float | None]:
    started = message.started_at or timezone.now()
    return {
        "queued_ms": _ms(started - message.queued_at) if message.queued_at else None,
        "time_to_first_token_ms": _ms(result.first_token_at - message.queued_at)
        if result.first_token_at and message.queued_at
        else None,
        "generation_ms": _ms(result.finished_at - started),
    }


def job_finish(*, claim: Claim, result: GenerationResult) -> bool:
    """Store the answer (or, after a cancel, the partial answer) if the job still belongs to
    ``claim``; False if another attempt took over."""
    job = claim.job
    cancelled = result.finish_reason == "abort"
    reply = {
        "content": result.text,
        "status": Message.Status.CANCELLED if cancelled else Message.Status.COMPLETED,
        "finish_reason": result.finish_reason,
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "first_token_at": result.first_token_at,
        "finished_at": result.finished_at,
    }
    kind = (
        ConversationEvent.Kind.INFERENCE_CANCELLED if cancelled else ConversationEvent.Kind.RESPONSE_GENERATED
    )
    payload = {
        "job_id": job.pk,
        "attempt": claim.attempt,
        "finish_reason": result.finish_reason,
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
    }
    if pgsql.available():
        stored = pgsql.finish(
            job_id=job.pk,
            attempt=claim.attempt,
            job_state=InferenceJob.State.CANCELLED if cancelled else InferenceJob.State.SUCCEEDED,
            conversation_id=claim.conversation_id,
            correlation_id=job.correlation_id,
            reply=reply,
            event_kind=kind,
            event_payload=payload,
            now=result.finished_at,
        )
        if not stored:
            logger.warning("job %s attempt %s was superseded; its answer is discarded", job.pk, claim.attempt)
        return stored
    with transaction.atomic():
        updated = InferenceJob.objects.filter(
            pk=job.pk, attempts=claim.attempt, state=InferenceJob.State.RUNNING
        ).update(
            state=InferenceJob.State.CANCELLED if cancelled else InferenceJob.State.SUCCEEDED,
            finished_at=result.finished_at,
            last_error="",
        )
        if not updated:
            logger.warning("job %s attempt %s was superseded; its answer is discarded", job.pk, claim.attempt)
            return False
        Message.objects.filter(pk=job.message_id).update(**reply)
        event_record(
            conversation_id=claim.conversation_id,
            kind=kind,
            correlation_id=job.correlation_id,
            message_id=job.message_id,
            payload=payload,
        )
    return True


def job_release(*, claim: Claim, error: str, count_attempt: bool = True) -> None:
    """Hand a claimed job back to the queue: for a retry after a transient failure or,
    with ``count_attempt=False``, because the worker is shutting down (not the job's fault)."""
    job = claim.job
    attempts = F("attempts") if count_attempt else F("attempts") - 1
    with transaction.atomic():
        updated = InferenceJob.objects.filter(
            pk=job.pk, attempts=claim.attempt, state=InferenceJob.State.RUNNING
        ).update(
            state=InferenceJob.State.QUEUED, attempts=attempts, last_error=error, updated_at=timezone.now()
        )
        if updated:
            Message.objects.filter(pk=job.message_id).update(status=Message.Status.QUEUED)
            event_record(
                conversation_id=claim.conversation_id,
                kind=ConversationEvent.Kind.INFERENCE_RETRYING,
                correlation_id=job.correlation_id,
                message_id=job.message_id,
                payload={"job_id": job.pk, "attempt": claim.attempt, "error": error},
            )


def job_fail(*, job_id: int, error: str, attempt: int | None = None) -> bool:
    """Mark the job and its reply failed for good, and tell the clients.

    With ``attempt``, only if the job still belongs to that attempt. Returns
    False if the job was already final (or superseded, or deleted).
    """
    now = timezone.now()
    with transaction.atomic():
        jobs = InferenceJob.objects.filter(pk=job_id).exclude(state__in=InferenceJob.FINAL_STATES)
        if attempt is not None:
            jobs = jobs.filter(attempts=attempt)
        if not jobs.update(
            state=InferenceJob.State.FAILED, last_error=error, finished_at=now, updated_at=now
        ):
            return False
        job = InferenceJob.objects.select_related("message").get(pk=job_id)
        Message.objects.filter(pk=job.message_id).update(
            status=Message.Status.FAILED, error=error, finished_at=now
        )
        event_record(
            conversation_id=job.message.conversation_id,
            kind=ConversationEvent.Kind.INFERENCE_FAILED,
            correlation_id=job.correlation_id,
            message_id=job.message_id,
            payload={"job_id": job.pk, "attempts": job.attempts, "error": error},
        )
    logger.warning("job %s failed: %s", job_id, error)
    try:
        streaming.push_event(
            job.message.conversation_id, {"event": "failed", "message_id": job.message_id, "error": error}
        )
    except (redis.exceptions.RedisError, OSError, DatabaseError):
        # The failure is stored; clients see it on their next read.
        logger.exception("could not push the failure of job %s", job_id)
    return True


def job_cancel_queued(*, job_id: int) -> bool:
    """Cancel a job that never started (its delivery found ``cancel_requested``)."""
    now = timezone.now()
    with transaction.atomic():
        updated = InferenceJob.objects.filter(pk=job_id, state=InferenceJob.State.QUEUED).update(
            state=InferenceJob.State.CANCELLED, finished_at=now, updated_at=now
        )
        if not updated:
            return False
        job = InferenceJob.objects.select_related("message").get(pk=job_id)
        Message.objects.filter(pk=job.message_id).update(status=Message.Status.CANCELLED, finished_at=now)
        event_record(
            conversation_id=job.message.conversation_id,
            kind=ConversationEvent.Kind.INFERENCE_CANCELLED,
            correlation_id=job.correlation_id,
            message_id=job.message_id,
            payload={"job_id": job.pk, "while": "queued"},
        )
    streaming.push_event(
        job.message.conversation_id, {"event": "cancelled", "message_id": job.message_id, "content": ""}
    )
    return True


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
        from llmproject.celery import app

        app.control.broadcast("cancel_job", arguments={"job_id": job.pk})
    job.refresh_from_db()
    return job


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
