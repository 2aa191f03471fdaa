"""The context-window budget of the vLLM engine, tested without vLLM.

``fit_context_window`` is pure: it takes a token counter. Here the counter is
a fake "chat template" of 4 tokens per message plus one per word, and 2 for
the generation prompt, so every expected number can be worked out by hand.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from inference.engines.base import EngineError, PromptTooLong
from inference.engines.vllm_engine import fit_context_window
from inference.requests import ChatMessage

# No database, no Django settings needed by anything here.


def count(messages: Sequence[ChatMessage]) -> int:
    return 2 + sum(4 + len(m.content.split()) for m in messages)


def words(n: int) -> str:
    return " ".join(["w"] * n)


def sys_(text: str) -> ChatMessage:
    return ChatMessage("system", text)


def user(text: str) -> ChatMessage:
    return ChatMessage("user", text)


def bot(text: str) -> ChatMessage:
    return ChatMessage("assistant", text)


def test_fits_unchanged() -> None:
    msgs = (sys_("be brief"), user("hi there"), bot("hello"), user("how are you"))
    fit = fit_context_window(msgs, max_tokens=10, max_model_len=100, count_tokens=count)
    assert fit.messages == msgs
    assert fit.dropped == 0
    assert fit.prompt_tokens == count(msgs) == 2 + 6 + 6 + 5 + 7


def test_exact_fit_is_allowed() -> None:
    msgs = (user(words(10)),)  # 2 + 4 + 10 = 16 tokens
    fit = fit_context_window(msgs, max_tokens=4, max_model_len=20, count_tokens=count)
    assert fit.prompt_tokens == 16 and fit.dropped == 0


def test_drops_oldest_turns_keeps_system_and_newest() -> None:
    msgs = (
        sys_(words(6)),  # 10
        user(words(16)),  # 20  (turn 1)
        bot(words(16)),  # 20
        user(words(16)),  # 20  (turn 2)
        bot(words(16)),  # 20
        user(words(6)),  # 10  newest
    )
    # Full: 2 + 10 + 80 + 10 = 102. Budget 100 - 30 = 70.
    # Dropping turn 1 (user+assistant) gives 62: fits; dropping less is impossible
    # because a kept history must start at a user message.
    fit = fit_context_window(msgs, max_tokens=30, max_model_len=100, count_tokens=count)
    assert fit.messages == (msgs[0], msgs[3], msgs[4], msgs[5])
    assert fit.dropped == 2
    assert fit.prompt_tokens == 62


def test_drops_everything_but_system_and_newest_when_needed() -> None:
    msgs = (sys_(words(6)), user(words(16)), bot(words(16)), user(words(6)))
    # Minimal prompt: 2 + 10 + 10 = 22; budget 30 - 5 = 25.
    fit = fit_context_window(msgs, max_tokens=5, max_model_len=30, count_tokens=count)
    assert fit.messages == (msgs[0], msgs[3])
    assert fit.dropped == 2
    assert fit.prompt_tokens == 22


def test_smallest_cut_found_among_many_turns() -> None:
    msgs: list[ChatMessage] = [sys_("rules")]
    for _ in range(50):
        msgs += [user(words(6)), bot(words(6))]  # 10 + 10 tokens per turn
    msgs.append(user("last"))
    # System 5, newest 5, generation prompt 2 = 12 + 20 per kept turn.
    # Budget 200 - 48 = 152 -> at most 7 turns (152 >= 12 + 140).
    fit = fit_context_window(msgs, max_tokens=48, max_model_len=200, count_tokens=count)
    assert fit.prompt_tokens == 152
    assert fit.dropped == 86  # 43 turns of 2 messages
    assert fit.messages[0] == msgs[0] and fit.messages[-1] == msgs[-1]
    assert fit.messages[1].role == "user"


def test_history_starting_with_assistant_is_kept_whole_when_it_fits() -> None:
    msgs = (bot("welcome"), user("hi"))
    fit = fit_context_window(msgs, max_tokens=1, max_model_len=100, count_tokens=count)
    assert fit.messages == msgs


def test_history_is_never_left_starting_with_assistant() -> None:
    msgs = (bot(words(30)), user(words(5)), bot(words(5)), user("q"))
    # Full 2+34+9+9+5 = 59; budget 40 - 10 = 30. Dropping the greeting: 25.
    fit = fit_context_window(msgs, max_tokens=10, max_model_len=40, count_tokens=count)
    assert fit.messages == msgs[1:]
    assert fit.dropped == 1


def test_system_messages_anywhere_are_kept() -> None:
    msgs = (user(words(20)), sys_("mid"), bot(words(20)), user("q"))
    fit = fit_context_window(msgs, max_tokens=10, max_model_len=30, count_tokens=count)
    assert fit.messages == (msgs[1], msgs[3])


def test_newest_message_alone_too_long_raises_with_numbers() -> None:
    msgs = (sys_("be brief"), user(words(60)), bot("ok"), user(words(5000)))
    with pytest.raises(PromptTooLong) as info:
        fit_context_window(msgs, max_tokens=256, max_model_len=2048, count_tokens=count)
    message = str(info.value)
    # 2 + (4 + 2) + (4 + 5000) = 5012
    assert "prompt is 5012 tokens" in message
    assert "max_tokens=256" in message
    assert "context window of 2048 tokens" in message
    assert info.value.permanent
    assert isinstance(info.value, EngineError)


def test_max_tokens_alone_can_exceed_the_window() -> None:
    with pytest.raises(PromptTooLong, match="max_tokens=4096"):
        fit_context_window((user("hi"),), max_tokens=4096, max_model_len=2048, count_tokens=count)


def test_single_message_that_fits() -> None:
    fit = fit_context_window((user("hi"),), max_tokens=1, max_model_len=8, count_tokens=count)
    assert fit.prompt_tokens == 7 and fit.dropped == 0


def test_renders_few_times() -> None:
    calls = 0

    def counting(messages: Sequence[ChatMessage]) -> int:
        nonlocal calls
        calls += 1
        return count(messages)

    msgs: list[ChatMessage] = []
    for _ in range(500):
        msgs += [user(words(6)), bot(words(6))]
    msgs.append(user("last"))
    fit_context_window(msgs, max_tokens=10, max_model_len=300, count_tokens=counting)
    assert calls <= 2 + 11  # full, minimal, then a binary search over ~500 cuts


@pytest.mark.parametrize("bad", [{"messages": ()}, {"max_tokens": 0}])
def test_preconditions(bad: dict[str, object]) -> None:
    kwargs: dict[str, object] = {
        "messages": (user("hi"),),
        "max_tokens": 1,
        "max_model_len": 10,
        "count_tokens": count,
    }
    kwargs.update(bad)
    with pytest.raises(ValueError):
        fit_context_window(**kwargs)  # type: ignore[arg-type]
