"""Validation of a request's model and sampling parameters against the registry.

Shared by the REST API and the OpenAI-compatible API, so both refuse the same
things with the same messages.
"""

from __future__ import annotations

from typing import Any

from inference import registry
from llmproject.exceptions import InvalidInput

MAX_STOP_SEQUENCES = 4


def resolve_model(name: str | None) -> registry.ModelSpec:
    if not name:
        return registry.default_model()
    spec = registry.get_model(name)
    if spec is None:
        available = ", ".join(sorted(registry.models()))
        # 400 for the REST API; the OpenAI API maps this code to its 404.
        raise InvalidInput(
            f"unknown model {name!r}; available models: {available}", field="model", code="model_not_found"
        )
    return spec


def sampling_params(spec: registry.ModelSpec, raw: dict[str, Any]) -> dict[str, Any]:
    """Check ranges and fill defaults; returns the params stored on the job.

    Precondition: types are already checked (serializer); this checks values
    that depend on the model.
    """
    params: dict[str, Any] = {
        "max_tokens": raw.get("max_tokens") or spec.default_max_tokens,
        "temperature": 1.0 if raw.get("temperature") is None else raw["temperature"],
        "top_p": 1.0 if raw.get("top_p") is None else raw["top_p"],
        "stop": raw.get("stop") or [],
        "seed": raw.get("seed"),
        "ignore_eos": bool(raw.get("ignore_eos", False)),
    }
    if isinstance(params["stop"], str):
        params["stop"] = [params["stop"]]
    if not 1 <= params["max_tokens"] < spec.max_model_len:
        raise InvalidInput(
            f"max_tokens must be between 1 and {spec.max_model_len - 1} for model "
            f"{spec.name!r} (its context window is {spec.max_model_len} tokens)",
            field="max_tokens",
        )
    if not 0.0 <= params["temperature"] <= 2.0:
        raise InvalidInput("temperature must be between 0 and 2", field="temperature")
    if not 0.0 < params["top_p"] <= 1.0:
        raise InvalidInput("top_p must be greater than 0 and at most 1", field="top_p")
    if len(params["stop"]) > MAX_STOP_SEQUENCES or not all(params["stop"]):
        raise InvalidInput(f"stop takes at most {MAX_STOP_SEQUENCES} non-empty strings", field="stop")
    return params


def check_fits(spec: registry.ModelSpec, content: str, max_tokens: int) -> None:
    """Refuse a message that cannot fit the context window even with no history."""
    from inference.tokens import message_tokens

    tokens = message_tokens(spec, content)
    if tokens is not None and tokens + max_tokens > spec.max_model_len:
        raise InvalidInput(
            f"the message is {tokens} tokens; with max_tokens={max_tokens} it exceeds the "
            f"context window of model {spec.name!r} ({spec.max_model_len} tokens)",
            field="content",
            code="context_length_exceeded",
        )


def check_prompt_fits(spec: registry.ModelSpec, contents: list[str], max_tokens: int) -> None:
    """Refuse a whole prompt (every message is kept, as OpenAI's API does) that cannot
    fit the context window with ``max_tokens``."""
    from inference.tokens import message_tokens

    total = 0
    for content in contents:
        tokens = message_tokens(spec, content)
        if tokens is None:
            return  # no tokenizer here: the worker decides
        total += tokens
    if total + max_tokens > spec.max_model_len:
        raise InvalidInput(
            f"this model's maximum context length is {spec.max_model_len} tokens; the messages "
            f"take about {total} tokens and max_tokens is {max_tokens} (model {spec.name!r})",
            field="messages",
            code="context_length_exceeded",
        )
