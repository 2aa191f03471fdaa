"""What a generation is asked: the chat messages and the sampling parameters.

Plain values, built by the chat domain (a job's history and stored
parameters) and taken by every engine; importing them imports no engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: Role
    content: str


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """Sampling parameters, already validated by the API layer."""

    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SamplingParams:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if "stop" in known:
            stop = known["stop"]
            known["stop"] = (stop,) if isinstance(stop, str) else tuple(stop or ())
        return cls(**known)


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """One generation. ``request_id`` is unique per attempt and is what ``abort`` takes."""

    request_id: str
    messages: tuple[ChatMessage, ...]
    params: SamplingParams = field(default_factory=SamplingParams)
