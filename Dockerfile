# loadforge as a container: the image the shard pods of `--launcher kubernetes` run, external
# shards started by hand (`--launcher external`), and a coordinator too.
#   docker build -t loadforge:0.1.0 .
#   podman build --build-arg BASE=localhost/debian:bookworm-min -t loadforge:0.1.0 .
# BASE: any Debian bookworm image with python3 >= 3.11 and its venv module (python:3.11-slim,
# or one made from Debian's packages with mmdebstrap, as .ci/image does). loadforge lives in
# a virtual environment at /opt/loadforge, so both kinds of base work the same way.
# The engine is Cython: compiled in a build stage, so the image carries no compiler.
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
# libssl-dev: the engine includes openssl/ssl.h. python3-dev only where the base lacks
# Python.h (Debian's python3 does; python:3.11-slim has it).
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential libssl-dev \
    && if ! python3 -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; then \
           apt-get install -y --no-install-recommends python3-dev; fi \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/loadforge
WORKDIR /src
COPY . .
# CA_BUNDLE: a CA bundle for pip inside the build, where a proxy re-signs TLS (.ci/image
# mounts the host's and names it here); empty: the base's own trust.
ARG CA_BUNDLE=
# The kubernetes extra: the same image can be the coordinator, run in the cluster.
RUN if [ -n "$CA_BUNDLE" ]; then export PIP_CERT="$CA_BUNDLE"; fi \
    && /opt/loadforge/bin/pip install --no-cache-dir --disable-pip-version-check '.[kubernetes]'

FROM ${BASE}
# libssl3: the engine's TLS transport; libnghttp2-14: HTTP/2 (--http 2).
RUN apt-get update \
    && apt-get install -y --no-install-recommends libssl3 libnghttp2-14 ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 loadforge \
    && useradd --create-home --uid 10001 --gid 10001 loadforge
COPY --from=build /opt/loadforge /opt/loadforge
ENV PATH=/opt/loadforge/bin:$PATH
# Numeric, so that Kubernetes can verify runAsNonRoot without a runAsUser.
USER 10001:10001
WORKDIR /home/loadforge
# The smoke test: the image is not built unless loadforge, its engine and the engine's
# HTTP/2 library (libnghttp2.so.14, loaded at run time) load.
RUN loadforge --version \
    && python3 -c 'import sys; from loadforge import _core; sys.exit(_core.http2_library() or 0)'
ENTRYPOINT ["loadforge"]
CMD ["--help"]
