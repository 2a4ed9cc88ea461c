# syntax=docker/dockerfile:1
# ggufops for an inference host: `ggufops serve` and `ggufops agent` (deploy/kubernetes).
#   docker build -t ggufops .
# Stage 1 compiles llama.cpp (llama-cpp-python) and installs ggufops into a venv; stage 2
# copies only that venv into a slim image that runs as an unprivileged user.

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS builder
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake git \
    && rm -rf /var/lib/apt/lists/*
# A portable build: no -march=native, so the image runs on any x86-64 node of the cluster.
ENV CMAKE_ARGS="-DGGML_NATIVE=OFF" \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/ggufops
WORKDIR /src
COPY pyproject.toml README.md ./
COPY tools ./tools
RUN /opt/ggufops/bin/pip install "llama-cpp-python==0.3.36" \
    && /opt/ggufops/bin/pip install . \
    && /opt/ggufops/bin/python -c "import llama_cpp, ggufops.server, ggufops.agent"

FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
# git for the agent's fetches, ssh-keygen for --trust, libgomp for llama.cpp's threads
RUN apt-get update \
    && apt-get install -y --no-install-recommends git openssh-client libgomp1 ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 ggufops \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/ggufops --create-home \
       --shell /usr/sbin/nologin ggufops \
    && install -d -o 10001 -g 10001 /var/lib/ggufops/store /var/lib/ggufops/agent
COPY --from=builder /opt/ggufops /opt/ggufops
ENV PATH=/opt/ggufops/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOME=/home/ggufops \
    AWS_EC2_METADATA_DISABLED=true \
    GGUFOPS_STORE=/var/lib/ggufops/store \
    GGUFOPS_STATE_DIR=/var/lib/ggufops/agent
USER 10001:10001
EXPOSE 8080 9180
ENTRYPOINT ["ggufops"]
CMD ["serve"]
