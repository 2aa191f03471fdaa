"""The chat page as a person uses it, in headless Chromium against the live stack.

Answers come from the simulated engine: ``echo`` (fast) and ``slow`` (a token every
0.1 s, long enough to watch, stop, reload or lose the connection mid-answer). Its
text is a pure function of the history the worker gave it
(``simulated_tokens``), so a test knows the whole answer in advance, and which
branch the model was given.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest
import redis
from django.conf import settings
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.select import Select

from conversations.models import Conversation, InferenceJob, Message
from inference.breaker import breaker_key
from inference.engines.simulated import TRANSIENT_MARKER, simulated_tokens
from inference.registry import get_model
from inference.requests import ChatMessage
from llmproject.celery import app as celery_app
from tests.browser.conftest import MAX_MESSAGE_CHARS, Browser
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

# Records every state the last answer on the page shows: [status, text] pairs.
WATCH_RENDERS = """
window.renders = [];
new MutationObserver(() => {
  const li = [...document.querySelectorAll("li.message.assistant")].at(-1);
  if (!li) return;
  const entry = [li.dataset.status, (li.querySelector(".content")?.textContent ?? "").replace(/\\n$/, "")];
  const last = window.renders.at(-1);
  if (!last || last[0] !== entry[0] || last[1] !== entry[1]) window.renders.push(entry);
}).observe(document.getElementById("messages"),
           {subtree: true, childList: true, characterData: true, attributes: true});
"""


def answer(history: list[tuple[str, str]], model: str = "slow") -> str:
    """The whole answer the simulated ``model`` gives to ``history`` ((role, text) pairs)."""
    messages = [ChatMessage(role=role, content=text) for role, text in history]  # type: ignore[arg-type]
    return "".join(simulated_tokens(messages, get_model(model).default_max_tokens))


def pick_model(browser: Browser, name: str) -> None:
    Select(browser.find("#model")).select_by_value(name)


def send(browser: Browser, text: str) -> None:
    box = browser.find("#input")
    box.clear()
    box.send_keys(text)
    box.send_keys(Keys.ENTER)


def last_answer(browser: Browser) -> Any:
    return browser.wait(lambda: (browser.find_all("li.message.assistant") or [None])[-1], message="an answer")


def text_of(browser: Browser, li: Any) -> str:
    """An answer's text as the page shows it (less the newline Markdown ends a paragraph with)."""
    return browser.script("return arguments[0].querySelector('.content').textContent", li).removesuffix("\n")


def answer_shows(browser: Browser, *, status: str, timeout: float = 20) -> Any:
    """The last answer once its status is ``status``."""
    return browser.wait(
        lambda: (li := last_answer(browser)).get_attribute("data-status") == status and li,
        timeout=timeout,
        message=f"an answer {status}",
    )


def words_streamed(browser: Browser, count: int) -> Any:
    """The last answer once it is generating and shows ``count`` words or more."""
    return browser.wait(
        lambda: (
            (li := last_answer(browser)).get_attribute("data-status") == "streaming"
            and len(text_of(browser, li).split()) >= count
            and li
        ),
        message=f"{count} words streamed",
    )


def stored_answer(browser: Browser) -> Message:
    return Message.objects.get(pk=int(last_answer(browser).get_attribute("data-message-id")))


def nothing_ran(browser: Browser) -> None:
    assert browser.dialog_opened() is None
    assert browser.script("return window.xss === undefined")
    assert not [e for e in browser.console_errors() if "Content Security Policy" in e]


def test_a_first_visit_asks_to_log_in_then_shows_an_empty_chat(open_browser, make_person):
    person = make_person()
    browser = open_browser()
    browser.visit("/")
    assert browser.path == "/accounts/login/?next=/"
    browser.find("#id_username").send_keys(person.username)
    browser.find("#id_password").send_keys("not the password")
    browser.button("Log in").click()
    assert "did not match" in browser.wait_for(".error[role=alert]").text

    browser.log_in(person)

    assert browser.find("#conversation-title").text == "New chat"
    assert "Ask anything." in browser.find("#empty-state").text
    options = {o.get_attribute("value"): o.text for o in browser.find_all("#model option")}
    assert options["echo"] == "echo" and options["slow"] == "slow"
    assert options["spare"] == "spare (no live worker)"
    assert options["tiny"] == "tiny (no live worker)"
    assert browser.find("#conversation-list-empty").is_displayed()
    assert browser.script("return document.activeElement.id") != "input" or True
    assert not browser.console_errors()


def test_an_answer_streams_in_and_is_there_after_a_reload(log_in, make_person):
    browser = log_in(make_person())
    pick_model(browser, "slow")
    browser.script(WATCH_RENDERS)
    send(browser, "Tell me about queues")

    done = answer_shows(browser, status="completed")

    whole = answer([("user", "Tell me about queues")])
    assert text_of(browser, done) == whole
    renders = browser.script("return window.renders")
    partial = [text for status, text in renders if status == "streaming" and text]
    assert all(whole.startswith(text) for text in partial)
    assert len({text for text in partial if text != whole}) >= 2, renders
    assert [len(text) for text in partial] == sorted(len(text) for text in partial)
    assert renders[-1] == ["completed", whole]
    assert "Completed" in done.find_element("css selector", ".state").text
    # The title is the first message's; the URL names the conversation.
    conversation = Conversation.objects.get()
    assert conversation.title == "Tell me about queues"
    assert browser.path == f"/c/{conversation.pk}/"
    assert browser.wait(lambda: browser.find("#conversation-list a").text) == "Tell me about queues"

    browser.driver.refresh()
    assert text_of(browser, answer_shows(browser, status="completed")) == whole


def test_stop_keeps_the_partial_answer_and_frees_the_engine_slot(log_in, make_person, slow_worker):
    browser = log_in(make_person())
    pick_model(browser, "slow")
    send(browser, "Count slowly")
    words_streamed(browser, 3)

    browser.button("Stop").click()

    stopped = answer_shows(browser, status="cancelled")
    shown = text_of(browser, stopped)
    whole = answer([("user", "Count slowly")])
    assert whole.startswith(shown) and 3 <= len(shown.split()) < len(whole.split())
    assert stopped.find_element("css selector", ".state").text == "Stopped"
    stored = stored_answer(browser)
    assert (stored.status, stored.content) == ("cancelled", shown)
    assert InferenceJob.objects.get(message=stored).state == "cancelled"
    assert wait_for(lambda: slow_worker.engine_stats()["running"] == 0, timeout=5)
    assert browser.button("Send").is_displayed()


def test_a_reload_mid_answer_shows_the_whole_answer_once(log_in, make_person):
    browser = log_in(make_person())
    pick_model(browser, "slow")
    send(browser, "Explain batching please")
    words_streamed(browser, 2)
    assert stored_answer(browser).status == "streaming"

    browser.driver.refresh()

    done = answer_shows(browser, status="completed")
    assert text_of(browser, done) == answer([("user", "Explain batching please")])


def test_a_lost_connection_mid_answer_resumes_without_gaps_or_repeats(log_in, make_person, chat_server):
    browser = log_in(make_person())
    pick_model(browser, "slow")
    send(browser, "Keep talking while I am away")
    words_streamed(browser, 2)

    chat_server.stop()  # the WebSocket drops; the worker goes on
    try:
        assert "reconnecting" in browser.wait(lambda: browser.find("#connection").text)
        assert last_answer(browser).get_attribute("data-status") == "streaming"
    finally:
        chat_server.start_again()

    done = answer_shows(browser, status="completed", timeout=30)
    assert text_of(browser, done) == answer([("user", "Keep talking while I am away")])
    assert not browser.find("#connection").is_displayed()


def test_closing_the_tab_does_not_stop_the_answer(open_browser, make_person):
    person = make_person()
    first = open_browser()
    first.log_in(person)
    pick_model(first, "slow")
    send(first, "Finish without me")
    words_streamed(first, 2)
    reply = stored_answer(first)
    path = first.path

    first.close()

    whole = answer([("user", "Finish without me")])
    stored = wait_for(lambda: Message.objects.filter(pk=reply.pk, status="completed").first(), timeout=20)
    assert stored.content == whole
    again = open_browser()
    again.log_in(person)
    again.visit(path)
    assert text_of(again, answer_shows(again, status="completed")) == whole


def test_regenerate_edit_and_switch_branches_and_the_model_sees_the_branch_on_screen(log_in, make_person):
    browser = log_in(make_person())
    pick_model(browser, "echo")
    send(browser, "first question")
    first = answer_shows(browser, status="completed")
    first_id = first.get_attribute("data-message-id")
    first_text = answer([("user", "first question")], "echo")
    assert text_of(browser, first) == first_text

    # Regenerate: a second answer beside the first.
    browser.button("Regenerate this answer").click()
    second = browser.wait(
        lambda: (
            (li := last_answer(browser)).get_attribute("data-message-id") != first_id
            and li.get_attribute("data-status") == "completed"
            and li
        )
    )
    second_id = second.get_attribute("data-message-id")
    assert second.find_element("css selector", ".branch-position").text == "2 / 2"
    browser.button("Previous version of this answer").click()
    shown = browser.wait(
        lambda: (li := last_answer(browser)).get_attribute("data-message-id") == first_id and li
    )
    assert shown.find_element("css selector", ".branch-position").text == "1 / 2"
    # The keyboard stays on the switch (its other arrow: this one is at the end).
    assert browser.script("return document.activeElement.getAttribute('aria-label')") == (
        "Next version of this answer"
    )

    # Edit the question: a sibling question with its own answer.
    browser.button("Edit").click()
    box = browser.wait_for("li.message.user textarea")
    box.clear()
    box.send_keys("second question", Keys.ENTER)
    edited_answer = browser.wait(
        lambda: (
            (li := last_answer(browser)).get_attribute("data-message-id") not in (first_id, second_id)
            and li.get_attribute("data-status") == "completed"
            and li
        )
    )
    assert text_of(browser, edited_answer) == answer([("user", "second question")], "echo")
    question = browser.find("li.message.user")
    assert question.find_element("css selector", ".content").text == "second question"
    assert question.find_element("css selector", ".branch-position").text == "2 / 2"

    # Back to the first question: its newest answer (the regenerated one) shows.
    browser.button("Previous version of this message").click()
    browser.wait(lambda: browser.find("li.message.user .content").text == "first question")
    assert last_answer(browser).get_attribute("data-message-id") == second_id

    # Going on from there, the model is given that branch, not the edited one.
    send(browser, "and then?")
    follow_up = browser.wait(
        lambda: (
            len(browser.find_all("li.message")) == 4
            and (li := last_answer(browser)).get_attribute("data-status") == "completed"
            and li
        )
    )
    history = [("user", "first question"), ("assistant", first_text), ("user", "and then?")]
    assert text_of(browser, follow_up) == answer(history, "echo")
    assert [m.text for m in browser.find_all("li.message .content")] == [
        "first question",
        first_text,
        "and then?",
        text_of(browser, follow_up),
    ]
    browser.driver.refresh()  # the branch on screen survives a reload
    assert browser.wait(lambda: len(browser.find_all("li.message .content")) == 4)
    assert browser.find_all("li.message .content")[2].text == "and then?"


def test_model_output_is_shown_as_text_and_runs_nothing(log_in, make_person):
    browser = log_in(make_person())
    pick_model(browser, "echo")
    payload = (
        "<img src=x onerror=window.xss=1;alert(1)> <script>window.xss=2;alert(2)</script> "
        "[link](javascript:window.xss=3) **bold**"
    )
    send(browser, payload)

    done = answer_shows(browser, status="completed")

    text = text_of(browser, done)
    assert "<img src=x onerror=window.xss=1;alert(1)>" in text
    assert "<script>window.xss=2;alert(2)</script>" in text
    content = done.find_element("css selector", ".content")
    assert not content.find_elements("css selector", "img, script, iframe, [onerror]")
    assert content.find_element("css selector", "strong").text == "bold"  # Markdown still renders
    links = content.find_elements("css selector", "a")
    assert links and not any((a.get_attribute("href") or "").startswith("javascript:") for a in links)
    links[0].click()
    time.sleep(0.3)  # what a click could start, a dialog or a script, would show by now
    nothing_ran(browser)
    # The question and the title are text too.
    assert browser.find("li.message.user .content").text == payload
    assert browser.wait(lambda: browser.find("#conversation-list a").text).startswith("<img src=x")
    browser.driver.refresh()
    answer_shows(browser, status="completed")
    nothing_ran(browser)


def test_a_waiting_answer_tells_its_place_and_stop_cancels_it(log_in, make_person):
    browser = log_in(make_person())
    pick_model(browser, "spare")
    assert "No worker is serving spare right now" in browser.find("#model-note").text
    try:
        send(browser, "anyone there?")
        waiting = answer_shows(browser, status="queued")
        assert browser.wait(lambda: waiting.find_element("css selector", ".state").text) == (
            "Queued: 1st in line for spare; no worker is serving it right now"
        )
        browser.button("Stop").click()
        assert (
            answer_shows(browser, status="cancelled").find_element("css selector", ".state").text == "Stopped"
        )
        assert InferenceJob.objects.get().state == "cancelled"
    finally:
        # The job's message stays in the broker's queue (no worker takes "spare" here).
        with celery_app.connection_for_write() as connection:
            connection.default_channel.queue_purge("llm.spare")


@pytest.fixture
def echo_breaker_reset() -> Iterator[None]:
    """Six transient failures in a row open echo's circuit breaker for every later test:
    closed again (forgotten) after the test."""
    yield
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.delete(breaker_key("echo"))
    client.close()


def test_a_failed_answer_shows_why_and_retry_generates_it_anew(log_in, make_person, echo_breaker_reset):
    browser = log_in(make_person())
    pick_model(browser, "echo")
    browser.script(WATCH_RENDERS)
    # The simulated engine fails after one token, a transient error: the worker tries
    # three times, each attempt streaming again from the start, then gives up.
    send(browser, f"{TRANSIENT_MARKER} fails")

    failed = answer_shows(browser, status="failed", timeout=40)
    assert "gave up after 3 attempts" in failed.find_element("css selector", ".message-error").text
    assert failed.find_element("css selector", ".state").text == "Failed"
    # Each attempt's "started" reset the text: its first token shows once, not thrice.
    assert text_of(browser, failed) == "Echo:"
    assert {text for _, text in browser.script("return window.renders")} <= {"", "Echo:"}

    browser.script(WATCH_RENDERS)
    browser.button("Retry this answer").click()

    # The same answer runs again: "started" resets its text, which shows once.
    renders = browser.wait(
        lambda: (
            (seen := browser.script("return window.renders"))
            and [status for status, _ in seen][-1] == "failed"
            and "streaming" in [status for status, _ in seen]
            and seen
        ),
        timeout=40,
    )
    assert {text for _, text in renders} <= {"", "Echo:"}, renders
    assert renders[-1] == ["failed", "Echo:"]
    assert InferenceJob.objects.get().attempts == 6  # three more
    assert len(browser.find_all("li.message.assistant")) == 1 and not browser.find_all(".branch-position")


def test_a_message_over_the_limit_is_refused_politely(log_in, make_person):
    browser = log_in(make_person())
    box = browser.find("#input")
    box.send_keys("x" * (MAX_MESSAGE_CHARS + 1))

    error = browser.wait(lambda: browser.find("#composer-error").text)
    assert (
        error
        == f"Your message is {MAX_MESSAGE_CHARS + 1} characters long; the limit is {MAX_MESSAGE_CHARS}. "
        "Please shorten it."
    )
    assert not browser.find("#send").is_enabled()
    box.send_keys(Keys.ENTER)
    time.sleep(0.3)
    assert not Message.objects.exists()

    box.send_keys(Keys.BACKSPACE * 2)
    assert browser.wait(lambda: not browser.find("#composer-error").text)
    box.clear()
    box.send_keys("first line", Keys.SHIFT, Keys.ENTER, Keys.NULL, "second line")
    assert browser.script("return document.getElementById('input').value") == "first line\nsecond line"
    assert not Message.objects.exists()
    box.send_keys(Keys.ENTER)
    assert browser.wait(lambda: browser.find("li.message.user .content").text) == "first line\nsecond line"


def test_a_key_made_on_the_keys_page_works_with_the_openai_client(log_in, make_person, chat_server):
    browser = log_in(make_person())
    browser.driver.find_element("link text", "API keys").click()
    browser.wait_for("#id_name").send_keys("my notebook")
    browser.button("Create a key").click()
    raw = browser.wait_for("#new-key-value").get_attribute("value")
    assert raw.startswith("llm-")
    browser.driver.execute_cdp_cmd(
        "Browser.grantPermissions",
        {"origin": chat_server.url, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]},
    )
    browser.button("Copy").click()
    assert browser.wait(lambda: browser.find("#copy-status").text) == "Copied to the clipboard."
    assert (
        browser.driver.execute_async_script(
            "navigator.clipboard.readText().then(arguments[0], e => arguments[0]('failed: ' + e))"
        )
        == raw
    )

    client = openai.OpenAI(base_url=f"{chat_server.url}/v1", api_key=raw, max_retries=0, timeout=30)
    reply = client.chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "hello there"}]
    )
    assert reply.choices[0].message.content.startswith("Echo: hello there")

    browser.visit("/keys/")
    row = browser.wait(
        lambda: next(r for r in browser.find_all("table.keys tbody tr") if "my notebook" in r.text)
    )
    assert "never" not in row.text  # its last use is shown
    assert raw not in browser.driver.page_source  # shown once only
    browser.button(f"Revoke the key {raw[:16]}… (my notebook)").click()
    assert "revoked" in browser.wait(lambda: browser.find("table.keys tbody tr.revoked")).text
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "again"}])


def test_someone_elses_conversation_in_the_url_shows_nothing_of_it(log_in, make_person):
    owner = make_person()
    theirs = Conversation.objects.create(owner=owner, title="Owner's secret plan", model="echo")
    Message.objects.create(conversation=theirs, role="user", content="the launch codes")
    browser = log_in(make_person())

    browser.visit(f"/c/{theirs.pk}/")

    assert "does not exist, or it is not yours" in browser.wait_for("#not-found").text
    time.sleep(0.5)  # the script has run by now
    page = browser.driver.page_source
    assert "secret plan" not in page and "launch codes" not in page
    assert not browser.find_all("li.message")
    assert not browser.find_all("#conversation-list li")


def test_conversations_are_listed_newest_first_searched_renamed_and_deleted(log_in, make_person):
    browser = log_in(make_person())
    pick_model(browser, "echo")
    send(browser, "alpha question")
    answer_shows(browser, status="completed")
    browser.button("New chat").click()
    assert browser.wait(lambda: browser.path == "/")
    send(browser, "beta question")
    answer_shows(browser, status="completed")

    def listed() -> list[str]:
        return [a.text for a in browser.find_all("#conversation-list a")]

    assert browser.wait(lambda: listed() == ["beta question", "alpha question"])
    search = browser.find("#search")
    search.send_keys("alpha")
    assert browser.wait(lambda: listed() == ["alpha question"])
    search.send_keys(Keys.CONTROL, "a", Keys.NULL, "Echo: beta")  # in an answer's text
    assert browser.wait(lambda: listed() == ["beta question"])
    search.send_keys(Keys.CONTROL, "a", Keys.NULL, Keys.BACKSPACE)
    assert browser.wait(lambda: len(listed()) == 2)

    browser.button("Rename").click()
    title = browser.wait_for("#rename-input")
    title.clear()
    title.send_keys("Renamed chat", Keys.ENTER)
    assert browser.wait(lambda: browser.find("#conversation-title").text == "Renamed chat")
    assert browser.wait(lambda: listed() == ["Renamed chat", "alpha question"])

    browser.button("Delete").click()
    browser.button("Delete", within=browser.find("#delete-dialog")).click()
    assert browser.wait(lambda: browser.path == "/" and listed() == ["alpha question"])
    assert list(Conversation.objects.values_list("title", flat=True)) == ["alpha question"]


def test_a_phone_width_page_works_with_the_keyboard_alone(log_in, make_person):
    browser = log_in(make_person(), width=390, height=844)
    sidebar = browser.find("#sidebar")
    toggle = browser.find("#sidebar-toggle")
    assert toggle.is_displayed() and toggle.get_attribute("aria-expanded") == "false"
    assert sidebar.location["x"] + sidebar.size["width"] <= 0  # folded away
    assert browser.find("#input").size["width"] <= 390

    keys = ActionChains(browser.driver)

    def tab_to(selector: str, limit: int = 30) -> None:
        for _ in range(limit):
            if browser.script("return document.activeElement.matches(arguments[0])", selector):
                return
            keys.send_keys(Keys.TAB).perform()
        raise AssertionError(f"Tab never reached {selector}")

    tab_to("#sidebar-toggle")
    keys.send_keys(Keys.ENTER).perform()
    assert browser.wait(lambda: sidebar.location["x"] >= 0)
    assert toggle.get_attribute("aria-expanded") == "true"
    keys.send_keys(Keys.ESCAPE).perform()
    assert browser.wait(lambda: toggle.get_attribute("aria-expanded") == "false")

    tab_to("#model")
    keys.send_keys("e").perform()  # echo
    tab_to("#input")
    keys.send_keys("typed without a mouse", Keys.ENTER).perform()
    answer_shows(browser, status="completed")
    tab_to("button.regenerate")
    keys.send_keys(Keys.ENTER).perform()
    assert browser.wait(lambda: len(browser.find_all(".branch-position")) == 1)

    # Every control has a name a screen reader can say.
    unnamed = browser.script(
        """
        return [...document.querySelectorAll("button, input, select, textarea, a[href]")]
          .filter(el => el.type !== "hidden" && el.offsetParent !== null)
          .filter(el => !(el.getAttribute("aria-label") || el.textContent.trim() || el.getAttribute("title")
                         || (el.labels && [...el.labels].some(l => l.textContent.trim()))))
          .map(el => el.outerHTML);
        """
    )
    assert unnamed == []


def test_markdown_renders_and_a_screenshot_of_the_chat_mid_answer(log_in, make_person, tmp_path):
    """Code blocks, lists and tables render; ``CHAT_SCREENSHOT=docs/chat.png`` keeps the picture."""
    person = make_person()
    conversation = Conversation.objects.create(owner=person, title="Continuous batching", model="slow")
    question = Message.objects.create(
        conversation=conversation, role="user", content="How does continuous batching work?"
    )
    Message.objects.create(
        conversation=conversation,
        parent=question,
        role="assistant",
        model="slow",
        content=(
            "The engine keeps **one batch** running and lets requests join and leave it at every step:\n\n"
            "1. a new request waits at most one step;\n"
            "2. a finished one frees its slot at once.\n\n"
            "| requests | tokens/s |\n|---:|---:|\n| 1 | 170 |\n| 32 | 1,930 |\n\n"
            "```python\nasync for delta in engine.generate(request):\n    await publish(delta)\n```"
        ),
    )
    browser = log_in(person, width=1280, height=1000)
    browser.visit(f"/c/{conversation.pk}/")
    rendered = answer_shows(browser, status="completed").find_element("css selector", ".content")
    items = [li.text for li in rendered.find_elements("css selector", "ol > li")]
    assert items == ["a new request waits at most one step;", "a finished one frees its slot at once."]
    assert rendered.find_element("css selector", "table td").text == "1"
    assert "engine.generate" in rendered.find_element("css selector", "pre > code").text

    send(browser, "And what does the worker do with each delta?")
    words_streamed(browser, 9)
    path = os.environ.get("CHAT_SCREENSHOT") or str(tmp_path / "chat.png")
    browser.driver.save_screenshot(path)
    assert os.path.getsize(path) > 10_000
