# bulkdrop: CSV files dropped into /var/spool/bulkdrop/inbox become Open Connectors bulk jobs.
# Configure with BULKDROP_* environment variables (at least BULKDROP_API_BASE_URL) and
# secrets through *_FILE variables pointing at mounted secret files. The node id is
# fixed (a container's hostname changes when it is recreated, and a node finishes only
# the files it claimed itself): give each container sharing one spool its own.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/bulkdrop/bin:$PATH \
    BULKDROP_SPOOL_ROOT=/var/spool/bulkdrop \
    BULKDROP_SPOOL_NODE_ID=bulkdrop \
    BULKDROP_HTTP_LISTEN=0.0.0.0:8470 \
    BULKDROP_LOG_FORMAT=json

WORKDIR /src
COPY pyproject.toml README.md ./
COPY daemon ./daemon
RUN python3 -m venv /opt/bulkdrop \
    && /opt/bulkdrop/bin/pip install --no-compile . \
    && rm -rf /src \
    && groupadd --system --gid 10001 bulkdrop \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/spool/bulkdrop \
       --shell /usr/sbin/nologin bulkdrop \
    && mkdir -p /var/spool/bulkdrop \
    && chown 10001:10001 /var/spool/bulkdrop

WORKDIR /var/spool/bulkdrop
USER 10001:10001
VOLUME ["/var/spool/bulkdrop"]
EXPOSE 8470

HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python3", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8470/healthz', timeout=4).status != 200)"]

# Exec form: the daemon is PID 1 and receives SIGTERM itself; it stops cleanly within
# [workers] shutdown_grace_seconds.
ENTRYPOINT ["bulkdrop"]
CMD ["run"]
