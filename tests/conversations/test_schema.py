"""The OpenAPI schema of the REST API: it generates cleanly, names each body apart,
documents pages, errors and the API key, and real responses match it."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from rest_framework.test import APIClient

from conversations import apis
from tests.factories import ConversationFactory

CONVERSATIONS = "/api/conversations/"
CONVERSATION = "/api/conversations/{conversation_id}/"
MESSAGES = "/api/conversations/{conversation_id}/messages/"
JOB = "/api/jobs/{job_id}/"
CANCEL = "/api/jobs/{job_id}/cancel/"
MODELS = "/api/models/"


def test_the_schema_generates_valid_without_a_warning(tmp_path):
    # Raises on any warning (a name collision, an unknown authenticator, a
    # body it cannot resolve) and on a schema invalid against OpenAPI 3.1.
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "schema.yaml"))


def component(openapi, ref):
    return openapi.document["components"]["schemas"][ref.removeprefix("#/components/schemas/")]


def test_each_request_body_is_documented_with_its_own_fields(openapi):
    bodies = {
        ("post", CONVERSATIONS): set(apis.ConversationListCreateApi.InputSerializer().fields),
        ("patch", CONVERSATION): set(apis.ConversationDetailApi.InputSerializer().fields),
        ("post", MESSAGES): set(apis.MessageListCreateApi.InputSerializer().fields),
    }
    documented = {}
    for path, operations in openapi.document["paths"].items():
        for method, operation in operations.items():
            if path.startswith("/api/") and "requestBody" in operation:
                content = operation["requestBody"]["content"]
                documented[method, path] = {media["schema"]["$ref"] for media in content.values()}
    assert set(documented) == set(bodies), "an operation with a body is missing from this test"
    for key, fields in bodies.items():
        (ref,) = documented[key]  # one component for all its media types
        assert set(component(openapi, ref)["properties"]) == fields, key
    refs = [next(iter(refs)) for refs in documented.values()]
    assert len(set(refs)) == len(refs)
    assert component(openapi, documented["post", MESSAGES].pop())["required"] == ["content"]


@pytest.mark.parametrize(
    ("path", "item"), [(CONVERSATIONS, "ConversationOutput"), (MESSAGES, "MessageOutput")]
)
def test_lists_are_documented_as_pages_with_their_query_parameters(openapi, path, item):
    operation = openapi.operation("get", path)
    assert {p["name"] for p in operation["parameters"] if p["in"] == "query"} == {"page", "page_size"}
    page = component(openapi, operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"])
    assert set(page["properties"]) == {"count", "next", "previous", "results"}
    assert page["properties"]["results"]["items"]["$ref"] == f"#/components/schemas/{item}"
    assert page["properties"]["next"]["type"] == ["string", "null"]


def test_the_api_key_is_a_bearer_scheme_offered_beside_the_session(openapi):
    schemes = openapi.document["components"]["securitySchemes"]
    assert schemes["bearerAuth"]["type"] == "http"
    assert schemes["bearerAuth"]["scheme"] == "bearer"
    assert "llm-" in schemes["bearerAuth"]["description"]
    for path, operations in openapi.document["paths"].items():
        if path.startswith("/api/"):
            for operation in operations.values():
                assert operation["security"] == [{"bearerAuth": []}, {"cookieAuth": []}], path


def test_errors_202_and_its_location_are_documented(openapi):
    post = openapi.operation("post", MESSAGES)["responses"]
    assert set(post) == {"202", "400", "401", "404", "429", "503"}
    assert post["202"]["headers"]["Location"]["required"]
    assert post["503"]["headers"]["Retry-After"]["required"]
    assert post["400"]["content"]["application/json"]["schema"]["$ref"] == "#/components/schemas/Error"
    assert set(openapi.operation("post", CANCEL)["responses"]) == {"202", "401", "404", "409"}
    error = openapi.document["components"]["schemas"]["Error"]
    assert set(error["properties"]) == {"detail", "code", "field", "errors"}


def test_the_docs_page_is_served(client):
    assert client.get("/api/docs/").status_code == 200


@pytest.mark.django_db
def test_conversation_responses_match_the_schema(api_user, openapi):
    client = api_user.client()
    ConversationFactory(owner=api_user.user)
    created = openapi.check(client.post(CONVERSATIONS, {"title": "schema"}), "post", CONVERSATIONS, 201)
    url = f"/api/conversations/{created['id']}/"

    first = openapi.check(client.get(CONVERSATIONS, {"page_size": 1}), "get", CONVERSATIONS, 200)
    assert first["next"] and first["previous"] is None
    last = openapi.check(client.get(CONVERSATIONS, {"page_size": 1, "page": 2}), "get", CONVERSATIONS, 200)
    assert last["previous"] and last["next"] is None
    openapi.check(client.get(url), "get", CONVERSATION, 200)
    openapi.check(client.patch(url, {"title": "renamed"}), "patch", CONVERSATION, 200)
    openapi.check(client.delete(url), "delete", CONVERSATION, 204)
    openapi.check(client.get(MODELS), "get", MODELS, 200)


@pytest.mark.django_db
def test_message_and_job_responses_match_the_schema(api_user, openapi):
    client = api_user.client()
    # No worker serves "spare": the job stays queued.
    conversation = ConversationFactory(owner=api_user.user, model="spare")
    messages = f"/api/conversations/{conversation.pk}/messages/"

    posted = client.post(messages, {"content": "hi", "max_tokens": 8, "stop": ["###"], "seed": 1})
    job = openapi.check(posted, "post", MESSAGES, 202)["job"]
    assert posted["Location"] == f"/api/jobs/{job['id']}/"
    page = openapi.check(client.get(messages), "get", MESSAGES, 200)
    assert [m["role"] for m in page["results"]] == ["user", "assistant"]
    openapi.check(client.get(posted["Location"]), "get", JOB, 200)
    cancel = f"/api/jobs/{job['id']}/cancel/"
    assert openapi.check(client.post(cancel), "post", CANCEL, 202)["state"] == "cancelled"
    assert openapi.check(client.post(cancel), "post", CANCEL, 409)["code"] == "job_finished"


@pytest.mark.django_db
def test_error_responses_match_the_schema(api_user, make_api_user, openapi):
    client = api_user.client()
    conversation = ConversationFactory(owner=api_user.user)
    messages = f"/api/conversations/{conversation.pk}/messages/"

    invalid = openapi.check(client.post(messages, {"content": "hi", "temperature": 5}), "post", MESSAGES, 400)
    assert invalid["field"] == "temperature" and "temperature" in invalid["errors"]
    unknown = openapi.check(client.post(CONVERSATIONS, {"model": "nope"}), "post", CONVERSATIONS, 400)
    assert unknown["field"] == "model"
    openapi.check(
        client.patch(f"/api/conversations/{conversation.pk}/", {"title": "x" * 201}),
        "patch",
        CONVERSATION,
        400,
    )

    others = ConversationFactory(owner=make_api_user().user)
    openapi.check(client.get(f"/api/conversations/{others.pk}/"), "get", CONVERSATION, 404)
    openapi.check(
        client.post(f"/api/conversations/{others.pk}/messages/", {"content": "hi"}), "post", MESSAGES, 404
    )
    openapi.check(client.get(messages, {"page": 9}), "get", MESSAGES, 404)
    openapi.check(client.get("/api/jobs/999999/"), "get", JOB, 404)
    openapi.check(client.post("/api/jobs/999999/cancel/"), "post", CANCEL, 404)

    anonymous = APIClient()
    openapi.check(anonymous.get(CONVERSATIONS), "get", CONVERSATIONS, 401)
    anonymous.credentials(HTTP_AUTHORIZATION="Bearer llm-not-a-key")
    openapi.check(anonymous.post(messages, {"content": "hi"}), "post", MESSAGES, 401)
