# One image for every subcommand: `docker run IMAGE http | watcher | recorder`.
# BASE is any Debian bookworm with Python 3.11 (python3 -m venv works); the default is Docker Hub's.
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}

# EXTRAS: the optional dependencies to install. `agora` downloads Agora's native library while installing
# (network access at build time); an empty value builds an image whose recorder runs only simulated.
ARG EXTRAS=agora

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    RECORDINGS_DIR=/app/recordings \
    MEMHARBOR_LOG_FORMAT=json

WORKDIR /app

# Dependencies first, from pyproject.toml alone: a change to the code (or README.md) reuses this layer,
# and only a change to the dependency list reinstalls them.
COPY pyproject.toml ./
RUN python3 -m venv /opt/venv \
    && python3 -c 'import sys, tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; extras = [e for e in sys.argv[1].split(",") if e]; print("\n".join(p["dependencies"] + [d for e in extras for d in p["optional-dependencies"][e]]))' "$EXTRAS" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The code, installed without resolving anything again.
COPY README.md ./
COPY memharbor ./memharbor
COPY watcher ./watcher
COPY token_http ./token_http
COPY recorder ./recorder
# The project itself, from this folder; its dependencies are the layer above.
# hadolint ignore=DL3013
RUN pip install --no-deps . \
    && useradd --create-home --uid 10001 memharbor \
    && mkdir -p /app/recordings \
    && chown memharbor:memharbor /app/recordings
USER 10001

EXPOSE 8001
# Through sh, so the port follows MEMHARBOR_HTTP_PORT when the container's environment moves it.
HEALTHCHECK --interval=30s --timeout=5s CMD ["/bin/sh", "-c", "exec python -c 'import sys, urllib.request; sys.exit(urllib.request.urlopen(sys.argv[1], timeout=4).status != 200)' \"http://127.0.0.1:${MEMHARBOR_HTTP_PORT:-8001}/livez\""]
ENTRYPOINT ["memharbor"]
CMD ["http"]
