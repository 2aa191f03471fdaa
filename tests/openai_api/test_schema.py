"""The OpenAI-compatible API in the OpenAPI schema: documented from the pydantic
body and the response models, behind the API key, and real responses match it.

Its routes stay plain async Django views (the schema's DRF views only document
them), which the first test pins down.
"""

from __future__ import annotations

import httpx
import pytest
from django.test import Client
from django.urls import resolve
from rest_framework.views import APIView

from inference.engines.simulated import PERMANENT_MARKER
from openai_api import views
from openai_api.protocol import ChatCompletionBody

MODELS = "/v1/models"
CHAT = "/v1/chat/completions"
HI = [{"role": "user", "content": "hi"}]


def test_the_routes_are_still_served_by_the_plain_async_views():
    for url, view in ((MODELS, views.model_list), (CHAT, views.chat_completions)):
        callback = resolve(url).func
        assert callback is view
        assert not hasattr(callback, "cls") or not issubclass(callback.cls, APIView)


def ref(operation_part):
    return operation_part["schema"]["$ref"].removeprefix("#/components/schemas/")


def test_v1_is_documented_with_its_bodies_errors_and_the_api_key(openapi):
    schemas = openapi.document["components"]["schemas"]
    chat = openapi.operation("post", CHAT)
    (body,) = chat["requestBody"]["content"].values()
    assert ref(body) == "ChatCompletionBody"
    assert set(schemas["ChatCompletionBody"]["properties"]) == set(ChatCompletionBody.model_fields)
    assert schemas["ChatCompletionBody"]["required"] == ["model", "messages"]

    ok = chat["responses"]["200"]["content"]
    assert ref(ok["application/json"]) == "ChatCompletion"
    assert ref(ok["text/event-stream"]) == "ChatCompletionStreamEvent"
    errors = {"400", "401", "404", "413", "415", "429", "500", "503", "504"}
    assert set(chat["responses"]) == {"200", *errors}
    for status in errors:
        assert ref(chat["responses"][status]["content"]["application/json"]) == "OpenAIError"
    assert chat["responses"]["429"]["headers"]["Retry-After"]["required"]
    assert chat["responses"]["503"]["headers"]["Retry-After"]["required"]

    models = openapi.operation("get", MODELS)
    assert ref(models["responses"]["200"]["content"]["application/json"]) == "ModelList"
    for operation in (chat, models):
        assert operation["security"] == [{"bearerAuth": []}]  # API keys only, no session
        assert operation["tags"] == ["openai"]


@pytest.mark.django_db
def test_responses_without_a_worker_match_the_schema(api_user, openapi):
    client = Client(**api_user.auth_header)

    models = openapi.check(client.get(MODELS), "get", MODELS, 200)
    assert {m["id"] for m in models["data"]} == {"echo", "spare", "tiny"}

    def post(body, **extra):
        return client.post(CHAT, body, content_type="application/json", **extra)

    invalid = openapi.check(post({"model": "echo", "messages": HI, "temperature": 5}), "post", CHAT, 400)
    assert invalid["error"]["param"] == "temperature"
    not_json = openapi.check(post("{not json"), "post", CHAT, 400)
    assert not_json["error"]["code"] == "invalid_json"
    unknown = openapi.check(post({"model": "gpt-17", "messages": HI}), "post", CHAT, 404)
    assert unknown["error"]["code"] == "model_not_found"
    # No worker serves "spare".
    no_worker = openapi.check(post({"model": "spare", "messages": HI}), "post", CHAT, 503)
    assert no_worker["error"]["code"] == "no_worker"

    anonymous = Client()
    openapi.check(anonymous.get(MODELS), "get", MODELS, 401)
    missing = openapi.check(
        anonymous.post(CHAT, {"model": "echo", "messages": HI}, content_type="application/json"),
        "post",
        CHAT,
        401,
    )
    assert missing["error"]["code"] == "missing_api_key"
    bad_key = openapi.check(
        post({"model": "echo", "messages": HI}, HTTP_AUTHORIZATION="Bearer llm-nope"), "post", CHAT, 401
    )
    assert bad_key["error"]["code"] == "invalid_api_key"


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_answers_streamed_and_not_match_the_schema(openai_server, api_user, openapi):
    url = f"{openai_server.base_url}/chat/completions"
    headers = {"Authorization": f"Bearer {api_user.key}"}

    def post(**body):
        return httpx.post(url, json={"model": "echo", **body}, headers=headers, timeout=60)

    completion = openapi.check(post(messages=HI, max_tokens=8), "post", CHAT, 200)
    assert completion["object"] == "chat.completion"

    stream = post(messages=HI, max_tokens=8, stream=True, stream_options={"include_usage": True})
    events = openapi.check(stream, "post", CHAT, 200)
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert events[-2]["choices"][0]["finish_reason"] and events[-1]["usage"]

    failing = [{"role": "user", "content": f"break {PERMANENT_MARKER}"}]
    failed = openapi.check(post(messages=failing, max_tokens=20, stream=True), "post", CHAT, 200)
    assert failed[-1]["error"]["code"] == "generation_failed"
    error = openapi.check(post(messages=failing, max_tokens=20), "post", CHAT, 500)
    assert error["error"]["code"] == "generation_failed"

    models = httpx.get(f"{openai_server.base_url}/models", headers=headers, timeout=60)
    openapi.check(models, "get", MODELS, 200)
