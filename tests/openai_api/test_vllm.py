"""The OpenAI API in front of the real engine: vLLM on the tiny local checkpoint."""

from __future__ import annotations

import pytest

from conversations.models import InferenceJob

pytestmark = [pytest.mark.vllm, pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def test_vllm_answers_through_the_openai_api_streamed_and_not(tiny_worker, client):
    messages = [
        {"role": "system", "content": "You are a tiny model."},
        {"role": "user", "content": "Hello, tiny model!"},
    ]
    response = client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=24, extra_body={"ignore_eos": True}
    )
    assert response.usage.completion_tokens == 24
    assert response.usage.prompt_tokens > 10  # the chat template wraps both messages
    assert response.choices[0].finish_reason == "length"
    job = InferenceJob.objects.select_related("message").get(pk=int(response.id.removeprefix("chatcmpl-")))
    assert job.message.content == response.choices[0].message.content

    stream = client.chat.completions.create(
        model="tiny",
        messages=messages,
        max_completion_tokens=16,
        extra_body={"ignore_eos": True},
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage.completion_tokens == 16
    job = InferenceJob.objects.select_related("message").get(pk=int(chunks[0].id.removeprefix("chatcmpl-")))
    assert job.message.content == text and text
