"""The events pushed to a conversation's WebSocket clients.

Each event reaches clients with two more keys: ``seq`` (per conversation,
contiguous, increasing: a client that sees a gap has missed something and can
ask for it) and ``conversation_id``. A client builds an assistant message by
resetting on ``started`` (a retried job streams again from the start),
appending each ``delta``, and replacing the text with ``completed.content``.
"""

from __future__ import annotations

from typing import Literal, TypedDict


class Timings(TypedDict):
    queued_ms: float | None
    time_to_first_token_ms: float | None
    generation_ms: float | None


class StartedEvent(TypedDict):
    event: Literal["started"]
    message_id: int
    job_id: int
    attempt: int


class DeltaEvent(TypedDict):
    event: Literal["delta"]
    message_id: int
    text: str
    tokens: int


class CompletedEvent(TypedDict):
    event: Literal["completed"]
    message_id: int
    content: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    timings: Timings


class FailedEvent(TypedDict):
    event: Literal["failed"]
    message_id: int
    error: str


class CancelledEvent(TypedDict):
    event: Literal["cancelled"]
    message_id: int
    content: str


StreamEvent = StartedEvent | DeltaEvent | CompletedEvent | FailedEvent | CancelledEvent

FINAL_EVENTS = frozenset({"completed", "failed", "cancelled"})
