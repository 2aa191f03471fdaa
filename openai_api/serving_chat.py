"""Serving a chat completion: admit it, store it, follow its answer, write it out.

A chat completion goes the platform's way: it becomes a new conversation of
the key's owner (the given messages, then a queued assistant reply with its
job), published to the model's queue on commit, run by a worker, and read
back from the conversation's Redis stream (one XREAD BLOCK per web process,
``conversations.streams.hub``) as it is generated. Database work goes
through ``sync_to_async``.

When the client disconnects, Django's ASGI handler cancels the view (or its
streaming generator); the job is then cancelled, which frees its engine slot
within one step, unless the request asked for ``continue_on_disconnect``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse

from conversations.admission import Admission, model_admit
from conversations.dispatch import job_abandon
from conversations.models import Message
from conversations.services import StartedConversation, conversation_start
from conversations.streams.hub import follow
from inference.params import resolve_model
from llmproject.throttling import token_cost
from openai_api.errors import error_body, error_response
from openai_api.protocol import parse_chat_request
from openai_api.responses import FINISH_REASONS, SSE_DONE, SSE_KEEPALIVE, Completion, sse, usage
from openai_api.throttling import throttle_check, tokens_charge_openai

logger = logging.getLogger(__name__)


async def create_chat_completion(
    request: HttpRequest, *, user: AbstractBaseUser, priority: int = 5
) -> HttpResponse | AsyncIterator[bytes]:
    """The whole answer as a ``chat.completion`` response or, for ``stream: true``, the
    server-sent events to stream; the job queued at ``priority`` (the API key's).
    Raises the platform's ``ApplicationError``s (bad input, throttled, no worker,
    queue full, model failing, queue or database down)."""
    chat = parse_chat_request(request.body)
    spec = resolve_model(chat.model)
    if settings.OPENAI_API_THROTTLE_CLASSES:
        await sync_to_async(throttle_check)(request=request, user=user)
    # Refused here, before any database work; else a place is held in the queue
    # until the job is in it (``_store`` gives it back). While the model's breaker
    # is open its fallback, if any, answers (and is named in the response).
    admission = await model_admit(spec=spec)
    spec = admission.spec
    started = await _store_unless_left(
        continue_on_disconnect=chat.continue_on_disconnect,
        admission=admission,
        owner=user,
        model=spec.name,
        messages=chat.messages,
        params=chat.params,
        priority=priority,
    )
    if settings.OPENAI_API_THROTTLE_CLASSES:
        tokens = token_cost(
            max_tokens=started.job.params["max_tokens"], text_chars=sum(len(c) for _, c in chat.messages)
        )
        await sync_to_async(tokens_charge_openai)(user=user, tokens=tokens)
    completion = Completion(id=f"chatcmpl-{started.job.pk}", created=int(time.time()), model=spec.name)
    answer = Answer(
        job_id=started.job.pk,
        conversation_id=started.conversation.pk,
        message_id=started.assistant_message.pk,
        continue_on_disconnect=chat.continue_on_disconnect,
    )
    if chat.stream:
        return stream_chunks(answer, completion, include_usage=chat.include_usage)
    return await complete(answer, completion)


# Cancels of jobs whose client left while they were being stored (referenced until done).
_late_abandons: set[asyncio.Task[None]] = set()


async def _store_unless_left(*, continue_on_disconnect: bool, **kwargs: Any) -> StartedConversation:
    """Store the request and publish its job (in a thread).

    A client that disconnects meanwhile cancels this coroutine, not the thread:
    the job is still stored and published. It is then cancelled as soon as it
    exists, as a disconnect mid-stream would, unless ``continue_on_disconnect``.
    """
    store = asyncio.ensure_future(sync_to_async(_store)(**kwargs))
    try:
        return await asyncio.shield(store)
    except asyncio.CancelledError:
        if not continue_on_disconnect:
            store.add_done_callback(_abandon_once_stored)
        raise


def _abandon_once_stored(store: asyncio.Future[StartedConversation]) -> None:
    if store.cancelled() or store.exception() is not None:
        return  # nothing was queued (the error was the client's to see)
    job_id = store.result().job.pk
    logger.info("job %s: its client left while the request was stored; cancelling it", job_id)
    # In a thread of its own: the request's thread (thread-sensitive calls) may be
    # gone by now, its context exited with the request.
    task = asyncio.ensure_future(sync_to_async(_abandon, thread_sensitive=False)(job_id=job_id))
    _late_abandons.add(task)
    task.add_done_callback(_late_abandons.discard)


def _abandon(*, job_id: int) -> None:
    try:
        job_abandon(job_id=job_id)
    finally:
        connection.close()  # back to the pool: this thread serves no request


def _store(*, admission: Admission, **kwargs: Any) -> StartedConversation:
    """``conversation_start``, then the request's database connection goes back (to the
    pool, if any): the answer streams for seconds without needing it, and a
    connection held per open stream would cap the streams at the pool's size.
    The job is in its queue by then (or failed): the admission's place is given back."""
    try:
        return conversation_start(**kwargs)
    finally:
        connection.close()
        admission.release()


class Answer:
    """The reply being generated for one request, followed through its conversation's stream."""

    def __init__(self, *, job_id: int, conversation_id: int, message_id: int, continue_on_disconnect: bool):
        self.job_id = job_id
        self.conversation_id = conversation_id
        self.message_id = message_id
        self.continue_on_disconnect = continue_on_disconnect
        # A job runs for at most the time limit, after waiting in a bounded queue.
        self.deadline = time.monotonic() + settings.LLM_JOB_TIME_LIMIT + 120

    async def events(self) -> AsyncIterator[list[dict[str, Any]]]:
        """The reply's events, in order, in batches as they arrive; an empty batch now
        and then while nothing happens.

        Raises ``TimeoutError`` past the deadline.
        """
        async for batch in follow(self.conversation_id, 0):
            if not batch and time.monotonic() > self.deadline:
                raise TimeoutError(f"job {self.job_id} did not finish in time")
            yield [event for event in batch if event.get("message_id") == self.message_id]

    async def abandon(self) -> None:
        """The client has gone (or we gave up): cancel the job unless asked to go on."""
        if self.continue_on_disconnect:
            return
        try:
            # Shielded: a second cancellation of the request must not stop the cancel.
            await asyncio.shield(sync_to_async(job_abandon)(job_id=self.job_id))
        except Exception:
            logger.exception("could not cancel job %s after its client left", self.job_id)

    async def outcome(self, event: dict[str, Any], *, need_usage: bool = True) -> tuple[str, dict[str, int]]:
        """The finish reason and usage of a ``completed`` or ``cancelled`` event (a
        cancelled reply's counts are read from its stored message, if needed)."""
        if event["event"] == "completed":
            reason = FINISH_REASONS.get(event["finish_reason"], event["finish_reason"])
            return reason, usage(event["prompt_tokens"], event["completion_tokens"])
        message = await Message.objects.filter(pk=self.message_id).afirst() if need_usage else None
        if message is None:
            return "abort", usage(0, 0)
        return "abort", usage(message.prompt_tokens, message.completion_tokens)


async def complete(answer: Answer, completion: Completion) -> HttpResponse:
    """Wait for the whole answer; a ``chat.completion``."""
    finished = False
    try:
        async with contextlib.aclosing(answer.events()) as batches:
            async for batch in batches:
                for event in batch:
                    kind = event["event"]
                    if kind in ("completed", "cancelled"):
                        finished = True
                        reason, counts = await answer.outcome(event)
                        body = completion.completion(
                            content=event["content"], finish_reason=reason, usage=counts
                        )
                        return JsonResponse(body)
                    if kind == "failed":
                        finished = True
                        return error_response(event["error"], status=500, code="generation_failed")
    except TimeoutError:
        return error_response("the answer did not finish in time", status=504, code="timeout")
    finally:
        if not finished:
            await answer.abandon()
    raise AssertionError("unreachable: the event stream never ends")


async def stream_chunks(
    answer: Answer, completion: Completion, *, include_usage: bool
) -> AsyncIterator[bytes]:
    """The answer as ``chat.completion.chunk`` server-sent events, then ``[DONE]``.

    The first chunk carries ``role`` with the first text; a failure ends the
    stream with an error event in OpenAI's shape (the official client raises
    it), never with a silent cut. Events that arrived together are written
    together (one send, not one per event).
    """
    state = _StreamState(completion, include_usage=include_usage)
    try:
        async with contextlib.aclosing(answer.events()) as batches:
            async for batch in batches:
                if not batch:
                    yield SSE_KEEPALIVE
                    continue
                out: list[bytes] = []
                for event in batch:
                    out += await state.translate(event, answer)
                    if state.finished:
                        break
                if out:
                    yield b"".join(out)
                if state.finished:
                    return
    except TimeoutError:
        yield sse(error_body("the answer did not finish in time", status=504, code="timeout")) + SSE_DONE
    finally:
        # Reached unfinished when the client disconnected (Django cancels the
        # generator) or the deadline passed.
        if not state.finished:
            await answer.abandon()


class _StreamState:
    """Turns one reply's events into SSE chunks."""

    def __init__(self, completion: Completion, *, include_usage: bool) -> None:
        self.completion = completion
        self.include_usage = include_usage
        self.sent_role = False
        self.sent_text = False
        self.finished = False

    async def translate(self, event: dict[str, Any], answer: Answer) -> list[bytes]:
        kind = event["event"]
        chunk = self.completion.chunk
        if kind == "started" and event.get("attempt", 1) > 1 and self.sent_text:
            # A worker died mid-answer and the job runs again from the start: text
            # already sent cannot be taken back. The job goes on and is stored.
            self.finished = True
            message = "the answer was interrupted by a worker failure and restarted; retry the request"
            return [sse(error_body(message, status=500, code="generation_restarted")), SSE_DONE]
        if kind == "delta" and event["text"]:
            out = self.completion.content_chunk(event["text"], role=not self.sent_role)
            self.sent_role = self.sent_text = True
            return [out]
        if kind in ("completed", "cancelled"):
            self.finished = True
            out = []
            if not self.sent_role:
                out.append(sse(chunk(delta={"role": "assistant", "content": ""})))
            reason, counts = await answer.outcome(event, need_usage=self.include_usage)
            out.append(sse(chunk(delta={}, finish_reason=reason)))
            if self.include_usage:
                out.append(sse(chunk(usage=counts)))
            out.append(SSE_DONE)
            return out
        if kind == "failed":
            self.finished = True
            return [sse(error_body(event["error"], status=500, code="generation_failed")), SSE_DONE]
        return []
