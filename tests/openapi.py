"""Real responses checked against the OpenAPI schema the server serves (``/api/schema/``).

A response passes if its status is documented for its operation, its media
type too, the headers documented as required are there, and its body is valid
against the documented schema (JSON Schema 2020-12, OpenAPI 3.1's dialect).
Objects are checked closed: a member the schema does not document fails, so
the schema cannot fall behind what the API sends.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import httpx
from django.http import HttpResponseBase
from django.test import Client
from jsonschema import Draft202012Validator


class OpenApiDocument:
    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self._components = _closed(document["components"])

    @classmethod
    def served(cls) -> OpenApiDocument:
        response = Client().get("/api/schema/", {"format": "json"})
        assert response.status_code == 200, response.content
        return cls(json.loads(response.content))

    def operation(self, method: str, path: str) -> dict[str, Any]:
        operations = self.document["paths"].get(path)
        assert operations is not None, f"{path} is not in the schema"
        operation = operations.get(method.lower())
        assert operation is not None, f"{method} {path} is not in the schema"
        return operation

    def response_schema(self, method: str, path: str, status: int, media_type: str) -> dict[str, Any] | None:
        """The schema of the body, or None for a documented response without one."""
        responses = self.operation(method, path)["responses"]
        documented = responses.get(str(status))
        assert documented is not None, (
            f"{method} {path}: {status} is not documented (only {sorted(responses)})"
        )
        content = documented.get("content")
        if content is None:
            return None
        assert media_type in content, f"{method} {path} {status}: {media_type} is not documented"
        return content[media_type]["schema"]

    def validate(self, schema: dict[str, Any], instance: Any, *, where: str) -> None:
        validator = Draft202012Validator(
            {**_closed(schema), "components": self._components},
            format_checker=Draft202012Validator.FORMAT_CHECKER,
        )
        errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
        assert not errors, f"{where}: the body does not match the schema:\n" + "\n".join(
            f"- at {'/'.join(map(str, e.absolute_path)) or '(body)'}: {e.message}" for e in errors
        )

    def check(self, response: HttpResponseBase | httpx.Response, method: str, path: str, status: int) -> Any:
        """Assert that ``response`` is a ``status`` that the schema documents for
        ``method path``, as documented; return its body (parsed if JSON)."""
        where = f"{method} {path} {response.status_code}"
        body = _content(response)
        assert response.status_code == status, f"{where}: expected {status}: {body[:500]!r}"
        documented = self.operation(method, path)["responses"][str(status)]
        for name, header in documented.get("headers", {}).items():
            if header.get("required"):
                assert name in response.headers, f"{where}: no {name} header"
        media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        schema = self.response_schema(method, path, status, media_type)
        if schema is None:
            assert not body, f"{where}: a body where none is documented"
            return None
        if media_type == "text/event-stream":
            events = sse_data(body.decode())
            for data in events:
                self.validate(schema, data, where=f"{where} event {data!r:.200}")
            return events
        parsed = json.loads(body)
        self.validate(schema, parsed, where=where)
        return parsed


def sse_data(text: str) -> list[Any]:
    """The data of each server-sent event, parsed, up to ``[DONE]`` (which must end the stream)."""
    events: list[Any] = []
    blocks = [block for block in text.split("\n\n") if block]
    for index, block in enumerate(blocks):
        if block.startswith(":"):
            continue  # a comment (keep-alive)
        assert block.startswith("data: "), f"not an SSE data event: {block!r}"
        data = block.removeprefix("data: ")
        if data == "[DONE]":
            assert index == len(blocks) - 1, "events after [DONE]"
            return events
        events.append(json.loads(data))
    raise AssertionError(f"the stream does not end with [DONE]: {text[-200:]!r}")


def _content(response: HttpResponseBase | httpx.Response) -> bytes:
    if isinstance(response, httpx.Response):
        return response.content
    if getattr(response, "streaming", False):
        return b"".join(response.streaming_content)  # type: ignore[attr-defined]
    return response.content  # type: ignore[attr-defined]


def _closed(schema: Any) -> Any:
    """``schema`` with each object that lists its properties closed to others."""
    if isinstance(schema, list):
        return [_closed(item) for item in schema]
    if not isinstance(schema, Mapping):
        return schema
    closed = {key: _closed(value) for key, value in schema.items()}
    if isinstance(schema.get("properties"), Mapping) and "additionalProperties" not in schema:
        closed["additionalProperties"] = False
    return closed
