# QuantFarm image: the CLI, the Celery workers and the migrations.
#   docker build -t quantfarm .                                   # CPU workers (torch CPU wheels)
#   docker build -t quantfarm-gpu --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
FROM python:3.11-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG EXTRAS=engine,flower

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FARM_HOME=/data \
    OMP_WAIT_POLICY=PASSIVE

WORKDIR /app
# Dependencies first (cached layer), then the code.
COPY pyproject.toml README.md ./
COPY farm ./farm
COPY workers ./workers
COPY migrations ./migrations
RUN pip install --extra-index-url "${TORCH_INDEX}" -e ".[${EXTRAS}]" \
    && useradd --create-home --uid 1000 farm \
    && mkdir -p /data && chown farm /data
USER farm
VOLUME ["/data"]

CMD ["farm", "worker", "--queues", "cpu"]
