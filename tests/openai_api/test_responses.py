"""The streamed chunks' fast encoding gives the same bytes as encoding whole chunks."""

from __future__ import annotations

import json

import pytest

from openai_api.responses import Completion, sse


@pytest.mark.parametrize("text", ["hello", 'a "quote"\nand a newline', "ünïcode \u2028 😀", "", "\x00\\"])
@pytest.mark.parametrize("role", [True, False])
def test_a_content_chunk_is_the_chunk_encoded_whole(text, role):
    completion = Completion(id="chatcmpl-7", created=1_700_000_000, model='odd "model" name')
    delta = {"role": "assistant", "content": text} if role else {"content": text}

    fast = completion.content_chunk(text, role=role)

    assert fast == sse(completion.chunk(delta=delta))
    assert json.loads(fast.removeprefix(b"data: "))["choices"][0]["delta"] == delta
