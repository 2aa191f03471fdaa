"""Bad input to the REST API: a 400 naming the field, in the API's shape, and nothing stored.

(Run on SQLite and PostgreSQL: a NUL or a lone surrogate that reaches
PostgreSQL is a 500 there only.) Transport-level errors (size, URL, method)
are in ``tests/openai_api/test_bad_input.py``, against a live server.
"""

from __future__ import annotations

import pytest

from conversations.models import Conversation, Message
from tests.factories import ConversationFactory

pytestmark = pytest.mark.django_db


def post_raw(client, path: str, raw: bytes):
    return client.generic("POST", path, raw, content_type="application/json")


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b'{"content": "hi", "stop": "\\ud800"}', "stop"),
        (b'{"content": "hi", "stop": ["ok", "a\\udfffb"]}', "stop"),
        (b'{"content": "hi", "stop": "\\u0000"}', "stop"),
        (b'{"content": "hi", "stop": ["a\\u0000"]}', "stop"),
        (b'{"content": "a\\ud800b"}', "content"),
        (b'{"content": "hi", "model": "echo\\ud800"}', "model"),
        (b'{"content": "hi", "temperature": NaN}', None),
        (b'{"content": "hi", "max_tokens": 1e999}', None),
        (b'{"content": "hi", "seed": 100000000000000000000000000000}', "seed"),
        (b'{"content": "hi", "priority": 1.5}', "priority"),
        (b'{"content": "hi", "stop": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", None),
        (b'{"content": "hi", "max_tokens": ' + b"9" * 5000 + b"}", None),
    ],
)
def test_a_message_that_is_not_storable_text_is_a_400(api_user, raw, field):
    conversation = ConversationFactory(owner=api_user.user)
    response = post_raw(api_user.client(), f"/api/conversations/{conversation.pk}/messages/", raw)
    assert response.status_code == 400, response.content[:300]
    body = response.json()
    assert body["detail"] and body["code"]
    if field:
        assert body["field"] == field
    assert not Message.objects.exists()


@pytest.mark.parametrize(
    "raw",
    [
        b'{"title": "a\\ud800"}',
        b'{"title": "a\\u0000"}',
        b'{"title": ' + b"{" * 100_000 + b"}" * 100_000 + b"}",
        b'{"model": ["echo"]}',
    ],
)
def test_a_conversation_that_is_not_storable_text_is_a_400(api_user, raw):
    response = post_raw(api_user.client(), "/api/conversations/", raw)
    assert response.status_code == 400, response.content[:300]
    assert response.json()["detail"]
    assert not Conversation.objects.exists()
