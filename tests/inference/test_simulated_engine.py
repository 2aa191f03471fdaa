"""The simulated engine behaves like a batching engine (it stands in for vLLM in load tests)."""

from __future__ import annotations

import asyncio

from inference.engines.simulated import SimulatedEngine, simulated_tokens
from inference.requests import ChatMessage, GenerationRequest, SamplingParams


def request(i: int, max_tokens: int = 20) -> GenerationRequest:
    return GenerationRequest(
        request_id=f"r{i}",
        messages=(ChatMessage("user", f"hello {i}"),),
        params=SamplingParams(max_tokens=max_tokens, ignore_eos=True),
    )


async def collect(engine: SimulatedEngine, req: GenerationRequest) -> tuple[str, str | None]:
    text, reason = "", None
    async for delta in engine.generate(req):
        text += delta.text
        reason = delta.finish_reason
    return text, reason


async def started(**options: float) -> SimulatedEngine:
    engine = SimulatedEngine(model="echo", options={"step_time": 0.001, "step_time_per_seq": 0.0, **options})
    await engine.start()
    return engine


async def test_concurrent_requests_share_steps_up_to_the_cap():
    engine = await started(max_num_seqs=4)
    results = await asyncio.gather(*(collect(engine, request(i)) for i in range(10)))
    await engine.shutdown()
    assert engine.stats()["max_batch_size"] == 4
    for i, (text, reason) in enumerate(results):
        assert text == "".join(simulated_tokens((ChatMessage("user", f"hello {i}"),), 20, ignore_eos=True))
        assert reason == "length"


async def test_bigger_batches_take_longer_per_step_but_less_per_token():
    engine = await started(max_num_seqs=64, step_time=0.002, step_time_per_seq=0.0005)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await collect(engine, request(0))
    one = loop.time() - t0
    t0 = loop.time()
    await asyncio.gather(*(collect(engine, request(i)) for i in range(32)))
    thirty_two = loop.time() - t0
    await engine.shutdown()
    assert one < thirty_two < 32 * one / 4


async def test_abort_ends_the_stream_within_a_step_and_frees_the_slot():
    engine = await started(max_num_seqs=1, step_time=0.01)
    chunks = []

    async def consume() -> str | None:
        async for delta in engine.generate(request(0, max_tokens=1000)):
            chunks.append(delta)
            if len(chunks) == 3:
                await engine.abort("r0")
        return chunks[-1].finish_reason

    assert await asyncio.wait_for(consume(), 2) == "abort"
    _, reason = await asyncio.wait_for(collect(engine, request(1, max_tokens=3)), 2)
    await engine.shutdown()
    assert reason == "length"


async def test_a_cancelled_consumer_frees_its_slot():
    engine = await started(max_num_seqs=1, step_time=0.01)
    task = asyncio.create_task(collect(engine, request(0, max_tokens=1000)))
    await asyncio.sleep(0.05)
    task.cancel()
    _, reason = await asyncio.wait_for(collect(engine, request(1, max_tokens=3)), 2)
    await engine.shutdown()
    assert reason == "length"


async def test_stop_strings_end_the_answer():
    engine = await started()
    tokens = simulated_tokens((ChatMessage("user", "hello 0"),), 20, ignore_eos=True)
    stop_at = tokens[5].strip()
    req = GenerationRequest(
        "s", (ChatMessage("user", "hello 0"),), SamplingParams(max_tokens=20, stop=(stop_at,))
    )
    text, reason = await collect(engine, req)
    await engine.shutdown()
    assert reason == "stop"
    assert stop_at not in text
