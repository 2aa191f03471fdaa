"""A job's state changes after it is queued: claimed, finished, released, failed, cancelled.

Delivery is at least once (``acks_late``; a redelivered message after a worker
died), the effect exactly once: a delivery first *claims* the job with a
conditional update that bumps ``attempts``, and the answer is written only if
the job still belongs to that attempt. A worker's task runs these
(``workers.services``); the web process fails and cancels jobs too
(``conversations.dispatch``).
"""

from __future__ import annotations

import logging
from datetime import timedelta

import redis.exceptions
from django.conf import settings
from django.db import DatabaseError, transaction
from django.db.models import F
from django.utils import timezone

from conversations.answers import Answer
from conversations.eventlog import event_record
from conversations.models import ConversationEvent, InferenceJob, Message
from conversations.storage.claim import Claim, claim
from conversations.storage.finish import finish
from conversations.streams.events import StreamEvent
from conversations.streams.push import push_event
from llmproject import logcontext, metrics

logger = logging.getLogger(__name__)


def job_claim(*, job_id: int, worker: str) -> Claim | None:
    """Take the job for one attempt, or return None if this delivery must not run it.

    A job is claimable when queued, or when running for longer than the time
    limit (its worker died: the broker redelivers only after the visibility
    timeout, which is longer). A job at its attempt cap is failed instead, and
    a queued job whose cancel was asked is cancelled.
    """
    now = timezone.now()
    claimed = claim(
        job_id=job_id,
        worker=worker,
        now=now,
        stale_before=now - timedelta(seconds=settings.LLM_JOB_TIME_LIMIT),
    )
    if claimed is not None:
        logcontext.bind_job(job_id=job_id, correlation_id=claimed.job.correlation_id)
        metrics.job_claimed(model=claimed.job.model, queued_at=claimed.job.message.queued_at, claimed_at=now)
        return claimed
    job = InferenceJob.objects.filter(pk=job_id).first()
    if job is not None:
        logcontext.bind_job(job_id=job_id, correlation_id=job.correlation_id)
    if job is None:
        logger.info("job %s no longer exists (conversation deleted?); skipping", job_id)
    elif job.state in InferenceJob.FINAL_STATES:
        logger.info("job %s is already %s; duplicate delivery ignored", job.pk, job.state)
    elif job.cancel_requested:
        job_cancel_queued(job_id=job.pk)
    elif job.attempts >= job.max_attempts:
        job_fail(
            job_id=job.pk,
            error=f"gave up after {job.attempts} attempts (a worker running it may have died)",
            error_kind=InferenceJob.ErrorKind.WORKER_LOST,
        )
    else:
        logger.info(
            "job %s is running elsewhere (attempt %s); duplicate delivery ignored", job.pk, job.attempts
        )
    return None


def job_finish(*, claim: Claim, answer: Answer, stored_by: str = "worker") -> bool:
    """Store the answer (or, after a cancel, the partial answer) if the job still belongs to
    ``claim``; False if another attempt took over. Raises the database's errors."""
    job = claim.job
    stored = finish(
        job_id=job.pk,
        message_id=job.message_id,
        attempt=claim.attempt,
        job_state=InferenceJob.State.CANCELLED if answer.cancelled else InferenceJob.State.SUCCEEDED,
        conversation_id=claim.conversation_id,
        correlation_id=job.correlation_id,
        reply={
            "content": answer.text,
            "status": Message.Status.CANCELLED if answer.cancelled else Message.Status.COMPLETED,
            "finish_reason": answer.finish_reason,
            "prompt_tokens": answer.prompt_tokens,
            "completion_tokens": answer.completion_tokens,
            "first_token_at": answer.first_token_at,
            "finished_at": answer.finished_at,
        },
        event_kind=(
            ConversationEvent.Kind.INFERENCE_CANCELLED
            if answer.cancelled
            else ConversationEvent.Kind.RESPONSE_GENERATED
        ),
        event_payload={
            "job_id": job.pk,
            "attempt": claim.attempt,
            "finish_reason": answer.finish_reason,
            "prompt_tokens": answer.prompt_tokens,
            "completion_tokens": answer.completion_tokens,
            **({"stored_by": stored_by} if stored_by != "worker" else {}),
        },
        now=answer.finished_at,
    )
    if not stored:
        logger.warning("job %s attempt %s was superseded; its answer is discarded", job.pk, claim.attempt)
        return False
    metrics.job_answered(
        model=job.model,
        cancelled=answer.cancelled,
        queued_at=job.message.queued_at,
        first_token_at=answer.first_token_at,
        finished_at=answer.finished_at,
        prompt_tokens=answer.prompt_tokens,
        completion_tokens=answer.completion_tokens,
    )
    return True


def job_announce(*, claim: Claim, answer: Answer) -> None:
    """Tell the clients of a stored answer (its ``completed`` or ``cancelled`` event). If Redis
    cannot take the event the answer stands: the reconciler sends it once Redis is back."""
    try:
        push_event(claim.conversation_id, answer.event(claim.job.message_id))
    except (redis.exceptions.RedisError, OSError):
        logger.exception("could not push the end of job %s", claim.job.pk)


def job_release(
    *,
    claim: Claim,
    error: str,
    error_kind: InferenceJob.ErrorKind,
    traceback: str = "",
    count_attempt: bool = True,
) -> None:
    """Hand a claimed job back to the queue: for a retry after a transient failure or,
    with ``count_attempt=False``, because the worker is shutting down (not the job's fault).

    The attempt's error and traceback go to the event log (the admin shows each attempt's).
    """
    job = claim.job
    attempts = F("attempts") if count_attempt else F("attempts") - 1
    with transaction.atomic():
        updated = InferenceJob.objects.filter(InferenceJob.held(attempt=claim.attempt), pk=job.pk).update(
            state=InferenceJob.State.QUEUED,
            attempts=attempts,
            last_error=error,
            error_kind=error_kind,
            updated_at=timezone.now(),
        )
        if updated:
            Message.objects.filter(pk=job.message_id).update(status=Message.Status.QUEUED)
            event_record(
                conversation_id=claim.conversation_id,
                kind=ConversationEvent.Kind.INFERENCE_RETRYING,
                correlation_id=job.correlation_id,
                message_id=job.message_id,
                payload={
                    "job_id": job.pk,
                    "attempt": claim.attempt,
                    "worker": job.worker,
                    "error": error,
                    "error_kind": error_kind,
                    "traceback": traceback,
                },
            )
    if updated and count_attempt:
        metrics.job_retried(model=job.model, error_kind=error_kind)


def job_fail(
    *,
    job_id: int,
    error: str,
    error_kind: InferenceJob.ErrorKind,
    traceback: str = "",
    attempt: int | None = None,
) -> bool:
    """Mark the job and its reply failed for good, and tell the clients.

    With ``attempt``, only if the job still belongs to that attempt. Returns
    False if the job was already final (or superseded, or deleted). The error,
    its kind and traceback go to the job and the event log, for the admin.
    """
    now = timezone.now()
    with transaction.atomic():
        jobs = InferenceJob.objects.filter(pk=job_id).exclude(state__in=InferenceJob.FINAL_STATES)
        if attempt is not None:
            jobs = jobs.filter(attempts=attempt)
        if not jobs.update(
            state=InferenceJob.State.FAILED,
            last_error=error,
            error_kind=error_kind,
            failed_at=now,
            resolved_at=None,
            finished_at=now,
            updated_at=now,
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
            payload={
                "job_id": job.pk,
                "attempt": job.attempts,
                "worker": job.worker,
                "error": error,
                "error_kind": error_kind,
                "traceback": traceback,
            },
        )
    metrics.job_failed(model=job.model, error_kind=error_kind)
    logger.warning("job %s failed: %s", job_id, error)
    _push_stored(job, {"event": "failed", "message_id": job.message_id, "error": error})
    return True


def job_cancel_queued(*, job_id: int) -> bool:
    """Cancel a job that has not started (its cancel was asked while it was queued, or its
    delivery found ``cancel_requested``). False if it is not queued."""
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
    metrics.job_cancelled_queued(model=job.model)
    _push_stored(job, {"event": "cancelled", "message_id": job.message_id, "content": ""})
    return True


def job_claimed(*, job: InferenceJob) -> Claim:
    """The claim a running ``job`` (its ``message`` loaded) is held under, for whoever acts
    on that attempt in its worker's place."""
    return Claim(job=job, attempt=job.attempts, history=())


def job_take_back(*, claim: Claim, reason: str, error_kind: InferenceJob.ErrorKind) -> bool:
    """Put a running job whose attempt nobody runs any more (its worker died, dropped it,
    or it outlived the time limit) back in the queued state for a new attempt; the caller
    publishes it again. False if the attempt is over already (finished, or taken over).

    The attempt counts: a job that kills its workers fails at its attempt cap, it
    does not loop. The attempt ends in the event log as a retried one (the admin's
    attempts), and the reconciler's action beside it.
    """
    job = claim.job
    now = timezone.now()
    with transaction.atomic():
        updated = InferenceJob.objects.filter(InferenceJob.held(attempt=claim.attempt), pk=job.pk).update(
            state=InferenceJob.State.QUEUED, last_error=reason, error_kind=error_kind, updated_at=now
        )
        if not updated:
            return False
        Message.objects.filter(pk=job.message_id).update(status=Message.Status.QUEUED)
        base = {"job_id": job.pk, "attempt": claim.attempt}
        for kind, payload in (
            (
                ConversationEvent.Kind.INFERENCE_RETRYING,
                {"worker": job.worker, "error": reason, "error_kind": error_kind, "by": "reconciler"},
            ),
            (ConversationEvent.Kind.JOB_RECONCILED, {"action": "requeued", "reason": reason}),
        ):
            event_record(
                conversation_id=claim.conversation_id,
                kind=kind,
                correlation_id=job.correlation_id,
                message_id=job.message_id,
                payload={**base, **payload},
            )
    metrics.job_retried(model=job.model, error_kind=error_kind)
    logger.warning("job %s attempt %s taken back: %s", job.pk, claim.attempt, reason)
    return True


def job_cancel_orphaned(*, claim: Claim, text: str, reason: str) -> bool:
    """Finish the cancel of a running job that nobody runs any more (its cancel was asked,
    its worker died): cancelled, keeping ``text``, what its clients saw of it. False if
    the attempt is over already."""
    job = claim.job
    now = timezone.now()
    with transaction.atomic():
        updated = (
            InferenceJob.objects.filter(InferenceJob.held(attempt=claim.attempt), pk=job.pk)
            .filter(cancel_requested=True)
            .update(state=InferenceJob.State.CANCELLED, finished_at=now, updated_at=now)
        )
        if not updated:
            return False
        Message.objects.filter(pk=job.message_id).update(
            status=Message.Status.CANCELLED, content=text, finish_reason="abort", finished_at=now
        )
        for kind, payload in (
            (ConversationEvent.Kind.INFERENCE_CANCELLED, {"while": "orphaned", "worker": job.worker}),
            (ConversationEvent.Kind.JOB_RECONCILED, {"action": "cancelled", "reason": reason}),
        ):
            event_record(
                conversation_id=claim.conversation_id,
                kind=kind,
                correlation_id=job.correlation_id,
                message_id=job.message_id,
                payload={"job_id": job.pk, "attempt": claim.attempt, **payload},
            )
    metrics.job_answered(
        model=job.model,
        cancelled=True,
        queued_at=None,
        first_token_at=None,
        finished_at=now,
        prompt_tokens=0,
        completion_tokens=0,
    )
    _push_stored(job, {"event": "cancelled", "message_id": job.message_id, "content": text})
    return True


def job_reconciled(*, job: InferenceJob, attempt: int, action: str, reason: str) -> None:
    """Log what the reconciler did to a job (``job_reconciled``), where the state change
    it made logs nothing of its own about the reconciler."""
    event_record(
        conversation_id=job.message.conversation_id,
        kind=ConversationEvent.Kind.JOB_RECONCILED,
        correlation_id=job.correlation_id,
        message_id=job.message_id,
        payload={"job_id": job.pk, "attempt": attempt, "action": action, "reason": reason},
    )


def _push_stored(job: InferenceJob, event: StreamEvent) -> None:
    """Tell the clients of a change already committed. If Redis cannot take the event the
    change stands: clients see it on their next read of the job or conversation."""
    try:
        push_event(job.message.conversation_id, event)
    except (redis.exceptions.RedisError, OSError, DatabaseError):
        logger.exception("could not push the %s event of job %s", event["event"], job.pk)
