"""The bodies of chat completion responses: ``chat.completion`` and its streamed chunks."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

# The platform's finish reasons are vLLM's; "abort" is a job cancelled (by its
# owner or an operator) before it finished, which vLLM's server reports as such too.
FINISH_REASONS = {"stop": "stop", "length": "length", "abort": "abort"}


@dataclass(frozen=True)
class Completion:
    """Identity of one response: every chunk repeats it."""

    id: str
    created: int
    model: str
    # The SSE text of a content chunk up to its delta's members: a stream is
    # mostly content chunks, and encoding only their text is a fraction of
    # encoding each whole chunk.
    _content_prefix: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        head = json.dumps(self.chunk(delta={}), separators=(",", ":"))
        object.__setattr__(self, "_content_prefix", "data: " + head[: head.index('"delta":{') + 9])

    def content_chunk(self, text: str, *, role: bool = False) -> bytes:
        """``sse(self.chunk(delta={"content": text}))``, with ``"role": "assistant"`` first
        if ``role``, byte for byte."""
        members = ('"role":"assistant",' if role else "") + '"content":' + json.dumps(text)
        return f'{self._content_prefix}{members}}},"logprobs":null,"finish_reason":null}}]}}\n\n'.encode()

    def chunk(
        self,
        *,
        delta: dict[str, Any] | None = None,
        finish_reason: str | None = None,
        usage: dict[str, int] | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": []
            if delta is None
            else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }
        if usage is not None:
            body["usage"] = usage
        return body

    def completion(self, *, content: str, finish_reason: str, usage: dict[str, int]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "logprobs": None,
                    "finish_reason": finish_reason,
                }
            ],
            "usage": usage,
        }


def usage(prompt_tokens: int | None, completion_tokens: int | None) -> dict[str, int]:
    prompt, completion = prompt_tokens or 0, completion_tokens or 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def sse(data: dict[str, Any] | str) -> bytes:
    """One server-sent event."""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()


SSE_DONE = sse("[DONE]")
SSE_KEEPALIVE = b": keep-alive\n\n"
