"""Smoke test and micro-benchmark of the real engine (``VLLMEngine``) on a tiny local model.

Builds the tiny checkpoint (``inference.tiny_model``) in a temporary folder,
or uses ``--model PATH``, starts ``VLLMEngine`` on an event loop in a
dedicated thread (as the worker does), and shows:

1. throughput of 1 request, then of N concurrent requests (continuous
   batching), and the speed-up;
2. ``abort()`` mid-stream ends the stream with ``finish_reason="abort"``
   within a step or two; cancelling a consumer and closing an iterator early
   both free the vLLM request;
3. an oversized message raises ``PromptTooLong``, and an over-long
   conversation is trimmed to the context window.

Run from the repository root with vLLM installed (requirements-cpu.txt)::

    python bench/vllm_smoke.py [--concurrency 16] [--max-tokens 64]

The ``__main__`` guard is required: vLLM starts its engine core with spawn,
which re-imports this module in the child.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inference.engines.base import PromptTooLong
from inference.requests import ChatMessage, GenerationRequest, SamplingParams

T = TypeVar("T")


class LoopThread:
    """An asyncio loop in a daemon thread, driven like ``workers.runtime.EngineHost``."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="engine", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


def _request(request_id: str, text: str, **params: Any) -> GenerationRequest:
    return GenerationRequest(
        request_id=request_id,
        messages=(
            ChatMessage("system", "You are a terse assistant."),
            ChatMessage("user", text),
        ),
        params=SamplingParams(**params),
    )


async def _collect(engine: Any, request: GenerationRequest) -> dict[str, Any]:
    started = time.perf_counter()
    first: float | None = None
    tokens, text, reason, prompt_tokens = 0, "", None, 0
    async for delta in engine.generate(request):
        if first is None and delta.token_count:
            first = time.perf_counter() - started
        tokens += delta.token_count
        text += delta.text
        reason = delta.finish_reason
        prompt_tokens = delta.prompt_tokens
    return {
        "tokens": tokens,
        "seconds": time.perf_counter() - started,
        "ttft": first,
        "finish_reason": reason,
        "prompt_tokens": prompt_tokens,
        "text": text,
    }


async def _concurrent(engine: Any, n: int, max_tokens: int, tag: str) -> dict[str, Any]:
    started = time.perf_counter()
    results = await asyncio.gather(
        *(
            _collect(
                engine,
                _request(f"{tag}-{i}", f"Tell me story number {i}.", max_tokens=max_tokens, ignore_eos=True),
            )
            for i in range(n)
        )
    )
    seconds = time.perf_counter() - started
    tokens = sum(r["tokens"] for r in results)
    return {"requests": n, "tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds}


async def _abort_demo(engine: Any) -> dict[str, Any]:
    """Abort a long request after a few tokens; time until its stream ends."""
    request = _request("abort-1", "Go on forever.", max_tokens=1500, ignore_eos=True)
    tokens, reason, aborted_at, ended = 0, None, 0.0, 0.0
    async for delta in engine.generate(request):
        tokens += delta.token_count
        reason = delta.finish_reason
        if tokens >= 8 and not aborted_at:
            aborted_at = time.perf_counter()
            await engine.abort(request.request_id)
    ended = time.perf_counter()
    return {
        "finish_reason": reason,
        "tokens_before_end": tokens,
        "abort_latency_ms": round((ended - aborted_at) * 1000, 2),
    }


async def _cancel_and_close_demo(engine: Any) -> dict[str, Any]:
    """Cancel a consumer task, and close an iterator early: both must free vLLM's slot."""
    llm = engine._llm

    async def consume() -> None:
        async for _ in engine.generate(
            _request("cancel-1", "Keep talking.", max_tokens=1500, ignore_eos=True)
        ):
            pass

    task = asyncio.get_running_loop().create_task(consume())
    await asyncio.sleep(0.3)
    unfinished_before = llm.get_num_unfinished_requests()
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    await asyncio.sleep(0.05)
    after_cancel = llm.get_num_unfinished_requests()

    stream = engine.generate(_request("close-1", "Keep talking.", max_tokens=1500, ignore_eos=True))
    got = 0
    async for delta in stream:
        got += delta.token_count
        if got >= 4:
            break
    await stream.aclose()
    await asyncio.sleep(0.05)
    return {
        "unfinished_while_running": unfinished_before,
        "unfinished_after_cancel": after_cancel,
        "unfinished_after_close": llm.get_num_unfinished_requests(),
        "in_flight_after": engine.stats()["in_flight"],
    }


async def _context_demo(engine: Any, max_model_len: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    huge = " ".join(["word"] * (max_model_len * 2))
    try:
        async for _ in engine.generate(_request("huge-1", huge, max_tokens=256)):
            pass
        out["prompt_too_long"] = "NOT RAISED"
    except PromptTooLong as exc:
        out["prompt_too_long"] = str(exc)
    # 40 turns of ~100 tokens each: too long, so the oldest turns are dropped.
    history: list[ChatMessage] = [ChatMessage("system", "Be brief.")]
    for i in range(40):
        history.append(ChatMessage("user", f"Question {i}: " + "tell me more " * 30))
        history.append(ChatMessage("assistant", "Answer: " + "the river and the stone " * 20))
    history.append(ChatMessage("user", "And finally?"))
    request = GenerationRequest("trim-1", tuple(history), SamplingParams(max_tokens=64))
    result = await _collect(engine, request)
    out["trimmed_prompt_tokens"] = result["prompt_tokens"]
    out["trimmed_fits"] = result["prompt_tokens"] + 64 <= max_model_len
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="checkpoint folder (default: a fresh tiny model)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--no-eager", action="store_true", help="let vLLM compile (slow start)")
    args = parser.parse_args()

    from inference.engines.vllm_engine import VLLMEngine
    from inference.tiny_model import create_tiny_checkpoint

    tmp = tempfile.TemporaryDirectory(prefix="vllm-smoke-")
    model_path = args.model
    if model_path is None:
        started = time.perf_counter()
        model_path = str(Path(tmp.name) / "tiny")
        create_tiny_checkpoint(Path(model_path))
        print(f"tiny checkpoint: {model_path} ({time.perf_counter() - started:.1f} s)")

    options = {
        "model": model_path,
        "max_model_len": args.max_model_len,
        "max_num_seqs": 64,
        "dtype": "float32",
        "kv_cache_memory_bytes": 256 * 1024 * 1024,
        "enforce_eager": not args.no_eager,
        "seed": 0,
    }
    engine = VLLMEngine(model="tiny", options=options)
    host = LoopThread()
    report: dict[str, Any] = {}
    try:
        started = time.perf_counter()
        host.run(engine.start())
        report["engine_start_s"] = round(time.perf_counter() - started, 2)
        print(f"engine started in {report['engine_start_s']} s")

        # Warm-up (first-request allocations), not measured.
        host.run(_collect(engine, _request("warm-0", "Hello", max_tokens=8, ignore_eos=True)))

        one = host.run(
            _collect(
                engine, _request("one-0", "Tell me a story.", max_tokens=args.max_tokens, ignore_eos=True)
            )
        )
        single_tps = one["tokens"] / one["seconds"]
        report["single"] = {
            "tokens": one["tokens"],
            "seconds": round(one["seconds"], 3),
            "tokens_per_s": round(single_tps, 1),
            "ttft_ms": round((one["ttft"] or 0) * 1000, 1),
            "finish_reason": one["finish_reason"],
            "sample": one["text"][:60],
        }
        many = host.run(_concurrent(engine, args.concurrency, args.max_tokens, "many"))
        report["concurrent"] = {k: round(v, 3) if isinstance(v, float) else v for k, v in many.items()}
        report["speedup"] = round(many["tokens_per_s"] / single_tps, 2)
        report["abort"] = host.run(_abort_demo(engine))
        report["cancel_and_close"] = host.run(_cancel_and_close_demo(engine))
        report["context_window"] = host.run(_context_demo(engine, engine.max_model_len))
        report["stats"] = engine.stats()
    finally:
        started = time.perf_counter()
        host.run(engine.shutdown())
        host.run(engine.shutdown())  # idempotent
        report["shutdown_s"] = round(time.perf_counter() - started, 2)
        host.stop()
        tmp.cleanup()
        try:
            import psutil

            report["child_processes_left"] = [
                f"{p.name()} ({p.status()})" for p in psutil.Process().children(recursive=True)
            ]
        except ImportError:
            pass

    print(json.dumps(report, indent=2))
    print(
        f"\nsingle: {report['single']['tokens_per_s']} tok/s | "
        f"{args.concurrency} concurrent: {report['concurrent']['tokens_per_s']} tok/s | "
        f"speed-up x{report['speedup']} | abort {report['abort']['abort_latency_ms']} ms | "
        f"start {report['engine_start_s']} s"
    )
    ok = (
        report["abort"]["finish_reason"] == "abort"
        and report["context_window"]["prompt_too_long"] != "NOT RAISED"
        and report["context_window"]["trimmed_fits"]
        and report["cancel_and_close"]["unfinished_after_cancel"] == 0
        and report["cancel_and_close"]["unfinished_after_close"] == 0
    )
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
