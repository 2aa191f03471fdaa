"""Counting a message's tokens in the web process, to refuse one that can never fit.

The worker builds the real prompt (chat template, history trimmed to the
window); the API only needs to know whether the newest message alone, plus
``max_tokens``, is over the model's context window. It counts with the
model's own tokenizer file when there is one on disk (the ``tokenizers``
package: no torch, no vLLM), and gives no answer otherwise (the worker then
refuses it, as a failed message). The simulated engine's count is defined
here, and the engine takes it from here, so the web process never imports an
engine.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from inference.registry import ModelSpec
from inference.requests import ChatMessage

logger = logging.getLogger(__name__)

# Role markers and separators a chat template puts around one message.
TEMPLATE_TOKENS_PER_MESSAGE = 8


def count_prompt_tokens(messages: Sequence[ChatMessage]) -> int:
    """The simulated engine's prompt length: whitespace tokens plus a few per message for
    its (imaginary) template."""
    return sum(len(m.content.split()) + 4 for m in messages)


@functools.cache
def _tokenizer(folder: str) -> Any:
    path = Path(folder).expanduser() / "tokenizer.json"
    if not path.is_file():
        return None
    try:
        from tokenizers import Tokenizer
    except ImportError:
        return None
    try:
        return Tokenizer.from_file(str(path))
    except Exception:
        logger.exception("cannot read tokenizer %s", path)
        return None


def message_tokens(spec: ModelSpec, content: str) -> int | None:
    """Tokens ``content`` takes in a prompt of ``spec``'s model, or None if unknown here."""
    if spec.engine == "simulated":
        return count_prompt_tokens([ChatMessage("user", content)])
    folder = spec.options.get("tokenizer") or spec.options.get("model")
    tokenizer = _tokenizer(str(folder)) if folder else None
    if tokenizer is None:
        return None
    return len(tokenizer.encode(content, add_special_tokens=False).ids) + TEMPLATE_TOKENS_PER_MESSAGE
