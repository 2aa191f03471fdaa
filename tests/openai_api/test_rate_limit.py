"""Per-key rate limits (DRF throttles) on the OpenAI API, held across web processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import openai
import pytest
import redis
from django.conf import settings

from conversations.models import Conversation
from tests.conftest import ApiUser, WorkerProcess
from tests.openai_api.conftest import ServerProcess, start_server

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture
def throttled_servers(
    django_db_blocker, tmp_path, echo_worker: WorkerProcess
) -> Iterator[list[ServerProcess]]:
    """Two web processes, as behind a load balancer, each allowing a key 3 requests a minute."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    for key in client.scan_iter("*throttle_*"):  # counts of earlier runs' users
        client.delete(key)
    client.close()
    env = {
        "OPENAI_API_THROTTLE_CLASSES": "rest_framework.throttling.UserRateThrottle",
        "API_THROTTLE_RATES": "user=3/min",
    }
    servers = []
    try:
        for i in range(2):
            servers.append(start_server(django_db_blocker, tmp_path / f"uvicorn-{i}.log", **env))
        yield servers
    finally:
        for server in servers:
            server.stop()


def test_a_key_over_its_rate_gets_429_from_every_web_process(
    throttled_servers: list[ServerProcess],
    make_client: Callable[[ServerProcess, str], openai.OpenAI],
    api_user: ApiUser,
    make_api_user: Callable[..., ApiUser],
):
    first, second = (make_client(server, api_user.key) for server in throttled_servers)
    for client in (first, second, first):
        reply = client.chat.completions.create(model="echo", messages=HELLO, max_tokens=2)
        assert reply.choices[0].message.content

    with pytest.raises(openai.RateLimitError) as caught:
        second.chat.completions.create(model="echo", messages=HELLO, max_tokens=2)

    assert caught.value.status_code == 429
    assert caught.value.body["code"] == "rate_limit_exceeded"
    assert "rate limit" in caught.value.body["message"]
    assert 0 < int(caught.value.response.headers["retry-after"]) <= 60
    # The refused request was not stored (nor queued).
    assert Conversation.objects.filter(owner=api_user.user).count() == 3
    # Another key has a budget of its own.
    other = make_client(throttled_servers[1], make_api_user(username="other").key)
    assert other.chat.completions.create(model="echo", messages=HELLO, max_tokens=2).choices
