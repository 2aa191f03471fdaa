"""Bad input over real HTTP: every error of ``/v1/`` and ``/api/`` is a 4xx in that API's
own JSON shape, never a 500 nor an HTML page.

Both APIs are tested here because what goes wrong before a view runs (the
body's size, the URL, the method) is the ASGI handlers' and the URLconf's,
which only a live server exercises as production runs them: ``/v1/`` under a
handler without middleware, ``/api/`` under the site's.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from django.conf import settings

from conversations.models import Conversation, InferenceJob
from tests.factories import ConversationFactory

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

DEEP = 100_000  # levels of nesting: past Python's recursion limit in any JSON parser


def openai_error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    return error


def rest_error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["detail"] and body["code"]
    return body


@pytest.fixture
def v1(openai_server, api_user) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=openai_server.base_url,
        headers={"Authorization": f"Bearer {api_user.key}"},
        timeout=30,
    ) as http:
        yield http


@pytest.fixture
def api(openai_server, api_user) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=openai_server.base_url.removesuffix("/v1") + "/api",
        headers={"Authorization": f"Bearer {api_user.key}"},
        timeout=30,
    ) as http:
        yield http


def chat_body(**fields: object) -> dict:
    return {"model": "echo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **fields}


JSON = {"Content-Type": "application/json"}


# --- /v1/ ----------------------------------------------------------------------


def test_v1_very_deeply_nested_json_is_400(v1):
    body = b'{"model": "echo", "messages": ' + b"[" * DEEP + b"]" * DEEP + b"}"
    error = openai_error(v1.post("/chat/completions", content=body, headers=JSON), 400)
    assert error["code"] == "invalid_json"
    assert not InferenceJob.objects.exists()


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        # A lone surrogate escape: valid JSON, not Unicode text.
        (b'{"model": "echo", "messages": [{"role": "user", "content": "a\\ud800b"}]}', "messages.0.content"),
        (b'{"model": "echo", "messages": [{"role": "user", "content": "hi"}], "stop": "\\udfff"}', "stop"),
        (b'{"model": "echo\\ud800", "messages": [{"role": "user", "content": "hi"}]}', "model"),
        # A surrogate encoded in UTF-8 bytes (which Python's json.loads lets through).
        (b'{"model": "echo", "messages": [{"role": "user", "content": "a\xed\xa0\x80b"}]}', None),
        # Bytes that are not UTF-8 at all.
        (b'{"model": "echo", "messages": [{"role": "user", "content": "a\xff\xfeb"}]}', None),
    ],
)
def test_v1_text_that_is_not_valid_unicode_is_400(v1, raw, param):
    error = openai_error(v1.post("/chat/completions", content=raw, headers=JSON), 400)
    if param:
        assert error["param"] == param
    assert not InferenceJob.objects.exists()


@pytest.mark.parametrize(
    "fields",
    [
        {"stop": "\u0000"},  # PostgreSQL's jsonb cannot hold NUL
        {"stop": ["ok", "a\u0000b"]},
        {"max_tokens": 10**30},
        {"seed": 10**30},
        {"temperature": float("nan")},
        {"top_p": float("inf")},
    ],
)
def test_v1_values_nothing_can_store_or_run_are_400(v1, fields):
    body = json.dumps(chat_body(**fields)).encode()  # NaN and Infinity as Python writes them
    openai_error(v1.post("/chat/completions", content=body, headers=JSON), 400)
    assert not InferenceJob.objects.exists()


def test_v1_a_body_over_the_size_limit_is_413(v1):
    big = "x" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1)
    error = openai_error(v1.post("/chat/completions", json=chat_body(user=big)), 413)
    assert error["code"] == "request_too_large"


def test_v1_a_chunked_body_over_the_size_limit_is_413(v1):
    chunk = b" " * 65536
    sent = 0

    def body() -> Iterator[bytes]:
        nonlocal sent
        yield b'{"model": "echo", "messages": [{"role": "user", "content": "hi"}], "pad": "'
        while sent < 4 * settings.DATA_UPLOAD_MAX_MEMORY_SIZE:  # no Content-Length: counted as read
            sent += len(chunk)
            yield chunk
        yield b'"}'

    try:
        response = v1.post("/chat/completions", content=body(), headers=JSON)
    except httpx.RemoteProtocolError:
        pytest.fail("the server dropped the connection instead of answering 413")
    openai_error(response, 413)


def test_v1_a_body_that_is_not_json_is_415(v1):
    response = v1.post("/chat/completions", data={"model": "echo"})  # a form, as curl -d sends
    error = openai_error(response, 415)
    assert "application/json" in error["message"]
    plain = v1.post("/chat/completions", content=b"{}", headers={"Content-Type": "text/plain"})
    openai_error(plain, 415)


def test_v1_a_json_content_type_with_parameters_is_accepted(v1):
    response = v1.post(
        "/chat/completions",
        content=httpx.Request("POST", "/", json=chat_body()).content,
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    assert response.status_code == 200, response.text


def test_v1_an_unknown_url_is_404_in_openais_shape(v1):
    error = openai_error(v1.get("/no/such/thing"), 404)
    assert "/v1/no/such/thing" in error["message"]
    openai_error(v1.post("/chat/completion", json=chat_body()), 404)


def test_v1_a_wrong_method_is_405_in_openais_shape(v1):
    response = v1.get("/chat/completions")
    openai_error(response, 405)
    assert response.headers["allow"] == "POST"
    response = v1.delete("/models")
    openai_error(response, 405)
    assert response.headers["allow"] == "GET"


# --- /api/ ---------------------------------------------------------------------


def test_api_very_deeply_nested_json_is_400(api, api_user):
    conversation = ConversationFactory(owner=api_user.user)
    body = b'{"content": "hi", "stop": ' + b"[" * DEEP + b"]" * DEEP + b"}"
    response = api.post(f"/conversations/{conversation.pk}/messages/", content=body, headers=JSON)
    rest_error(response, 400)
    body = b'{"title": ' + b"[" * DEEP + b"]" * DEEP + b"}"
    rest_error(api.post("/conversations/", content=body, headers=JSON), 400)
    assert not InferenceJob.objects.exists()


def test_api_a_body_over_the_size_limit_is_413(api, api_user):
    big = "x" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1)
    body = rest_error(api.post("/conversations/", json={"title": big}), 413)
    assert body["code"] == "request_too_large"
    assert not Conversation.objects.exists()


def test_api_an_unknown_url_is_404_in_its_shape(api):
    body = rest_error(api.get("/no/such/thing/"), 404)
    assert body["code"] == "not_found"
    rest_error(api.get("/conversations/123456789/"), 404)


def test_api_a_wrong_method_is_405_in_its_shape(api):
    response = api.put("/models/", json={})
    assert rest_error(response, 405)["code"] == "method_not_allowed"


def test_api_a_body_that_is_not_json_nor_a_form_is_415(api):
    response = api.post("/conversations/", content=b"title", headers={"Content-Type": "text/plain"})
    rest_error(response, 415)
