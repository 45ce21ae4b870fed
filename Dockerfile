# bulkdrop: CSV files dropped into /var/spool/bulkdrop/inbox become Open Connectors bulk jobs.
#
#   docker build -t bulkdrop .
#   docker run -d --name bulkdrop --stop-timeout 30 -p 127.0.0.1:8470:8470 \
#     -v bulkdrop-spool:/var/spool/bulkdrop \
#     -e BULKDROP_API_BASE_URL=https://api.openconnectors.us2.ext.hana.ondemand.com/elements/api-v2 \
#     -v "$PWD/secrets:/run/secrets:ro" \
#     -e BULKDROP_API_USER_SECRET_FILE=/run/secrets/user_secret \
#     -e BULKDROP_API_ELEMENT_TOKEN_FILE=/run/secrets/element_token \
#     bulkdrop
#
# Configuration is by environment: every key is BULKDROP_<SECTION>_<KEY> (at least
# BULKDROP_API_BASE_URL; a TOML file mounted at /etc/bulkdrop/bulkdrop.toml or named by
# BULKDROP_CONFIG works too). Secrets go through *_FILE variables pointing at mounted
# secret files, never plain env: BULKDROP_API_USER_SECRET_FILE=/run/secrets/user_secret,
# BULKDROP_API_ORGANIZATION_SECRET_FILE, BULKDROP_API_ELEMENT_TOKEN_FILE,
# BULKDROP_CALLBACK_SIGNATURE_KEY_FILE. The files must be readable by uid 10001.
#
# The daemon is PID 1 and handles SIGTERM itself (stops claiming, finishes in-flight work,
# exits 0 within [workers] shutdown_grace_seconds, 20 s by default), so `docker run --init`
# is optional. Docker's default stop timeout is 10 s: give it more (`--stop-timeout 30`,
# `docker stop -t 30`, compose `stop_grace_period`) so a stop is always graceful.

# ---------------------------------------------------------------- build stage
FROM python:3.11-slim AS build

ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY daemon ./daemon
# A venv in both stages: the same path works in the final stage, and a distribution's
# "externally managed" system Python is never touched. The project is built as a wheel
# and installed with its dependencies; no .pyc files, no pip cache, and pip and setuptools
# are removed from the venv (nothing uses them at run time).
RUN python3 -m venv /opt/bulkdrop \
    && /opt/bulkdrop/bin/pip install --no-cache-dir --no-compile . \
    && /opt/bulkdrop/bin/pip uninstall --yes --quiet pip setuptools \
    && find /opt/bulkdrop -depth -type d -name __pycache__ -exec rm -rf {} +

# ---------------------------------------------------------------- final stage
FROM python:3.11-slim

LABEL org.opencontainers.image.title="bulkdrop" \
      org.opencontainers.image.description="CSV files dropped into a spool folder become Open Connectors bulk jobs, followed to their end." \
      org.opencontainers.image.licenses="MIT"

# The node id is fixed (a container's hostname changes when it is recreated, and a node
# finishes only the files it claimed itself): give each container sharing one spool its own.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/bulkdrop/bin:$PATH \
    BULKDROP_SPOOL_ROOT=/var/spool/bulkdrop \
    BULKDROP_SPOOL_NODE_ID=bulkdrop \
    BULKDROP_HTTP_LISTEN=0.0.0.0:8470 \
    BULKDROP_LOG_FORMAT=json

COPY --from=build /opt/bulkdrop /opt/bulkdrop

RUN groupadd --system --gid 10001 bulkdrop \
    && useradd --system --no-log-init --uid 10001 --gid 10001 \
       --home-dir /var/spool/bulkdrop --no-create-home --shell /usr/sbin/nologin bulkdrop \
    && mkdir -p /var/spool/bulkdrop \
    && chown 10001:10001 /var/spool/bulkdrop

WORKDIR /var/spool/bulkdrop
USER 10001:10001
# The spool: inbox/, processing/, done/, failed/ and the ledger in .state/<node_id>/.
# A new named volume starts owned by 10001; a bind-mounted folder must be writable by it.
VOLUME ["/var/spool/bulkdrop"]
# /healthz, /readyz, /metrics, /callbacks/bulk
EXPOSE 8470

HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python3", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8470/healthz', timeout=4).status != 200)"]

# Exec form: the daemon is PID 1 and receives SIGTERM itself.
ENTRYPOINT ["bulkdrop"]
CMD ["run"]
