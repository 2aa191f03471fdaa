"""The chat's pages over HTTP (no browser): login, ownership, the API keys page, the
Content-Security-Policy, and the pages that must keep working without it."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from chat.security import POLICY
from conversations.authentication import api_key_create, api_key_user
from conversations.models import ApiKey, Message
from tests.factories import ConversationFactory

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery staple"


@pytest.fixture
def person():
    return get_user_model().objects.create_user("alice", password=PASSWORD)


@pytest.fixture
def signed_in(client, person):
    client.force_login(person)
    return client


@pytest.mark.parametrize("path", ["/", "/c/1/", "/keys/"])
def test_the_pages_need_a_login(client, path):
    response = client.get(path)
    assert response.status_code == 302
    assert response["Location"] == f"/accounts/login/?next={path}"


def test_logging_in_and_out_on_the_chats_own_pages(client, person):
    page = client.get("/accounts/login/")
    assert page.status_code == 200
    assert b'name="username"' in page.content
    refused = client.post("/accounts/login/", {"username": "alice", "password": "wrong"})
    assert refused.status_code == 200
    assert b"did not match" in refused.content

    logged_in = client.post("/accounts/login/", {"username": "alice", "password": PASSWORD})
    assert (logged_in.status_code, logged_in["Location"]) == (302, "/")
    assert client.get("/").status_code == 200
    logged_out = client.post("/accounts/logout/")
    assert (logged_out.status_code, logged_out["Location"]) == (302, "/accounts/login/")
    assert client.get("/").status_code == 302


def test_the_chat_page_is_a_shell_for_the_script(signed_in):
    page = signed_in.get("/")
    html = page.content.decode()
    assert page.status_code == 200
    assert '<script type="module" src="/static/chat/app.js">' in html
    assert 'data-max-chars="32000"' in html
    assert 'aria-label="Conversations"' in html


def test_another_users_conversation_shows_nothing_of_it(signed_in, django_user_model):
    theirs = ConversationFactory(
        owner=django_user_model.objects.create_user("bob"), title="Bob's secret plan"
    )
    Message.objects.create(conversation=theirs, role="user", content="the launch codes")

    page = signed_in.get(f"/c/{theirs.pk}/")

    assert page.status_code == 404
    html = page.content.decode()
    assert "does not exist, or it is not yours" in html
    assert "secret" not in html and "launch codes" not in html
    assert 'data-conversation-id=""' in html  # the script opens nothing


def test_ones_own_conversation_page_names_it_for_the_script(signed_in, person):
    mine = ConversationFactory(owner=person)
    page = signed_in.get(f"/c/{mine.pk}/")
    assert page.status_code == 200
    assert f'data-conversation-id="{mine.pk}"' in page.content.decode()


@pytest.mark.parametrize("path", ["/", "/keys/", "/accounts/login/"])
def test_the_chat_pages_allow_no_inline_script(client, person, path):
    if path != "/accounts/login/":
        client.force_login(person)
    policy = client.get(path)["Content-Security-Policy"]
    assert policy == POLICY
    directives = dict(d.split(" ", 1) for d in policy.split("; "))
    assert directives["script-src"] == "'self'"
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert directives["object-src"] == "'none'"


def test_the_admin_and_the_api_docs_keep_their_inline_scripts(client, person):
    person.is_staff = person.is_superuser = True
    person.save()
    client.force_login(person)
    for path in ("/admin/", "/api/docs/"):
        response = client.get(path)
        assert response.status_code == 200, path
        assert "Content-Security-Policy" not in response, path


def test_a_key_is_created_shown_once_listed_and_revoked(signed_in, person):
    created = signed_in.post("/keys/", {"name": "notebook"})
    assert created.status_code == 200
    assert "no-store" in created["Cache-Control"]
    key = ApiKey.objects.get(user=person)
    html = created.content.decode()
    raw = html.split('id="new-key-value" value="', 1)[1].split('"', 1)[0]
    assert "shown this once" in html

    listing = signed_in.get("/keys/").content.decode()
    assert raw not in listing  # never again
    assert f"llm-{key.prefix}…" in listing and "notebook" in listing and "never" in listing
    assert raw.startswith("llm-") and api_key_user(raw=raw) == person

    revoked = signed_in.post(f"/keys/{key.pk}/revoke/")
    assert (revoked.status_code, revoked["Location"]) == (302, "/keys/")
    assert api_key_user(raw=raw) is None
    assert "revoked" in signed_in.get("/keys/").content.decode()


def test_nobody_revokes_someone_elses_key(signed_in, django_user_model):
    bob = django_user_model.objects.create_user("bob")
    key, raw = api_key_create(user=bob)
    assert signed_in.post(f"/keys/{key.pk}/revoke/").status_code == 404
    assert api_key_user(raw=raw) == bob
    assert "llm-" + key.prefix not in signed_in.get("/keys/").content.decode()


def test_revoking_needs_a_post(signed_in, person):
    key, _ = api_key_create(user=person)
    assert signed_in.get(f"/keys/{key.pk}/revoke/").status_code == 405


def test_bootstrap_demo_makes_a_user_who_can_log_in_to_the_chat(client, tmp_path, capsys):
    call_command("bootstrap_demo", file=str(tmp_path / "demo.json"))
    demo = json.loads(capsys.readouterr().out)
    response = client.post("/accounts/login/", {"username": demo["username"], "password": demo["password"]})
    assert (response.status_code, response["Location"]) == (302, "/")
