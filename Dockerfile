# One image for every subcommand: `docker run IMAGE http | watcher | recorder`.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RECORDINGS_DIR=/app/recordings \
    MEMHARBOR_LOG_FORMAT=json

WORKDIR /app

# Dependencies first, so code changes do not reinstall them. The `agora` extra downloads Agora's
# native library while installing, which needs network access at build time.
COPY pyproject.toml README.md ./
COPY memharbor ./memharbor
COPY watcher ./watcher
COPY token_http ./token_http
COPY recorder ./recorder
# The project itself is what is installed; its dependency ranges live in pyproject.toml.
# hadolint ignore=DL3013
RUN pip install ".[agora]"

RUN useradd --create-home --uid 10001 memharbor \
    && mkdir -p /app/recordings \
    && chown memharbor:memharbor /app/recordings
USER 10001

EXPOSE 8001
HEALTHCHECK --interval=30s --timeout=5s CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8001/api/health', timeout=4).status != 200)"]
ENTRYPOINT ["memharbor"]
CMD ["http"]
