"""The one interface every inference engine implements.

An engine lives inside a worker process, on that process's dedicated asyncio
event-loop thread (see ``workers.runtime``). Many generations run against it
at once: each Celery task submits one ``generate()`` coroutine to the loop, and
the engine is free to batch them (the real engine does continuous batching).

Engines are named in the model registry (``settings.LLM_MODELS``) and imported
lazily by dotted path, so the web process never imports vLLM or torch.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

from inference.requests import GenerationRequest

FinishReason = Literal["stop", "length", "abort"]


@dataclass(frozen=True, slots=True)
class GenerationDelta:
    """New output since the previous delta of the same request.

    ``prompt_tokens`` is set on every delta (the engine knows it from the first
    step on); ``finish_reason`` is set on the last delta only.
    """

    text: str
    token_count: int
    prompt_tokens: int
    finish_reason: FinishReason | None = None


class EngineError(Exception):
    """An engine failed a request.

    ``permanent=False`` means retrying the same request later may succeed (the
    engine was restarting, overloaded, a connection dropped); ``permanent=True``
    means it never will (the prompt is too long, the model cannot load).
    """

    def __init__(self, message: str, *, permanent: bool = True) -> None:
        super().__init__(message)
        self.permanent = permanent


class PromptTooLong(EngineError):
    """The newest message alone does not fit the model's context window."""

    def __init__(self, message: str) -> None:
        super().__init__(message, permanent=True)


class Engine(abc.ABC):
    """An async, streaming text-generation engine.

    Lifecycle, all on the worker's event-loop thread: ``start()`` once, then any
    number of concurrent ``generate()`` calls and ``abort()``s, then
    ``shutdown()`` once. ``start()`` raising means the worker cannot serve.
    """

    def __init__(self, *, model: str, options: dict[str, Any]) -> None:
        self.model = model
        self.options = options

    @property
    @abc.abstractmethod
    def max_concurrency(self) -> int:
        """How many sequences the engine runs at once (vLLM's ``max_num_seqs``)."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Load the model. Called once, before the worker consumes any task."""

    @abc.abstractmethod
    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationDelta]:
        """Stream the completion of ``request`` as deltas.

        Raises ``EngineError`` on failure. Cancelling the consuming task, or
        closing the iterator, must free the request's slot in the engine.
        """

    @abc.abstractmethod
    async def abort(self, request_id: str) -> None:
        """Stop ``request_id`` within one engine step.

        Its iterator then ends with a delta whose ``finish_reason`` is ``"abort"``.
        """

    @abc.abstractmethod
    async def shutdown(self) -> None:
        """Release the model and any engine processes. Idempotent."""

    def stats(self) -> dict[str, Any]:
        """Counters for operators and tests (batch sizes, requests served)."""
        return {}

    def reset_stats(self) -> None:  # noqa: B027 (optional hook)
        """Zero the counters ``stats`` reports."""
