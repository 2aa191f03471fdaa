"""One generation on the engine loop: stream deltas to clients, collect the answer."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from conversations.streams.publisher import DeltaCoalescer, EventPublisher
from inference.engines.base import Engine
from inference.requests import GenerationRequest


@dataclass(frozen=True, slots=True)
class GenerationResult:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    first_token_at: datetime | None
    finished_at: datetime


async def generate_and_stream(
    *,
    engine: Engine,
    publisher: EventPublisher,
    request: GenerationRequest,
    conversation_id: int,
    message_id: int,
    time_limit: float,
) -> GenerationResult:
    """Run ``request`` on ``engine``, pushing coalesced deltas as they come.

    Raises ``TimeoutError`` after ``time_limit`` seconds (the engine's request
    is aborted on the way out) and whatever ``EngineError`` the engine raises.
    """
    coalescer = DeltaCoalescer(
        publisher,
        conversation_id=conversation_id,
        message_id=message_id,
        interval=settings.LLM_STREAM_FLUSH_INTERVAL,
        max_tokens=settings.LLM_STREAM_FLUSH_TOKENS,
    )
    parts: list[str] = []
    completion_tokens = prompt_tokens = 0
    first_token_mono: float | None = None
    finish_reason = "stop"
    started_mono = time.monotonic()
    started_at = timezone.now()
    try:
        async with asyncio.timeout(time_limit):
            async for delta in engine.generate(request):
                if first_token_mono is None and delta.token_count:
                    first_token_mono = time.monotonic()
                # A model can emit NUL, which PostgreSQL text cannot store; clients
                # and the database get the same replacement character.
                text = delta.text.replace("\x00", "\ufffd") if "\x00" in delta.text else delta.text
                parts.append(text)
                completion_tokens += delta.token_count
                prompt_tokens = delta.prompt_tokens
                coalescer.add(text, delta.token_count)
                if delta.finish_reason is not None:
                    finish_reason = delta.finish_reason
    finally:
        # Whatever was generated reaches clients, even on error or cancel.
        coalescer.flush()
    first_token_at = (
        started_at + timedelta(seconds=first_token_mono - started_mono) if first_token_mono else None
    )
    return GenerationResult(
        text="".join(parts),
        finish_reason=finish_reason,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        first_token_at=first_token_at,
        finished_at=timezone.now(),
    )
