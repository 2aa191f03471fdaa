"""The engine host of a worker: cancels that race a job's start."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from inference import registry
from inference.requests import ChatMessage, GenerationRequest, SamplingParams
from workers import runtime


class GatedPublisher:
    """Holds every ``publish`` (the ``started`` event on its way to Redis) until let go."""

    def __init__(self) -> None:
        self.publishing = threading.Event()
        self._gate = asyncio.Event()
        self.batches = self.events = 0

    def start(self) -> None:
        pass

    def emit(self, conversation_id: int, event: Any) -> None:
        pass

    async def publish(self, conversation_id: int, event: Any) -> int:
        self.publishing.set()
        await self._gate.wait()
        return 0

    async def let_go(self) -> None:
        self._gate.set()

    async def close(self) -> None:
        pass


class NoHeartbeat:
    def __init__(self, *, model: str, **kwargs: Any) -> None:
        pass

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass


@pytest.fixture
def host(monkeypatch: pytest.MonkeyPatch) -> Iterator[runtime.EngineHost]:
    """An engine host for "echo" (simulated engine), with no Redis behind it."""
    monkeypatch.setattr(runtime, "EventPublisher", GatedPublisher)
    monkeypatch.setattr(runtime, "Heartbeat", NoHeartbeat)
    spec = registry.get_model("echo")
    assert spec is not None
    host = runtime.EngineHost(spec, nodename="echo-0@test")
    host.start()
    yield host
    host.stop()


@pytest.mark.parametrize("why", ["cancel", "shutdown"])
def test_a_job_stopped_while_its_start_is_published_never_starts(host, why):
    """The job is in flight but its engine has not seen the request yet: the stop must not
    be lost (a cancel once was, and a client gone had its whole answer generated)."""
    request = GenerationRequest(
        request_id="job-1-1",
        messages=(ChatMessage("user", "a long answer"),),
        params=SamplingParams(max_tokens=3000, ignore_eos=True),  # 30 s on "echo"
    )
    generation = host.submit(
        host.generate(
            job_id=1,
            request=request,
            conversation_id=1,
            message_id=1,
            time_limit=60,
            started={"event": "started", "message_id": 1, "job_id": 1, "attempt": 1},
        )
    )
    publisher = host.publisher
    assert isinstance(publisher, GatedPublisher) and publisher.publishing.wait(5)
    if why == "cancel":
        host.cancel_job(1)
    else:
        host.abort_all("shutdown")
    # Scheduled on the engine loop after the stop, so the stop is handled first.
    host.run(publisher.let_go())
    try:
        result, stop_reason = generation.result(timeout=5)
    except TimeoutError:
        pytest.fail(f"the {why} was lost: the answer is still being generated")
    assert (result.finish_reason, result.completion_tokens, stop_reason) == ("abort", 0, why)
