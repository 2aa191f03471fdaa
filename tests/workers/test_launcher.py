"""The worker launcher: workers from the registry, pinned to their GPU groups."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import psutil
import pytest
from django.conf import settings
from django.core.management import call_command
from django.test import override_settings

from tests.conftest import ROOT, worker_env
from workers.launcher import worker_specs

MODELS = {
    "big": {"engine": "vllm", "options": {"model": "x", "max_num_seqs": 128}, "gpus": [[0, 1], [2, 3]]},
    "small": {"engine": "simulated", "options": {"max_num_seqs": 16}, "gpus": [[4]]},
    "cpu": {"engine": "simulated", "gpus": []},
}


@override_settings(LLM_MODELS=MODELS)
def test_one_worker_per_gpu_group_consuming_only_its_models_queue():
    specs = {s.name.split("@")[0]: s for s in worker_specs()}
    assert sorted(specs) == ["big-0", "big-1", "cpu-0", "small-0"]
    assert specs["big-1"].env({})["CUDA_VISIBLE_DEVICES"] == "2,3"
    assert specs["big-1"].env({})["LLM_TENSOR_PARALLEL_SIZE"] == "2"
    assert specs["small-0"].env({})["CUDA_VISIBLE_DEVICES"] == "4"
    assert specs["cpu-0"].env({})["CUDA_VISIBLE_DEVICES"] == ""  # sees no GPU at all
    command = specs["big-0"].command()
    assert "--queues=llm.big" in command
    assert "--pool=threads" in command
    assert "--concurrency=128" in command
    assert "--prefetch-multiplier=1" in command


@override_settings(LLM_MODELS=MODELS)
def test_asking_for_an_unknown_model_names_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown model.*registry has big, cpu, small"):
        worker_specs(["nope"])


@pytest.mark.django_db(transaction=True)
def test_a_worker_whose_engine_cannot_start_exits_with_the_reason():
    models = {"broken": {"engine": "simulated", "options": {"fail_start": True}, "gpus": []}}
    result = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "run_workers", "broken"],
        env=worker_env(LLM_MODELS=json.dumps(models)),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode != 0
    assert "engine for model 'broken' could not start" in result.stderr
    assert "failed to load" in result.stderr


def test_a_worker_leads_its_own_process_group_in_the_launchers_session(echo_worker):
    """Its own group: the launcher kills it whole, engine processes included. The
    launcher's session: on Linux a new session is a new scheduler autogroup, which
    would share a CPU between the worker and the web server as two equal groups."""
    launcher = psutil.Process(echo_worker.proc.pid)
    (worker,) = launcher.children()
    assert os.getpgid(worker.pid) == worker.pid != os.getpgid(launcher.pid)
    assert os.getsid(worker.pid) == os.getsid(launcher.pid)


@pytest.mark.vllm
def test_a_worker_of_a_two_gpu_group_runs_vllm_tensor_parallel_across_both():
    from vllm import AsyncEngineArgs

    from inference.engines.vllm_engine import VLLMEngine
    from workers.signals import worker_model_spec

    tiny = settings.LLM_MODELS["tiny"]
    call_command("create_tiny_model", path=tiny["options"]["model"])
    models = {
        "pair": {**tiny, "gpus": [[0, 1]]},
        "single": {**tiny, "gpus": [[2], [3]]},
        "pinned": {**tiny, "options": {**tiny["options"], "tensor_parallel_size": 1}, "gpus": [[4, 5]]},
    }

    def engine_args(name: str) -> dict[str, object]:
        with override_settings(LLM_MODELS=models):
            [first, *_] = worker_specs([name])
            spec = worker_model_spec(first.env({}))
        assert spec is not None
        return VLLMEngine(model=spec.name, options=spec.engine_options)._engine_kwargs(AsyncEngineArgs)

    assert engine_args("pair")["tensor_parallel_size"] == 2
    assert engine_args("single").get("tensor_parallel_size", 1) == 1
    # The registry's own choice wins over the group's size.
    assert engine_args("pinned")["tensor_parallel_size"] == 1
    AsyncEngineArgs(**engine_args("pair"))  # vLLM takes them as they are
