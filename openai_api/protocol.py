"""Validation of a chat completion request (OpenAI's body, plus vLLM's and ours extensions).

Unknown fields are ignored, as OpenAI does; known ones with bad values are
refused. Model-dependent checks (the context window, ``max_tokens`` against
it) are the services' (``inference.params``), shared with the REST API.

The body is validated with pydantic, as vLLM's and OpenAI's own servers do:
this is the hottest path of the API, and a DRF serializer (which deep-copies
its fields for every request) cost about 2 ms of the web server's CPU per
request under load, a sixth of all it spends on one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import pydantic
from django.conf import settings
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from llmproject.exceptions import InvalidInput

# Unknown keys are ignored; values are coerced as DRF did ("5" -> 5, "true" -> True),
# and refused when they cannot be read as the type.
_LAX = ConfigDict(extra="ignore")

_CONTENT_SCHEMA = {
    "anyOf": [
        {"type": "string"},
        {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
                "required": ["type", "text"],
            },
            "description": "Text parts, joined.",
        },
        {"type": "null"},
    ],
    "description": "Required but for the assistant's turns.",
}


def _unicode_text(value: str) -> str:
    """Refuse a string holding a lone surrogate (JSON's ``"\\ud800"``, or UTF-8 bytes
    of one, which ``json.loads`` lets through): it is not text, and no database,
    tokenizer or JSON encoder downstream takes it. An ASCII string is known to
    hold none without looking (``isascii`` reads a flag); 1.2 us for 1,000
    characters of other text, measured."""
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError:
            raise ValueError("must be valid Unicode text (it holds a lone surrogate)") from None
    return value


UnicodeText = Annotated[str, AfterValidator(_unicode_text)]


class ChatMessageIn(BaseModel):
    model_config = _LAX
    # "developer" is OpenAI's newer name for the system role.
    role: Literal["system", "developer", "user", "assistant"]
    # Text parts are joined before validation; the schema (OpenAPI) says they are welcome.
    content: Annotated[UnicodeText | None, WithJsonSchema(_CONTENT_SCHEMA)] = None

    @field_validator("content", mode="before")
    @classmethod
    def _content(cls, value: object) -> object:
        if value is None or isinstance(value, str):
            return value
        if not isinstance(value, list):
            raise ValueError("must be a string or a list of text parts")
        texts = []
        for part in value:
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise ValueError("must be a string or a list of text parts")
            if part["type"] != "text":
                raise ValueError(f"only text content parts are supported (got type {part['type']!r})")
            if not isinstance(part.get("text"), str):
                raise ValueError("must be a string or a list of text parts")
            texts.append(part["text"])
        return "".join(texts)

    @model_validator(mode="after")
    def _required_content(self) -> ChatMessageIn:
        if self.content is None:
            if self.role != "assistant":
                raise _FieldError("content", "Field required")
            self.content = ""
        if len(self.content) > settings.LLM_MAX_MESSAGE_CHARS:
            raise _FieldError(
                "content", f"a message may hold at most {settings.LLM_MAX_MESSAGE_CHARS} characters"
            )
        if self.role == "developer":
            self.role = "system"
        return self


class StreamOptions(BaseModel):
    model_config = _LAX
    include_usage: bool = False


class ChatCompletionBody(BaseModel):
    model_config = _LAX
    model: Annotated[UnicodeText, Field(max_length=100)]
    messages: Annotated[list[ChatMessageIn], Field(min_length=1)]
    max_tokens: Annotated[int | None, Field(ge=1)] = None
    max_completion_tokens: Annotated[int | None, Field(ge=1)] = None
    temperature: Annotated[float | None, Field(ge=0.0, le=2.0)] = None
    top_p: Annotated[float | None, Field(ge=0.0, le=1.0)] = None
    stop: str | list[str] | None = None
    seed: Annotated[int | None, Field(ge=0, le=2**63 - 1)] = None
    n: int | None = 1
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    ignore_eos: Annotated[
        bool, Field(description="vLLM's extension: keep generating past the end-of-sequence token.")
    ] = False
    continue_on_disconnect: Annotated[
        bool,
        Field(
            description="Ours: a client that disconnects does not abort the generation; its answer is stored."
        ),
    ] = False

    @field_validator("stop", mode="before")
    @classmethod
    def _stop(cls, value: object) -> object:
        if value is None:
            return value
        strings = [value] if isinstance(value, str) else value
        if not isinstance(strings, list) or not all(isinstance(s, str) for s in strings):
            raise ValueError("must be a string or a list of strings")
        for string in strings:
            _unicode_text(string)
            if "\x00" in string:  # no use to stop at, and PostgreSQL's jsonb cannot hold it
                raise ValueError("must not contain NUL characters")
        return value

    @field_validator("n")
    @classmethod
    def _n(cls, value: int | None) -> int:
        if value not in (None, 1):
            raise ValueError("only n=1 is supported")
        return 1

    @model_validator(mode="after")
    def _stream_options(self) -> ChatCompletionBody:
        if self.stream_options is not None and not self.stream:
            raise _FieldError("stream_options", "only allowed when stream is true")
        return self


class _FieldError(ValueError):
    """A model-level check's error that belongs to one field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True, slots=True)
class ChatRequest:
    model: str
    messages: list[tuple[str, str]]
    params: dict[str, Any]  # sampling parameters, as the services take them
    stream: bool
    include_usage: bool
    continue_on_disconnect: bool

    @classmethod
    def from_body(cls, body: ChatCompletionBody) -> ChatRequest:
        params = {
            "max_tokens": body.max_completion_tokens or body.max_tokens,
            "temperature": body.temperature,
            "top_p": body.top_p,
            "stop": [body.stop] if isinstance(body.stop, str) else body.stop or [],
            "seed": body.seed,
            "ignore_eos": body.ignore_eos,
        }
        return cls(
            model=body.model,
            messages=[(m.role, m.content or "") for m in body.messages],
            params=params,
            stream=bool(body.stream),
            include_usage=bool(body.stream_options and body.stream_options.include_usage),
            continue_on_disconnect=body.continue_on_disconnect,
        )


def _no_constant(name: str) -> Any:
    # NaN and Infinity are not JSON (Python's json reads them; DRF refuses them too).
    raise ValueError(f"{name} is not a JSON value")


# One decoder for every request (``json.loads`` with any option builds a new one,
# 2 us); the body is decoded as strict UTF-8 first (``json.loads`` of bytes lets
# the UTF-8 bytes of a lone surrogate through).
_JSON = json.JSONDecoder(parse_constant=_no_constant)


def parse_chat_request(raw: bytes) -> ChatRequest:
    """The request body, validated; ``InvalidInput`` naming the first bad parameter
    (``messages.0.role``) otherwise."""
    try:
        data = _JSON.decode(raw.decode() if raw else "null")
    except ValueError as exc:  # UnicodeDecodeError included: the body is not UTF-8
        raise InvalidInput(f"the body is not valid JSON: {exc}", code="invalid_json") from exc
    except RecursionError:
        raise InvalidInput("the body is not valid JSON: nested too deeply", code="invalid_json") from None
    if not isinstance(data, dict):
        raise InvalidInput("the body must be a JSON object", code="invalid_json")
    try:
        body = ChatCompletionBody.model_validate(data)
    except pydantic.ValidationError as exc:
        field, message = _first_error(exc)
        raise InvalidInput(
            f"{field}: {message}" if field else message, field=field or None, code="invalid_value"
        ) from None
    return ChatRequest.from_body(body)


def _first_error(exc: pydantic.ValidationError) -> tuple[str, str]:
    error = exc.errors(include_url=False)[0]
    loc = [str(part) for part in error["loc"]]
    message = error["msg"]
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, _FieldError):
        loc.append(cause.field)
        message = str(cause)
    elif isinstance(cause, ValueError):
        message = str(cause)
    return ".".join(loc), message
