"""What one attempt of a job generated, as it is stored and announced; and its stash.

A worker stores an answer with ``lifecycle.job_finish``. If the database fails
it then, the generated text must not be lost with the delivery: the worker
stashes the answer in Redis (keyed by job and attempt) before it retries, and
whoever gets the database back first stores it, once (the store is
conditional on the attempt): the worker's own retries, or the reconciler when
it finds the job running with no worker holding it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

import redis.exceptions
from django.utils import timezone

from conversations.models import Message
from conversations.streams.events import StreamEvent, Timings
from llmproject.redis_client import sync_redis_client

logger = logging.getLogger(__name__)

# A stash outlives any database outage worth waiting for; after that the job is
# taken back and generated again.
STASH_SECONDS = 24 * 3600


@dataclass(frozen=True, slots=True)
class Answer:
    text: str
    finish_reason: str  # "abort": cancelled, the text is what was generated before
    prompt_tokens: int
    completion_tokens: int
    first_token_at: datetime | None
    finished_at: datetime
    timings: Timings

    @property
    def cancelled(self) -> bool:
        return self.finish_reason == "abort"

    def event(self, message_id: int) -> StreamEvent:
        """The final stream event that announces this answer."""
        if self.cancelled:
            return {"event": "cancelled", "message_id": message_id, "content": self.text}
        return {
            "event": "completed",
            "message_id": message_id,
            "content": self.text,
            "finish_reason": self.finish_reason,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "timings": self.timings,
        }

    def dumps(self) -> str:
        data = asdict(self)
        data["first_token_at"] = self.first_token_at.isoformat() if self.first_token_at else None
        data["finished_at"] = self.finished_at.isoformat()
        return json.dumps(data)

    @classmethod
    def loads(cls, raw: str) -> Answer:
        data = json.loads(raw)
        first = data.pop("first_token_at")
        return cls(
            **{
                **data,
                "first_token_at": datetime.fromisoformat(first) if first else None,
                "finished_at": datetime.fromisoformat(data["finished_at"]),
            }
        )


def _ms(delta: timedelta | None) -> float | None:
    return None if delta is None else round(delta.total_seconds() * 1000, 1)


def answer_timings(
    *,
    queued_at: datetime | None,
    started_at: datetime | None,
    first_token_at: datetime | None,
    finished_at: datetime | None,
) -> Timings:
    """Time in the queue, to the first token (from queueing) and generating, in ms."""
    started = started_at or timezone.now()
    return {
        "queued_ms": _ms(started - queued_at) if queued_at else None,
        "time_to_first_token_ms": _ms(first_token_at - queued_at) if first_token_at and queued_at else None,
        "generation_ms": _ms(finished_at - started) if finished_at else None,
    }


def message_final_event(message: Message) -> StreamEvent | None:
    """The final stream event of a reply as stored (None if it is not final)."""
    if message.status == Message.Status.COMPLETED:
        return {
            "event": "completed",
            "message_id": message.pk,
            "content": message.content,
            "finish_reason": message.finish_reason,
            "prompt_tokens": message.prompt_tokens or 0,
            "completion_tokens": message.completion_tokens or 0,
            "timings": answer_timings(
                queued_at=message.queued_at,
                started_at=message.started_at,
                first_token_at=message.first_token_at,
                finished_at=message.finished_at,
            ),
        }
    if message.status == Message.Status.FAILED:
        return {"event": "failed", "message_id": message.pk, "error": message.error}
    if message.status == Message.Status.CANCELLED:
        return {"event": "cancelled", "message_id": message.pk, "content": message.content}
    return None


def _stash_key(job_id: int, attempt: int) -> str:
    return f"llm:answer:{job_id}:{attempt}"


def answer_stash(*, job_id: int, attempt: int, answer: Answer) -> bool:
    """Keep ``answer`` in Redis until it is stored; False if Redis cannot take it."""
    try:
        sync_redis_client().set(_stash_key(job_id, attempt), answer.dumps(), ex=STASH_SECONDS)
    except (redis.exceptions.RedisError, OSError):
        logger.exception("could not stash the answer of job %s attempt %s", job_id, attempt)
        return False
    return True


def answer_stashed(*, job_id: int, attempt: int) -> Answer | None:
    """The stashed answer of that attempt, if any. Raises Redis errors."""
    raw = sync_redis_client().get(_stash_key(job_id, attempt))
    return None if raw is None else Answer.loads(raw)


def answer_unstash(*, job_id: int, attempt: int) -> None:
    """Drop a stash once its answer is stored (a leftover expires by itself)."""
    try:
        sync_redis_client().delete(_stash_key(job_id, attempt))
    except (redis.exceptions.RedisError, OSError):
        logger.warning("could not drop the stash of job %s attempt %s", job_id, attempt, exc_info=True)
