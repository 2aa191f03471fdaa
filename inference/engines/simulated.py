"""The simulated engine: no model, deterministic text, engine-like timing.

For orchestration tests and load tests of the queue, streaming and storage
paths; always named ``simulated`` so nobody mistakes it for inference. It
behaves like a continuous-batching engine: up to ``max_num_seqs`` sequences
advance one token per step, a step takes ``step_time + step_time_per_seq *
batch`` seconds (bigger batches are slower per step, much faster per token),
new requests join at the next step, and every step's batch size is recorded.

Options: ``max_num_seqs`` (64), ``step_time`` (0.02 s), ``step_time_per_seq``
(0.0005 s), ``start_time`` (0 s; a slow model load), ``fail_start`` (False;
the model "cannot load").

Fault injection for tests: a prompt whose last message contains
``[[simulate:transient-error]]`` or ``[[simulate:permanent-error]]`` fails
with an ``EngineError`` of that kind after its first token.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections import Counter, deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from inference.engines.base import Engine, EngineError, GenerationDelta
from inference.requests import ChatMessage, GenerationRequest
from inference.tokens import count_prompt_tokens

_WORDS = (
    "the a model token batch queue worker stream answer engine request step "
    "prompt sequence cache layer value signal message reply context window "
    "system user assistant text every many one quick steady bright calm clear"
).split()

TRANSIENT_MARKER = "[[simulate:transient-error]]"
PERMANENT_MARKER = "[[simulate:permanent-error]]"


def _prompt_text(messages: Sequence[ChatMessage]) -> str:
    return "\n".join(f"{m.role}: {m.content}" for m in messages)


def simulated_tokens(messages: Sequence[ChatMessage], max_tokens: int, ignore_eos: bool = False) -> list[str]:
    """The tokens the simulated engine produces for ``messages``: pure and deterministic.

    It echoes the last user message, then continues with words drawn from a
    generator seeded by the whole prompt. Without ``ignore_eos`` it stops on
    its own after 16 to 48 tokens.
    """
    last_user = next((m.content for m in reversed(messages) if m.role == "user"), "")
    seed = int.from_bytes(hashlib.sha256(_prompt_text(messages).encode()).digest()[:8], "big")
    rng = random.Random(seed)
    natural_length = rng.randint(16, 48)
    tokens = ["Echo:", *last_user.split()[:8], "|"]
    limit = max_tokens if ignore_eos else min(max_tokens, natural_length)
    while len(tokens) < limit:
        tokens.append(rng.choice(_WORDS))
    return [(" " if i else "") + t for i, t in enumerate(tokens[:limit])]


@dataclass(eq=False)
class _Sequence:
    request: GenerationRequest
    tokens: list[str]
    finish_reason: str
    prompt_tokens: int
    fault: EngineError | None
    out: asyncio.Queue[GenerationDelta | EngineError] = field(default_factory=asyncio.Queue)
    position: int = 0
    aborted: bool = False
    done: bool = False


class SimulatedEngine(Engine):
    def __init__(self, *, model: str, options: dict[str, Any]) -> None:
        super().__init__(model=model, options=options)
        self._max_num_seqs = int(options.get("max_num_seqs", 64))
        self._step_time = float(options.get("step_time", 0.02))
        self._step_time_per_seq = float(options.get("step_time_per_seq", 0.0005))
        self._waiting: deque[_Sequence] = deque()
        self._running: list[_Sequence] = []
        self._by_id: dict[str, _Sequence] = {}
        self._work = asyncio.Event()
        self._scheduler: asyncio.Task[None] | None = None
        self._batch_sizes: Counter[int] = Counter()
        self._finished = 0

    @property
    def max_concurrency(self) -> int:
        return self._max_num_seqs

    async def start(self) -> None:
        await asyncio.sleep(float(self.options.get("start_time", 0)))
        if self.options.get("fail_start"):
            raise EngineError(f"simulated model {self.model!r} failed to load (fail_start is set)")
        self._scheduler = asyncio.get_running_loop().create_task(self._schedule(), name="simulated-scheduler")

    async def shutdown(self) -> None:
        if self._scheduler is not None:
            self._scheduler.cancel()
            self._scheduler = None

    async def abort(self, request_id: str) -> None:
        seq = self._by_id.get(request_id)
        if seq is not None:
            seq.aborted = True

    def stats(self) -> dict[str, Any]:
        return {
            "engine": "simulated",
            "steps": sum(self._batch_sizes.values()),
            "max_batch_size": max(self._batch_sizes, default=0),
            "batch_sizes": dict(sorted(self._batch_sizes.items())),
            "running": len(self._running),
            "waiting": len(self._waiting),
            "finished": self._finished,
        }

    def reset_stats(self) -> None:
        self._batch_sizes.clear()
        self._finished = 0

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationDelta]:
        if self._scheduler is None:
            raise EngineError("engine is not started", permanent=False)
        params = request.params
        tokens = simulated_tokens(request.messages, params.max_tokens, params.ignore_eos)
        finish = "length" if len(tokens) >= params.max_tokens else "stop"
        if params.stop:
            text = ""
            for i, token in enumerate(tokens):
                text += token
                if any(s in text for s in params.stop):
                    tokens, finish = tokens[:i], "stop"
                    break
        last = request.messages[-1].content if request.messages else ""
        fault = None
        if TRANSIENT_MARKER in last:
            fault = EngineError("simulated transient engine error", permanent=False)
        elif PERMANENT_MARKER in last:
            fault = EngineError("simulated permanent engine error", permanent=True)
        seq = _Sequence(request, tokens, finish, count_prompt_tokens(request.messages), fault)
        self._by_id[request.request_id] = seq
        self._waiting.append(seq)
        self._work.set()
        try:
            while True:
                item = await seq.out.get()
                if isinstance(item, EngineError):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            # Consumer gone (finished, cancelled or closed): free the slot.
            seq.done = True
            self._by_id.pop(request.request_id, None)

    async def _schedule(self) -> None:
        while True:
            if not self._running and not self._waiting:
                self._work.clear()
                await self._work.wait()
            while self._waiting and len(self._running) < self._max_num_seqs:
                self._running.append(self._waiting.popleft())
            self._running = [s for s in self._running if not s.done]
            if not self._running:
                continue
            batch = len(self._running)
            self._batch_sizes[batch] += 1
            await asyncio.sleep(self._step_time + self._step_time_per_seq * batch)
            still_running = []
            for seq in self._running:
                if self._step(seq):
                    still_running.append(seq)
            self._running = still_running

    def _step(self, seq: _Sequence) -> bool:
        """Advance one sequence by one token; False when it left the batch."""
        if seq.done:
            return False
        if seq.aborted:
            seq.out.put_nowait(GenerationDelta("", 0, seq.prompt_tokens, "abort"))
            return False
        if seq.fault is not None and seq.position == 1:
            seq.out.put_nowait(seq.fault)
            return False
        if seq.position >= len(seq.tokens):  # nothing to say (stop at once)
            seq.out.put_nowait(GenerationDelta("", 0, seq.prompt_tokens, seq.finish_reason))  # type: ignore[arg-type]
            self._finished += 1
            return False
        token = seq.tokens[seq.position]
        seq.position += 1
        finished = seq.position >= len(seq.tokens)
        reason = seq.finish_reason if finished else None
        seq.out.put_nowait(GenerationDelta(token, 1, seq.prompt_tokens, reason))  # type: ignore[arg-type]
        if finished:
            self._finished += 1
        return not finished
