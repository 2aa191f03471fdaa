"""Per-user budgets on the REST API, requests and tokens, counted in the shared cache;
the token budget is shared with the OpenAI API.

Against a live server (the throttles' classes and rates are read once, when a
process starts, as DRF reads them).
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import redis
from django.conf import settings

from conversations.models import Message
from tests.conftest import ApiUser
from tests.factories import ConversationFactory
from tests.openai_api.conftest import ServerProcess, start_server

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def forget_counts() -> None:
    client = redis.Redis.from_url(settings.REDIS_URL)
    for key in client.scan_iter("*throttle_*"):  # counts of earlier runs' users
        client.delete(key)
    client.close()


@pytest.fixture
def throttled_server(django_db_blocker, tmp_path) -> Iterator[ServerProcess]:
    forget_counts()
    throttles = "rest_framework.throttling.UserRateThrottle,llmproject.throttling.TokenRateThrottle"
    server = start_server(
        django_db_blocker,
        tmp_path / "uvicorn.log",
        API_THROTTLE_CLASSES=throttles,
        OPENAI_API_THROTTLE_CLASSES="llmproject.throttling.TokenRateThrottle",
        API_THROTTLE_RATES="user=5/min,tokens=100/hour",
    )
    try:
        yield server
    finally:
        server.stop()
        forget_counts()


def api(server: ServerProcess, user: ApiUser) -> httpx.Client:
    return httpx.Client(
        base_url=server.base_url.removesuffix("/v1"), headers={"Authorization": f"Bearer {user.key}"}
    )


def test_a_user_over_their_request_budget_gets_429_in_the_rest_shape(
    throttled_server, api_user, make_api_user
):
    http = api(throttled_server, api_user)
    for _ in range(5):
        assert http.get("/api/models/").status_code == 200
    refused = http.get("/api/conversations/")
    assert refused.status_code == 429
    assert refused.json()["code"] == "throttled"
    assert 0 < int(refused.headers["retry-after"]) <= 60
    assert api(throttled_server, make_api_user()).get("/api/models/").status_code == 200


def test_a_user_who_spent_their_tokens_is_refused_on_both_apis(throttled_server, api_user, echo_worker):
    conversation = ConversationFactory(owner=api_user.user)
    http = api(throttled_server, api_user)
    path = f"/api/conversations/{conversation.pk}/messages/"
    # Each post reserves its max_tokens and a token per 4 characters: 61, then 122 of 100.
    for _ in range(2):
        assert http.post(path, json={"content": "abcd", "max_tokens": 60}).status_code == 202
    refused = http.post(path, json={"content": "abcd", "max_tokens": 1})
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) > 0
    assert Message.objects.filter(conversation=conversation, role="user").count() == 2

    chat = http.post(
        "/v1/chat/completions", json={"model": "echo", "messages": [{"role": "user", "content": "hi"}]}
    )
    assert chat.status_code == 429
    assert chat.json()["error"]["code"] == "rate_limit_exceeded"
    assert "token budget" in chat.json()["error"]["message"]
