"""A WebSocket opened with a browser's session cookie must come from the site's own page:
scheme, host and port, whatever ``ALLOWED_HOSTS`` says (``*`` in docker-compose.yml).

Against a live server (uvicorn, as ``make run`` starts it on ``PORT``) with
``ALLOWED_HOSTS=*``, through a real WebSocket client.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest
from django.test import Client
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.conftest import ROOT, ApiUser, worker_env
from tests.factories import ConversationFactory
from tests.openai_api.conftest import ServerProcess, start_server

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def server(django_db_blocker, tmp_path) -> Iterator[ServerProcess]:
    server = start_server(django_db_blocker, tmp_path / "uvicorn.log", ALLOWED_HOSTS="*")
    try:
        yield server
    finally:
        server.stop()


def open_socket(server: ServerProcess, conversation_id: int, *, origin: str | None, **headers: str) -> dict:
    """The socket's first event, or raises ``InvalidStatus`` if the handshake is refused."""
    url = f"ws://127.0.0.1:{server.port}/ws/conversations/{conversation_id}/"
    with connect(url, origin=origin, additional_headers=headers, open_timeout=10, proxy=None) as ws:
        return json.loads(ws.recv(timeout=10))


@pytest.fixture
def session_cookie(api_user: ApiUser) -> str:
    client = Client()
    # As stored (the factory's user holds a password it never saved: another session hash).
    client.force_login(type(api_user.user).objects.get(pk=api_user.user.pk))
    return f"sessionid={client.cookies['sessionid'].value}"


def test_the_sites_own_page_opens_a_socket_with_the_session(server, api_user, session_cookie):
    conversation = ConversationFactory(owner=api_user.user)
    for host in ("127.0.0.1", "localhost"):
        origin = f"http://{host}:{server.port}"
        event = open_socket(server, conversation.pk, origin=origin, Cookie=session_cookie)
        assert event["event"] == "hello"


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example",  # another site (let in while ALLOWED_HOSTS was "*")
        "http://localhost:{other_port}",  # another local app (the port was ignored)
        "https://localhost:{port}",  # another scheme
        None,  # no Origin at all, with a cookie
    ],
)
def test_a_session_from_any_other_origin_is_refused(server, api_user, session_cookie, origin):
    conversation = ConversationFactory(owner=api_user.user)
    if origin:
        origin = origin.format(port=server.port, other_port=server.port + 1)
    with pytest.raises(InvalidStatus) as refused:
        open_socket(server, conversation.pk, origin=origin, Cookie=session_cookie)
    assert refused.value.response.status_code == 403


def test_a_bearer_key_needs_no_origin(server, api_user):
    conversation = ConversationFactory(owner=api_user.user)
    event = open_socket(server, conversation.pk, origin=None, Authorization=f"Bearer {api_user.key}")
    assert event["event"] == "hello"


def test_the_settings_refuse_to_start_without_a_secret_key_unless_debug(tmp_path):
    def settings_load(**env: str) -> subprocess.CompletedProcess[str]:
        environment = worker_env(DJANGO_SETTINGS_MODULE="llmproject.settings", **env)
        environment.pop("SECRET_KEY", None)
        environment.setdefault("SECRET_KEY_FILE", str(tmp_path / "no-such-file"))
        return subprocess.run(
            [sys.executable, "-c", "from django.conf import settings; print(settings.SECRET_KEY)"],
            env=environment,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )

    refused = settings_load(DEBUG="false")
    assert refused.returncode != 0
    assert "SECRET_KEY is not set" in refused.stderr
    assert settings_load(DEBUG="true").returncode == 0
    (tmp_path / "key").write_text("a-key-of-make-runs\n")
    from_file = settings_load(DEBUG="false", SECRET_KEY_FILE=str(tmp_path / "key"))
    assert from_file.stdout.strip() == "a-key-of-make-runs"
