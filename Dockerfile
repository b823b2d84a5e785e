# Pneumonia-screening inference service (RESEARCH USE ONLY; not a medical device).
#
#   docker build -t pneumonia-service .            (here: podman build --format docker --network host ...)
#   python -m app.keys new my-client                # line 1: the client's token; line 2: into ./api-keys
#   docker run -p 8000:8000 -v "$PWD/api-keys:/run/secrets/pneumonia-api-keys:ro" \
#     -e PNEUMONIA_API_KEYS_FILE=/run/secrets/pneumonia-api-keys pneumonia-service
#   ... -v /path/to/bundle:/srv/models/default:ro ...   # another bundle
#
# The container listens on 0.0.0.0, so it needs API keys: without PNEUMONIA_API_KEYS_FILE it refuses to start
# (one log line says why) unless -e PNEUMONIA_ALLOW_ANONYMOUS=true serves anyone who can reach it, on purpose
# (docs/security.md). Rate limit and audit trail: -e PNEUMONIA_RATE_LIMIT=120/minute -e PNEUMONIA_AUDIT_LOG=...
#
# Serves the bundle in models/default/ (baked in below). Start-up imports TensorFlow and self-tests the
# bundle before /health/ready turns 200; a missing or invalid bundle makes the container exit non-zero.
# Host and port come from UVICORN_HOST / UVICORN_PORT (uvicorn's own env vars; the HEALTHCHECK follows the
# port), so `-e UVICORN_PORT=9000` moves both the server and its health check.

ARG PYTHON_IMAGE=python:3.11-slim

# ---- builder: the runtime dependencies of pyproject.toml (no training/dev extras) in a venv ----
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /build
# Only what the dependency install needs, so this (large: TensorFlow) layer is cached across code changes.
# The readme is package metadata only; a placeholder keeps the build independent of it. The project itself
# is uninstalled again (app/ is copied into the runtime stage; training/ is not served).
# Not needed to serve, and large: TensorFlow's C++ headers (~290 MB, for compiling custom ops) and libclang
# (~60 MB, used by TensorFlow's build tooling only). TensorFlow itself stays: Grad-CAM for /explain.
# constraints.txt pins every dependency to the versions the tests ran with (docs/security.md: the audit of every pin).
COPY pyproject.toml constraints.txt ./
COPY pneumonia/__init__.py pneumonia/__init__.py
RUN touch README.md \
 && pip install --no-cache-dir -c constraints.txt . \
 && pip uninstall -y pneumonia-screening libclang \
 && rm -rf /opt/venv/lib/python3*/site-packages/tensorflow/include /root/.cache /build
# Lets tooling find (and prune) this stage's cache image: podman image prune --filter label=...=builder
LABEL io.pneumonia-screening.stage=builder

# ---- runtime ----
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="pneumonia-screening" \
      org.opencontainers.image.description="Research-only chest X-ray pneumonia screening API. Not a medical device." \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --gid 10001 app \
 && useradd --uid 10001 --gid app --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin app
COPY --from=builder /opt/venv /opt/venv
WORKDIR /srv
COPY pneumonia/ /srv/pneumonia/
COPY app/ /srv/app/
COPY models/ /srv/models/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TF_CPP_MIN_LOG_LEVEL=3 \
    KERAS_HOME=/tmp/.keras \
    HOME=/tmp \
    PNEUMONIA_MODEL_DIR=/srv/models/default \
    UVICORN_HOST=0.0.0.0 \
    UVICORN_PORT=8000 \
    PNEUMONIA_ALLOW_ANONYMOUS=false
USER 10001:10001
EXPOSE 8000
# TensorFlow import + bundle self-test take tens of seconds on a small CPU: a generous start period.
HEALTHCHECK --interval=15s --timeout=5s --start-period=90s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/health/ready' % os.environ.get('UVICORN_PORT', '8000'), timeout=4)"]
# Host/port from UVICORN_HOST/UVICORN_PORT above. --no-access-log: the app writes its own access log
# (method, path, status, duration, request id; no client address), uvicorn's would duplicate every line.
CMD ["uvicorn", "app.main:app", "--timeout-graceful-shutdown", "20", "--no-access-log"]
