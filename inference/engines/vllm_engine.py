"""The real engine: vLLM V1's ``AsyncLLM`` with continuous batching.

One ``VLLMEngine`` lives in a worker process, on that process's engine
event-loop thread (``workers.runtime``). ``start()`` builds ``AsyncLLM``,
which spawns vLLM's ``EngineCore`` process (and, under it, one ``Worker``
process per tensor-parallel rank); every ``generate()`` then adds one request
to it, and vLLM batches all requests in flight at each step.

Registry options (``settings.LLM_MODELS[name]["options"]``) are vLLM's own
``AsyncEngineArgs`` fields, passed through as given, for example::

    {"model": "/path/or/hf-id", "max_model_len": 2048, "max_num_seqs": 64,
     "dtype": "float32", "kv_cache_memory_bytes": 268435456,
     "tensor_parallel_size": 1, "enforce_eager": true, "seed": 0}

plus this engine's own: ``chat_template`` (a Jinja string or a path to one,
for models whose tokenizer has none), ``step_stats`` (default true: count
every engine step for ``engine_stats``; vLLM then computes its per-step
statistics, a few percent of the worker's CPU with a tiny model; false is
``vllm serve --disable-log-stats``), ``log_stats`` (also run vLLM's periodic
log line) and ``die_with_worker`` (default true, see below). ``model``
defaults to the registry name, so a Hugging Face id works as a name where a
hub is reachable. Unknown options are an error: a typo must not silently fall
back to a default.

Engine processes die with their worker. vLLM's EngineCore outlives a
SIGKILLed parent (seen here for minutes; on a GPU host it keeps the GPU's
memory and the restarted worker cannot load). So, on Linux, EngineCore is
spawned through a tiny wrapper that sets ``PR_SET_PDEATHSIG`` to SIGTERM
before exec'ing Python: when the worker dies, EngineCore gets SIGTERM, shuts
down cleanly (freeing its shared memory) and its Worker processes follow
through vLLM's own death pipe. Measured: all gone about 3 s after a SIGKILL.

vLLM, torch and transformers are imported only inside ``start()``; importing
this module (the web process, unit tests of ``fit_context_window``) is cheap.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import multiprocessing.spawn
import os
import shutil
import sys
import tempfile
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inference.engines.base import (
    Engine,
    EngineError,
    FinishReason,
    GenerationDelta,
    PromptTooLong,
)
from inference.requests import ChatMessage, GenerationRequest, SamplingParams

if TYPE_CHECKING:
    from vllm.v1.engine.async_llm import AsyncLLM

logger = logging.getLogger(__name__)

# Options of this engine that are not AsyncEngineArgs fields.
ENGINE_OPTIONS = frozenset({"chat_template", "step_stats", "log_stats", "die_with_worker"})
# Conversations up to this many characters are rendered and tokenized on the
# engine loop (well under a millisecond); longer ones in a thread, where the
# work does not hold back every other stream (the hop costs more than a short render).
INLINE_RENDER_MAX_CHARS = 4096
DEFAULT_MAX_NUM_SEQS = 64
# vLLM's CPU backend otherwise reserves gpu_memory_utilization (0.9) of *all*
# RAM for the KV cache and fails if that much is not free; 1 GiB holds 64
# sequences of 2048 tokens of a small model many times over.
DEFAULT_CPU_KV_CACHE_BYTES = 1 << 30
# abort() for a request this engine has not seen yet is remembered (bounded)
# so that a generate() arriving just after it ends at once with "abort".
_EARLY_ABORTS_KEPT = 4096


# --- Context-window budget (pure; unit-tested without vLLM) -----------------


@dataclasses.dataclass(frozen=True, slots=True)
class ContextFit:
    """The messages to send after fitting the context window."""

    messages: tuple[ChatMessage, ...]
    prompt_tokens: int
    dropped: int  # how many of the oldest non-system messages were left out


def fit_context_window(
    messages: Sequence[ChatMessage],
    *,
    max_tokens: int,
    max_model_len: int,
    count_tokens: Callable[[Sequence[ChatMessage]], int],
) -> ContextFit:
    """Drop the oldest turns until ``prompt tokens + max_tokens <= max_model_len``.

    Preconditions: ``messages`` is non-empty; ``max_tokens >= 1``;
    ``count_tokens(msgs)`` returns the prompt length of ``msgs`` rendered with
    the model's chat template (generation prompt included) and does not grow
    when leading turns are removed.

    System messages and the newest message (the last one) are always kept.
    The rest (the history) is cut at the start of a turn: the kept history
    begins with a user message unless nothing was dropped, so a template that
    insists on alternating roles still renders. The smallest cut that fits is
    found by binary search (``O(log n)`` renders, not ``O(n)``).

    Raises ``PromptTooLong`` when even the system messages plus the newest
    message leave no room for ``max_tokens``; its message states the numbers.
    """
    if not messages:
        raise ValueError("messages must not be empty")
    if max_tokens < 1:
        raise ValueError("max_tokens must be at least 1")
    budget = max_model_len - max_tokens
    last = len(messages) - 1
    history = [i for i in range(last) if messages[i].role != "system"]
    # Cut positions into ``history``: 0 (keep all), every user message, and
    # len(history) (drop all). Ascending cut = more dropped = fewer tokens.
    cuts = [0]
    cuts += [p for p in range(1, len(history)) if messages[history[p]].role == "user"]
    if history:
        cuts.append(len(history))

    def candidate(cut: int) -> tuple[ChatMessage, ...]:
        dropped = set(history[:cut])
        return tuple(m for i, m in enumerate(messages) if i not in dropped)

    full = tuple(messages)
    tokens = count_tokens(full)
    if tokens <= budget:
        return ContextFit(full, tokens, 0)

    minimal = candidate(cuts[-1])
    min_tokens = count_tokens(minimal) if cuts[-1] else tokens
    if min_tokens > budget:
        kept = "the newest message" + (" and the system prompt" if len(minimal) > 1 else "")
        raise PromptTooLong(
            f"prompt is {min_tokens} tokens ({kept} alone); with max_tokens={max_tokens} "
            f"this exceeds the model's context window of {max_model_len} tokens"
        )

    # Invariant: cuts[lo] does not fit, cuts[hi] fits (with hi_tokens).
    lo, hi, hi_tokens = 0, len(cuts) - 1, min_tokens
    while hi - lo > 1:
        mid = (lo + hi) // 2
        mid_tokens = count_tokens(candidate(cuts[mid]))
        if mid_tokens <= budget:
            hi, hi_tokens = mid, mid_tokens
        else:
            lo = mid
    return ContextFit(candidate(cuts[hi]), hi_tokens, cuts[hi])


# --- Stats ------------------------------------------------------------------


@dataclasses.dataclass
class _Stats:
    """Counters fed by vLLM's stat-logger hook, on the engine loop thread."""

    batch_sizes: Counter[int] = dataclasses.field(default_factory=Counter)
    finished: Counter[str] = dataclasses.field(default_factory=Counter)
    max_running: int = 0
    max_waiting: int = 0
    running: int = 0
    waiting: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    preemptions: int = 0
    kv_cache_usage: float = 0.0

    def record(self, scheduler_stats: Any, iteration_stats: Any) -> None:
        if scheduler_stats is not None:
            self.running = scheduler_stats.num_running_reqs
            self.waiting = scheduler_stats.num_waiting_reqs
            self.max_running = max(self.max_running, self.running)
            self.max_waiting = max(self.max_waiting, self.waiting)
            self.kv_cache_usage = scheduler_stats.kv_cache_usage
        if iteration_stats is not None:
            # One EngineCoreOutputs message per engine step: the tokens it
            # carries are the sequences that advanced together in that step.
            if iteration_stats.num_generation_tokens:
                self.batch_sizes[iteration_stats.num_generation_tokens] += 1
            self.generation_tokens += iteration_stats.num_generation_tokens
            self.prompt_tokens += iteration_stats.num_prompt_tokens
            self.preemptions += iteration_stats.num_preempted_reqs
            for req in iteration_stats.finished_requests:
                self.finished[str(req.finish_reason)] += 1


def _stat_logger_factory(stats: _Stats) -> Callable[[Any, int], Any]:
    """A vLLM per-engine stat-logger factory that feeds ``stats``.

    vLLM calls ``record()`` from AsyncLLM's output handler, i.e. on our loop,
    once per engine step. Its stats classes are marked unstable upstream, so
    only a few long-standing fields are read (see ``_Stats.record``).
    """
    from vllm.v1.metrics.loggers import StatLoggerBase

    class _Recorder(StatLoggerBase):
        def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
            self.engine_index = engine_index

        def record(
            self,
            scheduler_stats: Any,
            iteration_stats: Any,
            mm_cache_stats: Any = None,
            engine_idx: int = 0,
        ) -> None:
            stats.record(scheduler_stats, iteration_stats)

        def log_engine_initialized(self) -> None:
            pass

    return _Recorder


# --- The engine -------------------------------------------------------------


@dataclasses.dataclass
class _InFlight:
    aborted: bool = False
    submitted: bool = False


_FINISH_REASONS: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "abort": "abort",
    # vLLM's repetition detector ended the sequence: the model stopped.
    "repetition": "stop",
}


# The spawn "executable" that makes a child die with the thread that spawned
# it. PR_SET_PDEATHSIG (1) survives execve; SIGTERM (15) lets EngineCore run
# its clean shutdown, and multiprocessing's resource tracker (spawned the same
# way) ignores SIGTERM, so it still unlinks anything left behind. If the
# worker already died before prctl, give up instead of running orphaned.
_PDEATHSIG_WRAPPER = """#!{python} -S
import ctypes, os, sys
ctypes.CDLL(None, use_errno=True).prctl(1, 15, 0, 0, 0)
if os.getppid() != {parent}:
    sys.exit(1)
os.execv({python!r}, [{python!r}] + sys.argv[1:])
"""


@contextlib.contextmanager
def _children_die_with_this_thread(enabled: bool) -> Iterator[None]:
    """Within the block, spawned processes get SIGTERM when this *thread* exits.

    Precondition: called on the long-lived thread that owns the engine (the
    kernel ties the parent-death signal to the spawning thread, not the
    process). Only spawn-method processes started inside the block are
    affected; the previous spawn executable is restored afterwards.
    """
    python = sys.executable
    if not enabled or sys.platform != "linux" or len(python) > 100 or " " in python:  # shebang
        yield
        return
    folder = tempfile.mkdtemp(prefix="llm-engine-")
    wrapper = Path(folder) / "python-pdeathsig"
    wrapper.write_text(_PDEATHSIG_WRAPPER.format(python=python, parent=os.getpid()))
    wrapper.chmod(0o700)
    previous = multiprocessing.spawn.get_executable()
    multiprocessing.spawn.set_executable(str(wrapper))
    try:
        yield
    finally:
        multiprocessing.spawn.set_executable(previous)
        shutil.rmtree(folder, ignore_errors=True)


def _looks_like_path(model: str) -> bool:
    return model.startswith(("/", "./", "../", "~")) or Path(model).exists()


class VLLMEngine(Engine):
    """vLLM ``AsyncLLM`` behind the ``Engine`` interface.

    All methods run on the worker's engine loop thread (see ``Engine``).
    """

    def __init__(self, *, model: str, options: dict[str, Any]) -> None:
        super().__init__(model=model, options=options)
        self._model_path = str(options.get("model", model))
        self._max_num_seqs = int(options.get("max_num_seqs", DEFAULT_MAX_NUM_SEQS))
        self._llm: AsyncLLM | None = None
        self._tokenizer: Any = None
        self._chat_template: str | None = None
        self._max_model_len = 0
        self._in_flight: dict[str, _InFlight] = {}
        self._early_aborts: OrderedDict[str, None] = OrderedDict()
        self._stats = _Stats()
        self._step_stats = bool(self.options.get("step_stats", True))
        self._start_seconds: float | None = None
        self._closed = False

    @property
    def max_concurrency(self) -> int:
        return self._max_num_seqs

    @property
    def max_model_len(self) -> int:
        """The context window vLLM settled on (0 before ``start()``)."""
        return self._max_model_len

    # -- lifecycle ----------------------------------------------------------

    async def start(self) -> None:
        """Build ``AsyncLLM`` and load the model (tens of seconds; blocks the loop).

        Precondition: called once, on the engine loop thread, before any
        ``generate()``. It is built on this thread on purpose: AsyncLLM binds
        its output handler and queues to the running loop, and EngineCore's
        parent-death signal (``die_with_worker``) fires when the *thread* that
        spawned it exits, so that must be the long-lived loop thread. Raises
        ``EngineError(permanent=True)`` when the model cannot be loaded.
        """
        if self._llm is not None or self._closed:
            raise EngineError("VLLMEngine.start() called twice", permanent=True)
        started = time.monotonic()
        self._prepare_environment()
        try:
            from vllm import AsyncEngineArgs
            from vllm.v1.engine.async_llm import AsyncLLM
        except ImportError as exc:
            raise EngineError(
                "vLLM is not installed in this environment: install requirements-cpu.txt "
                f"(CPU) or requirements-gpu.txt (CUDA) ({exc})",
                permanent=True,
            ) from exc

        engine_args = AsyncEngineArgs(**self._engine_kwargs(AsyncEngineArgs))
        try:
            with _children_die_with_this_thread(bool(self.options.get("die_with_worker", True))):
                loggers = [_stat_logger_factory(self._stats)] if self._step_stats else None
                llm = AsyncLLM.from_engine_args(engine_args, stat_loggers=loggers)
        except Exception as exc:
            raise EngineError(
                f"vLLM could not load model {self._model_path!r} for {self.model!r}: "
                f"{type(exc).__name__}: {exc}",
                permanent=True,
            ) from exc

        try:
            self._tokenizer = llm.get_tokenizer()
            self._chat_template = self._load_chat_template()
            self._max_model_len = int(llm.model_config.max_model_len)
            # Fail now, not on the first request, if the template cannot render.
            self._render((ChatMessage("system", "s"), ChatMessage("user", "u")))
        except Exception as exc:
            llm.shutdown()
            del llm  # see below
            raise EngineError(
                f"model {self._model_path!r} for {self.model!r} cannot render chat prompts "
                f"({type(exc).__name__}: {exc}); give it a chat template with "
                "options.chat_template",
                permanent=True,
            ) from exc
        self._llm = llm
        # Something inside vLLM's start-up keeps a traceback through this
        # frame alive, so this frame's locals outlive it: without the del,
        # AsyncLLM is never freed and its __del__ fails noisily at exit.
        del llm
        self._start_seconds = time.monotonic() - started
        logger.info(
            "vLLM engine for %s (%s) ready in %.1f s: max_model_len=%d max_num_seqs=%d",
            self.model,
            self._model_path,
            self._start_seconds,
            self._max_model_len,
            self._max_num_seqs,
        )

    async def shutdown(self) -> None:
        """End all requests with ``abort``, then stop vLLM's processes. Idempotent."""
        self._closed = True
        llm, self._llm = self._llm, None
        if llm is None:
            return
        for request_id, state in list(self._in_flight.items()):
            state.aborted = True
            try:
                # Puts a final "abort" output in the request's queue at once,
                # so its generate() ends instead of waiting forever.
                await llm.abort(request_id)
            except Exception:
                logger.exception("aborting %s during shutdown failed", request_id)
        # Synchronous: stops EngineCore (and its workers) and joins them. Done
        # on the loop thread because AsyncLLM's sockets belong to it.
        llm.shutdown()
        # AsyncLLM sits in reference cycles; collect it now, while modules are
        # alive, not at interpreter exit where its __del__ fails noisily.
        del llm
        gc.collect()

    # -- requests -----------------------------------------------------------

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationDelta]:
        """Stream ``request`` as deltas; see ``Engine.generate``.

        Preconditions: ``start()`` succeeded; ``request.request_id`` is not
        in flight. The prompt is the model's chat template applied to the
        messages, with the oldest turns dropped to fit the context window
        (``fit_context_window``). Cancelling the consumer or closing this
        iterator early aborts the vLLM request, freeing its slot.
        """
        llm = self._llm
        if llm is None:
            raise EngineError("vLLM engine is not running", permanent=False)
        if not request.messages:
            raise EngineError("request has no messages", permanent=True)
        request_id = request.request_id
        if request_id in self._in_flight:
            raise EngineError(f"request {request_id!r} is already in flight", permanent=True)
        state = _InFlight(aborted=request_id in self._early_aborts)
        self._early_aborts.pop(request_id, None)
        self._in_flight[request_id] = state
        stream: AsyncIterator[Any] | None = None
        try:
            if state.aborted:
                yield GenerationDelta("", 0, 0, "abort")
                return
            # Rendering and tokenizing a long conversation (several renders
            # when trimming) is CPU work: keep it off the loop that streams
            # every other request. vLLM's tokenizer wrapper is thread-safe.
            if sum(len(m.content) for m in request.messages) <= INLINE_RENDER_MAX_CHARS:
                fit, token_ids = self._fit_prompt(request.messages, request.params.max_tokens)
            else:
                fit, token_ids = await asyncio.to_thread(
                    self._fit_prompt, request.messages, request.params.max_tokens
                )
            if fit.dropped:
                logger.info(
                    "request %s: dropped %d oldest messages to fit %d tokens",
                    request_id,
                    fit.dropped,
                    self._max_model_len,
                )
            prompt_tokens = len(token_ids)
            if state.aborted:
                yield GenerationDelta("", 0, prompt_tokens, "abort")
                return
            from vllm.inputs import tokens_input

            stream = llm.generate(tokens_input(token_ids), self._sampling_params(request.params), request_id)
            finished = False
            async for output in stream:
                if not state.submitted:
                    state.submitted = True
                    if state.aborted:  # abort() raced with add_request
                        await llm.abort(request_id)
                completion = output.outputs[0]
                reason = self._finish_reason(completion.finish_reason) if output.finished else None
                count = len(completion.token_ids)
                if not count and not completion.text and reason is None:
                    continue
                yield GenerationDelta(completion.text, count, prompt_tokens, reason)
                # After the last output vLLM's generator ends by itself: left
                # open at its final yield, closing it would send the finished
                # request an abort (a message to EngineCore per request).
                finished = reason is not None
            if not finished:
                raise EngineError("vLLM ended a stream without a finish reason", permanent=False)
        except EngineError:
            raise
        except Exception as exc:
            raise self._translate(exc) from exc
        finally:
            self._in_flight.pop(request_id, None)
            if stream is not None:
                # If the request is unfinished (consumer closed us early, or
                # an error), closing vLLM's generator aborts it in the engine.
                # A cancelled consumer already went through vLLM's own abort.
                try:
                    await stream.aclose()  # type: ignore[attr-defined]
                except RuntimeError:  # still running: it was cancelled and cleaned up
                    logger.debug("vLLM stream for %s already closing", request_id)

    async def abort(self, request_id: str) -> None:
        """Stop ``request_id``; its iterator then ends with ``finish_reason="abort"``.

        Safe for unknown or finished ids. An id not seen yet is remembered, so
        a ``generate()`` for it that arrives later ends at once.
        """
        state = self._in_flight.get(request_id)
        if state is None:
            self._early_aborts[request_id] = None
            while len(self._early_aborts) > _EARLY_ABORTS_KEPT:
                self._early_aborts.popitem(last=False)
            return
        state.aborted = True
        if self._llm is not None:
            # A no-op if vLLM has not added it yet; generate() re-sends it then.
            await self._llm.abort(request_id)

    def stats(self) -> dict[str, Any]:
        llm = self._llm
        return {
            "engine": "vllm",
            "model": self._model_path,
            "max_model_len": self._max_model_len,
            "max_concurrency": self._max_num_seqs,
            "start_seconds": self._start_seconds,
            "healthy": llm is not None and not llm.errored,
            "in_flight": len(self._in_flight),
            "step_stats": self._step_stats,
        } | (self._step_stats_dict() if self._step_stats else {})

    def _step_stats_dict(self) -> dict[str, Any]:
        s = self._stats
        return {
            # Per engine step, as in the simulated engine's stats.
            "steps": sum(s.batch_sizes.values()),
            "max_batch_size": max(s.batch_sizes, default=0),
            "batch_sizes": dict(sorted(s.batch_sizes.items())),
            "running": s.running,
            "waiting": s.waiting,
            "max_running": s.max_running,
            "max_waiting": s.max_waiting,
            "finished": sum(s.finished.values()),
            "finished_by_reason": dict(s.finished),
            "prompt_tokens": s.prompt_tokens,
            "generation_tokens": s.generation_tokens,
            "preemptions": s.preemptions,
            "kv_cache_usage": s.kv_cache_usage,
        }

    # -- helpers ------------------------------------------------------------

    def _prepare_environment(self) -> None:
        """Offline-friendly defaults, before vLLM is imported or spawns anything.

        ``setdefault`` only: an operator's explicit setting wins. Spawned
        EngineCore/Worker processes inherit the environment.
        """
        # vLLM otherwise reports usage to its stats server from every engine.
        os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
        os.environ.setdefault("DO_NOT_TRACK", "1")
        if _looks_like_path(self._model_path):
            # A local checkpoint needs no hub; never wait on one.
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

    def _engine_kwargs(self, args_cls: type) -> dict[str, Any]:
        """AsyncEngineArgs keyword arguments from the registry options."""
        fields = {f.name for f in dataclasses.fields(args_cls)}
        unknown = sorted(set(self.options) - fields - ENGINE_OPTIONS)
        if unknown:
            raise EngineError(
                f"unknown vLLM options for {self.model!r}: {', '.join(unknown)} "
                f"(options are vLLM AsyncEngineArgs fields, plus {', '.join(sorted(ENGINE_OPTIONS))})",
                permanent=True,
            )
        if _looks_like_path(self._model_path):
            path = Path(self._model_path).expanduser()
            if not (path / "config.json").is_file():
                raise EngineError(
                    f"model path {str(path)!r} for {self.model!r} is not a model folder "
                    "(no config.json); for the test model run "
                    "`python manage.py create_tiny_model`",
                    permanent=True,
                )
        kwargs = {k: v for k, v in self.options.items() if k not in ENGINE_OPTIONS}
        kwargs["model"] = self._model_path
        kwargs["max_num_seqs"] = self._max_num_seqs
        # Our stat logger is installed unless step_stats is off; vLLM's own
        # periodic log line only when asked for.
        kwargs.setdefault(
            "disable_log_stats", not (self.options.get("log_stats", False) and self._step_stats)
        )
        if (
            "kv_cache_memory_bytes" not in kwargs
            and "gpu_memory_utilization" not in kwargs
            and not os.environ.get("VLLM_CPU_KVCACHE_SPACE")
            and self._on_cpu()
        ):
            kwargs["kv_cache_memory_bytes"] = DEFAULT_CPU_KV_CACHE_BYTES
        return kwargs

    @staticmethod
    def _on_cpu() -> bool:
        from vllm.platforms import current_platform

        return bool(current_platform.is_cpu())

    def _load_chat_template(self) -> str | None:
        template = self.options.get("chat_template")
        if template is None:
            if not getattr(self._tokenizer, "chat_template", None):
                raise ValueError("the tokenizer has no chat template")
            return None
        path = Path(str(template)).expanduser()
        if "{" not in str(template) and path.is_file():
            return path.read_text()
        return str(template)

    def _render(self, messages: Sequence[ChatMessage]) -> list[int]:
        """Prompt token ids of ``messages`` under the chat template, generation prompt on."""
        text = self._tokenizer.apply_chat_template(
            [{"role": m.role, "content": m.content} for m in messages],
            chat_template=self._chat_template,
            add_generation_prompt=True,
            tokenize=False,
        )
        # The template writes BOS itself (as vLLM's chat path assumes).
        return list(self._tokenizer.encode(text, add_special_tokens=False))

    def _fit_prompt(self, messages: Sequence[ChatMessage], max_tokens: int) -> tuple[ContextFit, list[int]]:
        """Fit the window, return the kept messages' token ids (on the loop or in a thread)."""
        rendered: dict[tuple[ChatMessage, ...], list[int]] = {}

        def count(msgs: Sequence[ChatMessage]) -> int:
            key = tuple(msgs)
            if key not in rendered:
                rendered[key] = self._render(key)
            return len(rendered[key])

        fit = fit_context_window(
            messages, max_tokens=max_tokens, max_model_len=self._max_model_len, count_tokens=count
        )
        return fit, rendered[fit.messages]

    @staticmethod
    def _sampling_params(params: SamplingParams) -> Any:
        from vllm import SamplingParams as VLLMSamplingParams
        from vllm.sampling_params import RequestOutputKind

        return VLLMSamplingParams(
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            stop=list(params.stop) or None,
            seed=params.seed,
            ignore_eos=params.ignore_eos,
            # Each output carries only what is new since the previous one.
            output_kind=RequestOutputKind.DELTA,
        )

    @staticmethod
    def _finish_reason(reason: str | None) -> FinishReason:
        if reason == "error":
            # vLLM: "retryable request-level internal error".
            raise EngineError("vLLM failed the request (finish_reason=error)", permanent=False)
        mapped = _FINISH_REASONS.get(str(reason))
        if mapped is None:
            raise EngineError(f"unexpected vLLM finish_reason {reason!r}", permanent=False)
        return mapped

    def _translate(self, exc: Exception) -> EngineError:
        """Map vLLM's exceptions onto ``EngineError``'s permanent/transient split."""
        from vllm.exceptions import GracefulHTTPError, VLLMClientError
        from vllm.v1.engine.exceptions import EngineDeadError

        name = type(exc).__name__
        if isinstance(exc, EngineDeadError):
            return EngineError(f"vLLM engine died: {exc}", permanent=False)
        if isinstance(exc, GracefulHTTPError):  # queue limits: try again later
            return EngineError(f"vLLM is overloaded: {exc}", permanent=False)
        if isinstance(exc, VLLMClientError | ValueError):  # the request itself is invalid
            return EngineError(f"vLLM rejected the request: {name}: {exc}", permanent=True)
        return EngineError(f"vLLM failed the request: {name}: {exc}", permanent=False)
