"""Validation of a chat completion request (OpenAI's body, plus vLLM's and ours extensions).

Unknown fields are ignored, as OpenAI does; known ones with bad values are
refused. Model-dependent checks (the context window, ``max_tokens`` against
it) are the services' (``inference.params``), shared with the REST API.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.conf import settings
from rest_framework import serializers

from conversations.apis import StopField


class ContentField(serializers.Field):
    """A message's ``content``: a string, or a list of text parts (``{"type": "text", "text": ...}``)."""

    default_error_messages = {
        "invalid": "must be a string or a list of text parts",
        "not_text": "only text content parts are supported (got type {kind!r})",
    }

    def to_internal_value(self, data: object) -> str:
        if isinstance(data, str):
            return data
        if isinstance(data, list):
            texts = []
            for part in data:
                if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                    self.fail("invalid")
                if part["type"] != "text":
                    self.fail("not_text", kind=part["type"])
                if not isinstance(part.get("text"), str):
                    self.fail("invalid")
                texts.append(part["text"])
            return "".join(texts)
        self.fail("invalid")

    def to_representation(self, value: str) -> str:
        return value


class MessageSerializer(serializers.Serializer):  # type: ignore[type-arg]
    # "developer" is OpenAI's newer name for the system role.
    role = serializers.ChoiceField(choices=["system", "developer", "user", "assistant"])
    content = ContentField(allow_null=True, required=False)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs.get("content") is None:
            if attrs["role"] != "assistant":
                raise serializers.ValidationError({"content": "This field is required."})
            attrs["content"] = ""
        if len(attrs["content"]) > settings.LLM_MAX_MESSAGE_CHARS:
            raise serializers.ValidationError(
                {"content": f"a message may hold at most {settings.LLM_MAX_MESSAGE_CHARS} characters"}
            )
        if attrs["role"] == "developer":
            attrs["role"] = "system"
        return attrs


class StreamOptionsSerializer(serializers.Serializer):  # type: ignore[type-arg]
    include_usage = serializers.BooleanField(required=False, default=False)


class ChatCompletionRequestSerializer(serializers.Serializer):  # type: ignore[type-arg]
    model = serializers.CharField(max_length=100)
    messages = MessageSerializer(many=True, allow_empty=False)
    max_tokens = serializers.IntegerField(required=False, allow_null=True, min_value=1)
    max_completion_tokens = serializers.IntegerField(required=False, allow_null=True, min_value=1)
    temperature = serializers.FloatField(required=False, allow_null=True, min_value=0.0, max_value=2.0)
    top_p = serializers.FloatField(required=False, allow_null=True, min_value=0.0, max_value=1.0)
    stop = StopField(required=False, allow_null=True)
    seed = serializers.IntegerField(required=False, allow_null=True, min_value=0, max_value=2**63 - 1)
    n = serializers.IntegerField(required=False, allow_null=True, default=1)
    stream = serializers.BooleanField(required=False, allow_null=True, default=False)
    stream_options = StreamOptionsSerializer(required=False, allow_null=True)
    # vLLM's extension: keep generating past the end-of-sequence token.
    ignore_eos = serializers.BooleanField(required=False, default=False)
    # Ours: a client that disconnects does not abort the generation; its answer is stored.
    continue_on_disconnect = serializers.BooleanField(required=False, default=False)

    def validate_n(self, value: int | None) -> int:
        if value not in (None, 1):
            raise serializers.ValidationError("only n=1 is supported")
        return 1

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs.get("stream_options") and not attrs.get("stream"):
            raise serializers.ValidationError({"stream_options": "only allowed when stream is true"})
        return attrs


@dataclass(frozen=True, slots=True)
class ChatRequest:
    model: str
    messages: list[tuple[str, str]]
    params: dict[str, Any]  # sampling parameters, as the services take them
    stream: bool
    include_usage: bool
    continue_on_disconnect: bool

    @classmethod
    def from_validated(cls, data: dict[str, Any]) -> ChatRequest:
        max_tokens = data.get("max_completion_tokens") or data.get("max_tokens")
        params = {
            "max_tokens": max_tokens,
            "temperature": data.get("temperature"),
            "top_p": data.get("top_p"),
            "stop": data.get("stop") or [],
            "seed": data.get("seed"),
            "ignore_eos": data["ignore_eos"],
        }
        return cls(
            model=data["model"],
            messages=[(m["role"], m["content"]) for m in data["messages"]],
            params=params,
            stream=bool(data.get("stream")),
            include_usage=bool((data.get("stream_options") or {}).get("include_usage")),
            continue_on_disconnect=data["continue_on_disconnect"],
        )
