# jobwire's container image: the core and every integration (the `all` extra), pinned by
# requirements.lock, run as a non-root user. Build and run:
#
#   docker build -t jobwire .                          # --build-arg JOBWIRE_EXTRAS=kubernetes,amqp for fewer
#   docker run -p 8080:8080 -v jobwire-data:/var/lib/jobwire \
#     -e JOBWIRE_API_TOKEN="$(openssl rand -hex 32)" -v "$PWD/jobs:/etc/jobwire/jobs:ro" \
#     -e JOBWIRE_JOBS=/etc/jobwire/jobs jobwire
#
# It listens on 0.0.0.0, so jobwire requires an API token (JOBWIRE_API_TOKEN or JOBWIRE_API_TOKENS)
# and refuses to start without one. docs/operations.md has the rest.
# tests/packaging/test_docker.py runs hadolint on this file, and runs the same install
# (deploy/docker/install.sh), this file's ENV, CMD and HEALTHCHECK in a fresh venv.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
WORKDIR /src
COPY pyproject.toml requirements.lock README.md LICENSE ./
COPY src/ src/
COPY deploy/docker/install.sh deploy/docker/install.sh
ARG JOBWIRE_EXTRAS=all
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN sh deploy/docker/install.sh /src /opt/jobwire "${JOBWIRE_EXTRAS}"

FROM ${PYTHON_IMAGE}
# no compilers, no build tools: only the virtual environment the builder made
RUN groupadd --system --gid 10001 jobwire \
    && useradd --system --uid 10001 --gid jobwire --no-create-home --home-dir /var/lib/jobwire jobwire \
    && mkdir -p /var/lib/jobwire \
    && chown jobwire:jobwire /var/lib/jobwire
COPY --from=builder /opt/jobwire /opt/jobwire
ENV PATH=/opt/jobwire/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    JOBWIRE_HOST=0.0.0.0 \
    JOBWIRE_PORT=8080 \
    JOBWIRE_DATA_DIR=/var/lib/jobwire \
    JOBWIRE_LOG_FORMAT=json
USER 10001:10001
WORKDIR /var/lib/jobwire
# the SQLite store, its lock, run logs and the launch journal: keep it on a volume
VOLUME ["/var/lib/jobwire"]
EXPOSE 8080
# slim has no curl: the standard library asks /healthz (open without a token) on loopback
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('JOBWIRE_PORT', '8080'), timeout=4)"]
ENTRYPOINT ["jobwire"]
CMD ["serve"]
