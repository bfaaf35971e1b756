# loadforge as a container: the image the Kubernetes launcher's shard pods run
# (`loadforge run --shards N --launcher kubernetes --image IMAGE`), and a coordinator too.
#   docker build -t loadforge:0.1.0 .
# The engine is Cython: compiled in a build stage, so the image carries no compiler.
FROM python:3.11-slim AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The kubernetes extra: the same image can be the coordinator, run in the cluster.
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[kubernetes]'

FROM python:3.11-slim
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels 'loadforge[kubernetes]' \
    && rm -rf /wheels \
    && useradd --create-home --uid 10001 loadforge
USER loadforge
WORKDIR /home/loadforge
ENTRYPOINT ["loadforge"]
CMD ["--help"]
