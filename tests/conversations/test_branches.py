"""Conversations as trees over REST: parents, edits and regenerations as branches, one branch
listed, the history a worker gives the model; search, queue places and live models."""

from __future__ import annotations

import pytest
from django.utils import timezone

from conversations.models import InferenceJob, Message
from inference.engines.simulated import simulated_tokens
from inference.liveness import heartbeat_key
from inference.requests import ChatMessage
from tests.conftest import wait_for
from tests.factories import ConversationFactory


def _post(client, conversation_id, content, **extra):
    response = client.post(
        f"/api/conversations/{conversation_id}/messages/", {"content": content, **extra}, format="json"
    )
    assert response.status_code == 202, response.content
    return response.json()


def _messages(client, conversation_id, query=""):
    response = client.get(f"/api/conversations/{conversation_id}/messages/{query}")
    assert response.status_code == 200, response.content
    return response.json()["results"]


def _complete(message_id, content):
    """What a worker does to a reply, without one."""
    Message.objects.filter(pk=message_id).update(status="completed", content=content)
    InferenceJob.objects.filter(message_id=message_id).update(state="succeeded")


@pytest.mark.django_db
class TestBranchesOverRest:
    def test_a_client_naming_no_parent_writes_one_line(self, api_user):
        client = api_user.client()
        conversation = ConversationFactory(owner=api_user.user)
        first = _post(client, conversation.pk, "one")
        second = _post(client, conversation.pk, "two")

        assert first["user_message"]["parent_id"] is None
        assert first["assistant_message"]["parent_id"] == first["user_message"]["id"]
        assert second["user_message"]["parent_id"] == first["assistant_message"]["id"]
        assert second["assistant_message"]["parent_id"] == second["user_message"]["id"]

    def test_an_edit_is_a_sibling_and_each_branch_lists_on_its_own(self, api_user):
        client = api_user.client()
        conversation = ConversationFactory(owner=api_user.user)
        first = _post(client, conversation.pk, "one")
        _complete(first["assistant_message"]["id"], "answer one")
        old = _post(client, conversation.pk, "two")
        # Edit "two": the new text follows what "two" followed.
        edited = _post(client, conversation.pk, "two, edited", parent=old["user_message"]["parent_id"])

        assert edited["user_message"]["parent_id"] == old["user_message"]["parent_id"]
        everything = _messages(client, conversation.pk)
        assert [m["content"] for m in everything if m["role"] == "user"] == ["one", "two", "two, edited"]
        branch = _messages(client, conversation.pk, f"?leaf={edited['assistant_message']['id']}")
        assert [(m["role"], m["content"]) for m in branch] == [
            ("user", "one"),
            ("assistant", "answer one"),
            ("user", "two, edited"),
            ("assistant", ""),
        ]
        old_branch = _messages(client, conversation.pk, f"?leaf={old['user_message']['id']}")
        assert [m["content"] for m in old_branch] == ["one", "answer one", "two"]

    def test_a_null_parent_starts_the_conversation_anew(self, api_user):
        client = api_user.client()
        conversation = ConversationFactory(owner=api_user.user)
        _post(client, conversation.pk, "one")
        again = _post(client, conversation.pk, "one, edited", parent=None)

        assert again["user_message"]["parent_id"] is None
        leaf = again["assistant_message"]["id"]
        assert [m["content"] for m in _messages(client, conversation.pk, f"?leaf={leaf}")] == [
            "one, edited",
            "",
        ]

    def test_regenerating_queues_a_sibling_answer_and_keeps_the_old_one(self, api_user):
        client = api_user.client()
        conversation = ConversationFactory(owner=api_user.user)
        posted = _post(client, conversation.pk, "one")
        old = posted["assistant_message"]
        _complete(old["id"], "first try")

        response = client.post(
            f"/api/conversations/{conversation.pk}/messages/{old['id']}/regenerate/",
            {"max_tokens": 7},
            format="json",
        )

        assert response.status_code == 202, response.content
        body = response.json()
        assert body["assistant_message"]["parent_id"] == posted["user_message"]["id"]
        assert body["assistant_message"]["status"] == "queued"
        assert body["job"]["params"]["max_tokens"] == 7
        assert body["job"]["state"] == "queued"
        assert response["Location"] == f"/api/jobs/{body['job']['id']}/"
        assert Message.objects.get(pk=old["id"]).content == "first try"
        siblings = Message.objects.filter(parent_id=posted["user_message"]["id"]).order_by("id")
        assert [m.pk for m in siblings] == [old["id"], body["assistant_message"]["id"]]

    def test_only_an_answer_can_be_regenerated(self, api_user):
        client = api_user.client()
        conversation = ConversationFactory(owner=api_user.user)
        posted = _post(client, conversation.pk, "one")
        response = client.post(
            f"/api/conversations/{conversation.pk}/messages/{posted['user_message']['id']}/regenerate/"
        )
        assert response.status_code == 400
        assert response.json()["code"] == "not_an_answer"

    def test_another_users_message_cannot_be_followed_regenerated_or_listed(self, api_user, make_api_user):
        other = make_api_user()
        theirs = ConversationFactory(owner=other.user)
        their_posted = _post(other.client(), theirs.pk, "secret")
        mine = ConversationFactory(owner=api_user.user)
        client = api_user.client()
        reply_id = their_posted["assistant_message"]["id"]

        response = client.post(
            f"/api/conversations/{mine.pk}/messages/", {"content": "hi", "parent": reply_id}, format="json"
        )
        assert (response.status_code, response.json()["field"]) == (400, "parent")
        response = client.get(f"/api/conversations/{mine.pk}/messages/?leaf={reply_id}")
        assert (response.status_code, response.json()["field"]) == (400, "leaf")
        assert client.post(f"/api/conversations/{mine.pk}/messages/{reply_id}/regenerate/").status_code == 404
        assert (
            client.post(f"/api/conversations/{theirs.pk}/messages/{reply_id}/regenerate/").status_code == 404
        )
        assert Message.objects.filter(conversation=mine).count() == 0

    def test_a_leaf_that_is_not_a_number_is_a_400(self, api_user):
        conversation = ConversationFactory(owner=api_user.user)
        response = api_user.client().get(f"/api/conversations/{conversation.pk}/messages/?leaf=x")
        assert (response.status_code, response.json()["field"]) == (400, "leaf")


@pytest.mark.django_db
def test_conversations_are_searched_by_title_and_text(api_user, make_api_user):
    client = api_user.client()
    by_title = ConversationFactory(owner=api_user.user, title="Quarterly Plans")
    by_text = ConversationFactory(owner=api_user.user, title="other")
    Message.objects.create(conversation=by_text, role="user", content="what about the PLANS for june?")
    ConversationFactory(owner=api_user.user, title="nothing here")
    ConversationFactory(owner=make_api_user().user, title="plans of someone else")

    found = client.get("/api/conversations/?search=plans").json()["results"]

    assert sorted(c["id"] for c in found) == sorted([by_title.pk, by_text.pk])
    assert len(client.get("/api/conversations/").json()["results"]) == 3


@pytest.mark.django_db
def test_a_queued_job_tells_its_place_in_its_models_queue(api_user):
    conversation = ConversationFactory(owner=api_user.user)

    def queued_job(model="spare", priority=5):
        reply = Message.objects.create(conversation=conversation, role="assistant", status="queued")
        return InferenceJob.objects.create(
            message=reply, model=model, queue=f"llm.{model}", priority=priority
        )

    def place(job):
        return api_user.client().get(f"/api/jobs/{job.pk}/").json()["queue_position"]

    first, second = queued_job(), queued_job()
    queued_job(model="echo")  # another model's queue
    assert (place(first), place(second)) == (1, 2)
    urgent = queued_job(priority=9)
    assert (place(urgent), place(first), place(second)) == (1, 2, 3)
    InferenceJob.objects.filter(pk=first.pk).update(state="running", started_at=timezone.now())
    assert (place(first), place(urgent), place(second)) == (None, 1, 2)


@pytest.mark.django_db
def test_models_say_how_many_workers_serve_them(api_user, settings):
    import redis

    client = redis.Redis.from_url(settings.REDIS_URL)
    client.delete(heartbeat_key("spare"))
    client.zadd(heartbeat_key("spare"), {"spare-0@here": timezone.now().timestamp()})
    client.zadd(heartbeat_key("spare"), {"spare-1@gone": timezone.now().timestamp() - 3600})
    try:
        models = {m["name"]: m for m in api_user.client().get("/api/models/").json()}
    finally:
        client.delete(heartbeat_key("spare"))
        client.close()

    assert models["spare"]["live_workers"] == 1
    assert models["tiny"]["live_workers"] == 0
    assert models["spare"]["queue"] == "llm.spare"  # the fields it had stay


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_the_model_is_given_the_branch_of_its_reply(echo_worker, api_user):
    """Through a real worker: after an edit, an answer on the first branch is generated from
    that branch alone, not from everything written before it."""
    client = api_user.client()
    conversation = ConversationFactory(owner=api_user.user)

    def answered(posted):
        reply_id = posted["assistant_message"]["id"]
        return wait_for(lambda: Message.objects.filter(pk=reply_id, status="completed").first())

    first = answered(_post(client, conversation.pk, "first question"))
    answered(_post(client, conversation.pk, "first question, edited", parent=None))
    follow_up = _post(client, conversation.pk, "and then?", parent=first.pk)
    reply = answered(follow_up)

    branch = [
        ChatMessage(role="user", content="first question"),
        ChatMessage(role="assistant", content=first.content),
        ChatMessage(role="user", content="and then?"),
    ]
    assert reply.content == "".join(simulated_tokens(branch, 32))
    regenerated = client.post(
        f"/api/conversations/{conversation.pk}/messages/{reply.pk}/regenerate/", format="json"
    ).json()
    assert answered(regenerated).content == reply.content  # same branch, same (simulated) answer
