"""The model registry: the one place that says which models exist and how they run.

Built from ``settings.LLM_MODELS``. The API validates against it, the
publisher routes by it, the worker launcher starts workers from it and the
worker builds its engine from it. Importing this module never imports an
engine.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

# Engine name -> dotted path of its class; imported only inside a worker.
ENGINES = {
    "simulated": "inference.engines.simulated.SimulatedEngine",
    "vllm": "inference.engines.vllm_engine.VLLMEngine",
}

QUEUE_PREFIX = "llm."


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    engine: str
    options: dict[str, Any]
    max_model_len: int
    default_max_tokens: int
    gpu_groups: tuple[tuple[int, ...], ...]
    cpu_groups: tuple[str, ...] = ()
    description: str = ""
    # Takes this model's new requests while its circuit breaker is open (inference.breaker).
    fallback: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def queue(self) -> str:
        return f"{QUEUE_PREFIX}{self.name}"

    @property
    def max_num_seqs(self) -> int:
        """Sequences the engine runs at once; a worker takes as many tasks."""
        return int(self.options.get("max_num_seqs", 64))

    @property
    def engine_path(self) -> str:
        return ENGINES[self.engine]

    def for_gpu_group(self, size: int) -> ModelSpec:
        """The spec a worker with a group of ``size`` GPUs runs: vLLM shards the model across
        the group (``tensor_parallel_size``) unless the options say otherwise."""
        if self.engine != "vllm" or size <= 1 or "tensor_parallel_size" in self.options:
            return self
        return dataclasses.replace(self, options={**self.options, "tensor_parallel_size": size})

    @property
    def engine_options(self) -> dict[str, Any]:
        """What the engine is built with: the registry's context window unless the options say."""
        return {"max_model_len": self.max_model_len, **self.options}


def _parse(name: str, raw: dict[str, Any]) -> ModelSpec:
    if not isinstance(raw, dict):
        raise ImproperlyConfigured(f"LLM_MODELS[{name!r}] must be an object")
    engine = raw.get("engine")
    if engine not in ENGINES:
        raise ImproperlyConfigured(
            f"LLM_MODELS[{name!r}].engine is {engine!r}; expected one of {sorted(ENGINES)}"
        )
    groups = raw.get("gpus", [])
    if not isinstance(groups, list) or not all(
        isinstance(g, list) and all(isinstance(i, int) for i in g) and g for g in groups
    ):
        raise ImproperlyConfigured(
            f"LLM_MODELS[{name!r}].gpus must be a list of non-empty lists of GPU indices, "
            "e.g. [[0], [1]] for two single-GPU workers or [[0, 1]] for one TP=2 worker"
        )
    cpus = raw.get("cpus", [])
    if not isinstance(cpus, list) or not all(isinstance(c, str) and c for c in cpus):
        raise ImproperlyConfigured(
            f'LLM_MODELS[{name!r}].cpus must be a list of CPU sets such as "0-7" (one worker each)'
        )
    if groups and cpus:
        raise ImproperlyConfigured(
            f"LLM_MODELS[{name!r}] sets both gpus and cpus: workers are one or the other"
        )
    options = dict(raw.get("options", {}))
    fallback = raw.get("fallback")
    if fallback is not None and (not isinstance(fallback, str) or fallback == name):
        raise ImproperlyConfigured(f"LLM_MODELS[{name!r}].fallback must name another model")
    known = {
        "engine",
        "options",
        "max_model_len",
        "default_max_tokens",
        "gpus",
        "cpus",
        "description",
        "fallback",
    }
    return ModelSpec(
        name=name,
        engine=engine,
        options=options,
        max_model_len=int(raw.get("max_model_len") or options.get("max_model_len") or 2048),
        default_max_tokens=int(raw.get("default_max_tokens", 256)),
        gpu_groups=tuple(tuple(g) for g in groups),
        cpu_groups=tuple(cpus),
        description=str(raw.get("description", "")),
        fallback=fallback,
        extra={k: v for k, v in raw.items() if k not in known},
    )


@functools.cache
def _registry(frozen: str) -> dict[str, ModelSpec]:
    import json

    models = json.loads(frozen)
    if not models:
        raise ImproperlyConfigured("LLM_MODELS is empty: configure at least one model")
    specs = {name: _parse(name, raw) for name, raw in models.items()}
    for spec in specs.values():
        if spec.fallback is not None and spec.fallback not in specs:
            raise ImproperlyConfigured(
                f"LLM_MODELS[{spec.name!r}].fallback is {spec.fallback!r}, which is not in LLM_MODELS"
            )
    return specs


def models() -> dict[str, ModelSpec]:
    """All configured models by name (cached per configuration)."""
    import json

    return _registry(json.dumps(settings.LLM_MODELS, sort_keys=True))


def get_model(name: str) -> ModelSpec | None:
    return models().get(name)


def default_model() -> ModelSpec:
    spec = get_model(settings.LLM_DEFAULT_MODEL)
    if spec is None:
        raise ImproperlyConfigured(f"LLM_DEFAULT_MODEL {settings.LLM_DEFAULT_MODEL!r} is not in LLM_MODELS")
    return spec
