"""Worker processes from the model registry: one Celery worker per (model, GPU group).

Each worker consumes only its model's queue, sees only its GPU group
(``CUDA_VISIBLE_DEVICES``), runs tasks in threads (``-P threads``) so that
many are in flight against its one engine, and takes as many tasks at once as
the engine runs sequences (prefetch multiplier 1: it never holds a job it
cannot start).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass

from django.conf import settings

from inference.registry import ModelSpec, models
from workers.signals import TENSOR_PARALLEL_ENV, WORKER_MODEL_ENV


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    model: ModelSpec
    index: int
    gpus: tuple[int, ...] | None  # None: no GPU (CPU build, simulated engine)
    cpus: str | None = None  # CPU set for vLLM's CPU build to bind its threads to

    @property
    def name(self) -> str:
        return f"{self.model.name}-{self.index}@{socket.gethostname()}"

    @property
    def concurrency(self) -> int:
        return self.model.max_num_seqs

    def command(self, *, loglevel: str = "info") -> list[str]:
        return [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "llmproject",
            "worker",
            "--pool=threads",
            f"--concurrency={self.concurrency}",
            f"--queues={self.model.queue}",
            f"--hostname={self.name}",
            "--prefetch-multiplier=1",
            "--without-mingle",
            "--without-gossip",
            f"--loglevel={loglevel}",
        ]

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ if base is None else base)
        env[WORKER_MODEL_ENV] = self.model.name
        # An empty list hides every GPU: a CPU worker must not grab one.
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, self.gpus or ()))
        if self.gpus:
            env[TENSOR_PARALLEL_ENV] = str(len(self.gpus))
        if self.cpus:
            # vLLM's CPU build pins its OpenMP threads to these cores.
            env["VLLM_CPU_OMP_THREADS_BIND"] = self.cpus
        # No usage reports from engines (they would try the network).
        env.setdefault("VLLM_NO_USAGE_STATS", "1")
        env.setdefault("DO_NOT_TRACK", "1")
        return env


def worker_specs(names: Iterable[str] | None = None) -> list[WorkerSpec]:
    """The workers to run for ``names`` (default: every model in the registry)."""
    registry = models()
    selected = list(names) if names else list(registry)
    unknown = [n for n in selected if n not in registry]
    if unknown:
        raise ValueError(f"unknown model(s) {', '.join(unknown)}; registry has {', '.join(registry)}")
    specs: list[WorkerSpec] = []
    for name in selected:
        spec = registry[name]
        if spec.gpu_groups:
            specs.extend(WorkerSpec(model=spec, index=i, gpus=g) for i, g in enumerate(spec.gpu_groups))
        elif spec.cpu_groups:
            specs.extend(
                WorkerSpec(model=spec, index=i, gpus=None, cpus=c) for i, c in enumerate(spec.cpu_groups)
            )
        else:
            specs.append(WorkerSpec(model=spec, index=0, gpus=None))
    return specs


def _metrics_port(env: dict[str, str], index: int) -> dict[str, str]:
    """The ``index``-th worker's metrics port: a non-zero ``LLM_WORKER_METRICS_PORT`` is
    the first worker's, the next take the ports after it (0, "off": left as it is)."""
    base = settings.LLM_WORKER_METRICS_PORT.strip()
    if base.isdigit() and int(base):
        env["LLM_WORKER_METRICS_PORT"] = str(int(base) + index)
    return env


def _kill_group(pgid: int, grace: float = 5) -> None:
    """SIGTERM what is left of a worker's process group, SIGKILL it after ``grace``."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run(specs: list[WorkerSpec], *, loglevel: str = "info", stop_timeout: float = 60) -> int:
    """Start the workers and supervise them until one exits or we are signalled.

    SIGINT/SIGTERM are passed on as SIGTERM (Celery's warm shutdown); workers
    still alive after ``stop_timeout`` are killed. Returns the first non-zero
    exit status, so a worker whose engine failed makes the launcher fail.
    """
    # Each worker leads its own process group, with its engine's processes in
    # it: whatever is left of a group once its worker has exited is killed, so
    # no engine process outlives its worker holding a GPU's memory.
    # A group, not a session: on Linux a new session is a new scheduler
    # autogroup, and the kernel then shares a CPU between the worker and the web
    # server started beside it as two equal groups, not by their threads' needs.
    # On a loaded CPU the web server's event loop then waited about a
    # millisecond for the CPU at each of its hundreds of wake-ups a second (the
    # peer benchmark's TTFT went from about 380 to about 160 ms without it).
    procs = [
        subprocess.Popen(s.command(loglevel=loglevel), env=_metrics_port(s.env(), i), process_group=0)
        for i, s in enumerate(specs)
    ]
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    status = 0
    try:
        while not stopping:
            for spec, proc in zip(specs, procs, strict=True):
                code = proc.poll()
                if code is not None:
                    print(f"worker {spec.name} exited with status {code}", file=sys.stderr, flush=True)
                    status = status or code or 1
                    stopping = True
            time.sleep(0.2)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + stop_timeout
        for proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            _kill_group(proc.pid)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return status
