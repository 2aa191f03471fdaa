"""The OpenAI-compatible API, driven by the official ``openai`` client against a live server.

Every request runs the platform's way (stored, queued, run by the ``echo``
worker on the simulated engine, streamed back through Redis), so answers are
checked against what the database holds and what the simulated engine
deterministically says.
"""

from __future__ import annotations

import httpx
import openai
import pytest
from asgiref.sync import sync_to_async

from conversations.models import ConversationEvent, InferenceJob, Message
from inference.engines.simulated import simulated_tokens
from inference.requests import ChatMessage

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

HISTORY = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is a queue?"},
    {"role": "assistant", "content": "A line of jobs."},
    {"role": "user", "content": "And a worker?"},
]


def expected_text(messages: list[dict[str, str]], max_tokens: int, ignore_eos: bool = False) -> str:
    chat = tuple(ChatMessage(m["role"], m["content"]) for m in messages)
    return "".join(simulated_tokens(chat, max_tokens, ignore_eos))


def job_of(completion_id: str) -> InferenceJob:
    assert completion_id.startswith("chatcmpl-")
    return InferenceJob.objects.select_related("message__conversation").get(
        pk=int(completion_id.removeprefix("chatcmpl-"))
    )


def test_models_lists_the_registry(client):
    models = client.models.list()
    assert {m.id for m in models.data} == {"echo", "slow", "spare", "tiny"}
    assert all(m.object == "model" for m in models.data)


def test_a_completion_is_the_stored_answer_with_its_usage(client, api_user):
    response = client.chat.completions.create(model="echo", messages=HISTORY, max_tokens=40)

    assert response.object == "chat.completion" and response.model == "echo"
    choice = response.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == expected_text(HISTORY, 40)
    job = job_of(response.id)
    message = job.message
    assert (job.state, message.status) == ("succeeded", "completed")
    assert message.content == choice.message.content
    assert choice.finish_reason == message.finish_reason == "stop"
    assert response.usage.prompt_tokens == message.prompt_tokens > 0
    assert response.usage.completion_tokens == message.completion_tokens > 0
    assert response.usage.total_tokens == message.prompt_tokens + message.completion_tokens


def test_the_request_is_a_conversation_of_the_keys_owner_with_its_job_and_events(client, api_user):
    response = client.chat.completions.create(model="echo", messages=HISTORY, max_tokens=8)

    conversation = job_of(response.id).message.conversation
    assert conversation.owner == api_user.user and conversation.model == "echo"
    rows = list(conversation.messages.order_by("id").values_list("role", "content", "status"))
    assert rows[:-1] == [(m["role"], m["content"], "completed") for m in HISTORY]
    assert rows[-1] == ("assistant", response.choices[0].message.content, "completed")
    kinds = list(conversation.events.order_by("id").values_list("kind", flat=True))
    assert kinds == [
        ConversationEvent.Kind.USER_QUERY_RECEIVED,
        ConversationEvent.Kind.INFERENCE_QUEUED,
        ConversationEvent.Kind.INFERENCE_STARTED,
        ConversationEvent.Kind.RESPONSE_GENERATED,
    ]


def test_a_stream_concatenates_to_the_stored_answer_and_ends_with_usage(client):
    messages = [{"role": "user", "content": "stream me a reply"}]
    stream = client.chat.completions.create(
        model="echo",
        messages=messages,
        max_tokens=30,
        extra_body={"ignore_eos": True},
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)  # the client stops at "data: [DONE]"

    content = [c for c in chunks if c.choices]
    assert content[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in content)
    assert text == expected_text(messages, 30, ignore_eos=True)
    assert content[-1].choices[0].finish_reason == "length"
    assert [c.choices[0].finish_reason for c in content[:-1]] == [None] * (len(content) - 1)
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == []
    message = job_of(chunks[0].id).message
    assert message.content == text
    assert (usage_chunk.usage.prompt_tokens, usage_chunk.usage.completion_tokens) == (
        message.prompt_tokens,
        30,
    )


def test_a_stream_without_include_usage_has_no_usage_chunk(client):
    chunks = list(
        client.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": "hi"}], max_tokens=5, stream=True
        )
    )
    assert all(c.choices for c in chunks)
    assert chunks[-1].choices[0].finish_reason is not None


def test_the_stream_is_server_sent_events_ending_with_done(openai_server, api_user):
    with httpx.stream(
        "POST",
        f"{openai_server.base_url}/chat/completions",
        headers={"Authorization": f"Bearer {api_user.key}"},
        json={"model": "echo", "messages": [{"role": "user", "content": "hi"}], "stream": True},
        timeout=30,
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_max_tokens_is_honoured(client, field):
    response = client.chat.completions.create(
        model="echo",
        messages=[{"role": "user", "content": "long one"}],
        extra_body={"ignore_eos": True},
        **{field: 57},
    )
    assert response.usage.completion_tokens == 57
    assert response.choices[0].finish_reason == "length"


def test_without_ignore_eos_the_model_stops_on_its_own(client):
    response = client.chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "short one"}], max_tokens=500
    )
    assert response.choices[0].finish_reason == "stop"
    assert 16 <= response.usage.completion_tokens <= 48


def test_stop_temperature_top_p_and_seed_are_accepted_and_stop_ends_the_text(client):
    messages = [{"role": "user", "content": "alpha beta"}]
    response = client.chat.completions.create(
        model="echo", messages=messages, stop=["beta"], temperature=0.2, top_p=0.9, seed=7, max_tokens=20
    )
    assert response.choices[0].message.content == "Echo: alpha"
    assert response.choices[0].finish_reason == "stop"
    job = job_of(response.id)
    assert (job.params["temperature"], job.params["top_p"], job.params["seed"]) == (0.2, 0.9, 7)


def test_unknown_parameters_are_ignored_and_text_parts_are_accepted(client):
    response = client.chat.completions.create(
        model="echo",
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "parts "}, {"type": "text", "text": "ok"}]}
        ],
        max_tokens=6,
        user="someone",
        extra_body={"frobnicate": True, "top_k": 3},
    )
    assert job_of(response.id).message.conversation.messages.first().content == "parts ok"


async def test_the_async_client_gets_a_completion_and_a_stream(async_client):
    messages = [{"role": "user", "content": "async please"}]
    response = await async_client.chat.completions.create(model="echo", messages=messages, max_tokens=12)
    assert response.choices[0].message.content == expected_text(messages, 12)

    stream = await async_client.chat.completions.create(
        model="echo", messages=messages, max_tokens=12, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == response.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == response.usage.completion_tokens
    stored = await sync_to_async(lambda: job_of(chunks[0].id).message.content)()
    assert stored == text


# --- errors ------------------------------------------------------------------


def test_a_bad_key_is_401(openai_server, make_client):
    with pytest.raises(openai.AuthenticationError) as caught:
        make_client(openai_server, "llm-not-a-real-key").chat.completions.create(
            model="echo", messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.status_code == 401
    assert caught.value.body["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        make_client(openai_server, "llm-not-a-real-key").models.list()


def test_a_missing_key_is_401_in_openais_shape(openai_server):
    response = httpx.post(
        f"{openai_server.base_url}/chat/completions",
        json={"model": "echo", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert response.status_code == 401
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "missing_api_key"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"temperature": 5}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"n": 2}, "n"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0.role"),
        ({"messages": [{"role": "user"}]}, "messages.0.content"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages.0.content"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": ["a", 1]}, "stop"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
        ({"stream": "maybe"}, "stream"),
        ({"seed": -1}, "seed"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 5000}, "max_tokens"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
    ],
)
def test_invalid_parameters_are_400_and_name_the_parameter(client, body, param):
    payload = {"model": "echo", "messages": [{"role": "user", "content": "hi"}], **body}
    with pytest.raises(openai.BadRequestError) as caught:
        client.post("/chat/completions", body=payload, cast_to=httpx.Response)
    assert caught.value.status_code == 400
    assert caught.value.body["param"] == param
    assert caught.value.body["type"] == "invalid_request_error"
    assert not InferenceJob.objects.exists()


def test_a_prompt_over_the_context_window_is_400_context_length_exceeded(client):
    words = " ".join(["word"] * 5000)  # echo's window is 4096 tokens
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="echo", messages=[{"role": "user", "content": words}])
    assert caught.value.body["code"] == "context_length_exceeded"
    assert "maximum context length is 4096 tokens" in caught.value.message


def test_an_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-17", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.body["code"] == "model_not_found"
    assert caught.value.body["param"] == "model"


def test_a_model_without_a_live_worker_is_503_with_retry_after(client):
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="spare", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 503
    assert caught.value.body["code"] == "no_worker"
    assert caught.value.response.headers["retry-after"]
    assert not InferenceJob.objects.exists()


def test_a_failure_during_a_stream_ends_it_with_an_error_event(client):
    from inference.engines.simulated import PERMANENT_MARKER

    stream = client.chat.completions.create(
        model="echo",
        messages=[{"role": "user", "content": f"break {PERMANENT_MARKER}"}],
        max_tokens=20,
        stream=True,
    )
    received = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            received.append(chunk)
    assert "simulated permanent engine error" in caught.value.message
    assert len(received) == 1  # the first token came before the failure
    message = Message.objects.get(role="assistant")
    assert message.status == "failed"


def test_a_failure_without_streaming_is_500_in_openais_shape(client):
    from inference.engines.simulated import PERMANENT_MARKER

    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": f"break {PERMANENT_MARKER}"}]
        )
    assert caught.value.status_code == 500
    assert caught.value.body["code"] == "generation_failed"
