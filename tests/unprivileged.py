"""Run ``bulkdrop`` as an unprivileged user, for tests of real permissions.

    python tests/unprivileged.py UID GID[,GID...] [bulkdrop arguments...]

Started as root, it imports everything the daemon uses while it still may read the
interpreter's own files (often below a root-only home), then gives up root for good
(``setgroups``, ``setgid``, ``setuid``) and runs the command line. From then on every
permission check the daemon meets is the kernel's, as for a daemon started by systemd
with ``User=``. Its first line on stdout says it has dropped root.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pkgutil
import sys

# What the daemon and its libraries import lazily, on first use: loaded now, while the
# files are readable. A missing one shows as an ImportError in the daemon's log.
LAZY = (
    "asyncio", "concurrent.futures.thread", "sqlite3", "json", "csv", "codecs",
    "encodings.utf_8", "encodings.utf_8_sig", "encodings.utf_16", "encodings.utf_16_le",
    "encodings.utf_16_be", "encodings.cp1252", "encodings.latin_1", "encodings.ascii",
    "encodings.idna", "encodings.punycode", "email.utils", "http.cookies", "urllib.request",
    "urllib.error", "resource", "uvloop", "aiohttp", "aiohttp.web", "aiohttp.web_runner",
    "aiohttp.web_protocol", "aiohttp.client", "aiohttp.client_reqrep", "aiohttp.connector",
    "aiohttp.resolver", "aiohttp.tracing", "aiohttp.payload", "aiohttp.multipart",
    "aiohttp.web_fileresponse", "aiofiles", "aiofiles.threadpool", "aiofiles.threadpool.binary",
    "aiofiles.threadpool.text", "watchfiles", "watchfiles.main", "anyio",
    "anyio._backends._asyncio", "structlog", "structlog.dev", "structlog.processors",
    "prometheus_client", "prometheus_client.aiohttp", "prometheus_client.exposition",
    "prometheus_client.openmetrics.exposition", "zlib", "gzip", "uuid", "secrets", "hmac",
    "hashlib", "base64", "ipaddress", "socket", "ssl", "signal", "traceback", "linecache",
    "tomllib", "difflib", "unicodedata", "decimal",
)


def _preload() -> None:
    import daemon
    for name in LAZY:
        with contextlib.suppress(ImportError):  # not here (uvloop elsewhere): not used
            importlib.import_module(name)
    for module in pkgutil.walk_packages(daemon.__path__, "daemon."):
        if not module.name.endswith("__main__"):
            importlib.import_module(module.name)


def main(argv: list[str]) -> int:
    # This checkout's daemon, as `python -m daemon` from its root would run.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    uid = int(argv[0])
    gids = [int(g) for g in argv[1].split(",")]
    _preload()
    os.setgroups(gids[1:])
    os.setgid(gids[0])
    os.setuid(uid)
    print(f"unprivileged: uid {os.getuid()} gid {os.getgid()} groups {os.getgroups()}",
          flush=True)
    from daemon.cli import main as bulkdrop
    return bulkdrop(argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
