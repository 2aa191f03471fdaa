"""The REST API: ownership, the 202 contract, validation, pagination, API keys."""

from __future__ import annotations

import pytest
from django.core.management import call_command

from conversations.models import ConversationEvent, InferenceJob, Message
from tests.factories import ConversationFactory

pytestmark = pytest.mark.django_db


def test_it_requires_an_api_key(client):
    response = client.get("/api/conversations/")
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_it_refuses_a_bad_key(client):
    response = client.get("/api/conversations/", HTTP_AUTHORIZATION="Bearer llm-not-a-real-key")
    assert response.status_code == 401
    assert "invalid" in response.json()["detail"]


def test_create_api_key_command_creates_the_user_and_a_working_key(client, capsys):
    call_command("create_api_key", "alice")
    key = capsys.readouterr().out.strip()
    response = client.post(
        "/api/conversations/",
        {"title": "hi"},
        HTTP_AUTHORIZATION=f"Bearer {key}",
        content_type="application/json",
    )
    assert response.status_code == 201
    assert response.json()["title"] == "hi"


def test_conversations_are_created_listed_retrieved_and_deleted(api_user):
    client = api_user.client()
    created = client.post("/api/conversations/", {"title": "Plans"}).json()
    assert created["model"] == "echo"
    assert created["websocket"] == f"/ws/conversations/{created['id']}/"

    listing = client.get("/api/conversations/").json()
    assert [c["id"] for c in listing["results"]] == [created["id"]]
    assert client.get(f"/api/conversations/{created['id']}/").json()["title"] == "Plans"

    assert client.delete(f"/api/conversations/{created['id']}/").status_code == 204
    assert client.get(f"/api/conversations/{created['id']}/").status_code == 404


def test_it_refuses_another_users_conversation(api_user, make_api_user):
    other = make_api_user()
    conversation = ConversationFactory(owner=other.user)
    client = api_user.client()
    for response in (
        client.get(f"/api/conversations/{conversation.pk}/"),
        client.get(f"/api/conversations/{conversation.pk}/messages/"),
        client.post(f"/api/conversations/{conversation.pk}/messages/", {"content": "hi"}),
        client.delete(f"/api/conversations/{conversation.pk}/"),
    ):
        assert response.status_code == 404
    assert conversation.messages.count() == 0
    assert client.get("/api/conversations/").json()["results"] == []


def test_posting_a_message_answers_202_with_both_messages_and_the_job(api_user):
    conversation = ConversationFactory(owner=api_user.user, title="")
    response = api_user.client().post(
        f"/api/conversations/{conversation.pk}/messages/",
        {"content": "What is a queue?", "max_tokens": 20, "temperature": 0.5, "stop": "###"},
    )
    assert response.status_code == 202
    body = response.json()
    assert body["user_message"]["content"] == "What is a queue?"
    assert body["assistant_message"]["status"] == "queued"
    assert body["job"]["queue"] == "llm.echo"
    assert body["job"]["params"]["max_tokens"] == 20
    assert body["job"]["params"]["stop"] == ["###"]
    assert body["websocket"] == f"/ws/conversations/{conversation.pk}/"
    assert response["Location"] == f"/api/jobs/{body['job']['id']}/"

    job = InferenceJob.objects.get(pk=body["job"]["id"])
    assert job.message_id == body["assistant_message"]["id"]
    kinds = list(
        ConversationEvent.objects.filter(correlation_id=job.correlation_id).values_list("kind", flat=True)
    )
    assert kinds == ["user_query_received", "inference_queued"]
    conversation.refresh_from_db()
    assert conversation.title == "What is a queue?"

    job_response = api_user.client().get(f"/api/jobs/{job.pk}/")
    assert job_response.status_code == 200
    assert job_response.json()["state"] == "queued"


def test_another_user_cannot_read_a_job(api_user, make_api_user):
    conversation = ConversationFactory(owner=api_user.user)
    job_id = (
        api_user.client()
        .post(f"/api/conversations/{conversation.pk}/messages/", {"content": "hi"})
        .json()["job"]["id"]
    )
    assert make_api_user().client().get(f"/api/jobs/{job_id}/").status_code == 404


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"content": ""}, "content"),
        ({"content": "   \n"}, "content"),
        ({"content": "x" * 32_001}, "content"),
        ({}, "content"),
        ({"content": "hi", "model": "gpt-9"}, "model"),
        ({"content": "hi", "max_tokens": 0}, "max_tokens"),
        ({"content": "hi", "max_tokens": 10_000}, "max_tokens"),
        ({"content": "hi", "temperature": 2.5}, "temperature"),
        ({"content": "hi", "temperature": "hot"}, "temperature"),
        ({"content": "hi", "top_p": 0}, "top_p"),
        ({"content": "hi", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"content": "hi", "stop": 5}, "stop"),
        ({"content": "hi", "priority": 10}, "priority"),
        ({"content": "hi", "seed": -1}, "seed"),
    ],
)
def test_invalid_messages_get_a_400_naming_the_field(api_user, payload, field):
    conversation = ConversationFactory(owner=api_user.user)
    response = api_user.client().post(
        f"/api/conversations/{conversation.pk}/messages/", payload, format="json"
    )
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["field"] == field
    assert field in body["detail"]
    assert Message.objects.filter(conversation=conversation).count() == 0


def test_a_malformed_body_is_a_400(api_user):
    conversation = ConversationFactory(owner=api_user.user)
    response = api_user.client().generic(
        "POST",
        f"/api/conversations/{conversation.pk}/messages/",
        "{not json",
        content_type="application/json",
    )
    assert response.status_code == 400
    assert "JSON" in response.json()["detail"]


def test_creating_a_conversation_with_an_unknown_model_is_a_400(api_user):
    response = api_user.client().post("/api/conversations/", {"model": "nope"})
    assert response.status_code == 400
    assert response.json()["field"] == "model"
    assert "echo" in response.json()["detail"]


def test_messages_are_paginated_oldest_first(api_user):
    conversation = ConversationFactory(owner=api_user.user)
    Message.objects.bulk_create(
        Message(conversation=conversation, role="user", content=f"m{i}") for i in range(7)
    )
    client = api_user.client()
    first = client.get(f"/api/conversations/{conversation.pk}/messages/?page_size=5").json()
    assert first["count"] == 7
    assert [m["content"] for m in first["results"]] == ["m0", "m1", "m2", "m3", "m4"]
    second = client.get(first["next"]).json()
    assert [m["content"] for m in second["results"]] == ["m5", "m6"]


def test_models_are_listed_from_the_registry(api_user):
    models = api_user.client().get("/api/models/").json()
    assert [m["name"] for m in models] == ["echo", "slow", "spare", "tiny"]
    assert models[0]["queue"] == "llm.echo"
    assert models[3]["engine"] == "vllm"


def test_the_openapi_schema_is_served(client):
    response = client.get("/api/schema/")
    assert response.status_code == 200
    assert b"/api/conversations/{conversation_id}/messages/" in response.content
