"""sd_notify over ``$NOTIFY_SOCKET`` with the standard library.

READY=1 once the watcher is live and recovery done, STATUS= lines as work flows,
WATCHDOG=1 at half of ``$WATCHDOG_USEC``, EXTEND_TIMEOUT_USEC= while a long recovery or
drain runs, STOPPING=1 on shutdown. Without ``$NOTIFY_SOCKET`` every call does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable, Mapping

from daemon.logs import get_logger

log = get_logger()


class Notifier:
    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):  # an abstract socket
            address = "\0" + address[1:]
        self.address = address
        self.watchdog_interval: float | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval = int(usec) / 1e6 / 2
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, **fields: object) -> None:
        """One datagram of ``KEY=value`` lines; failures are logged, never raised."""
        if not self.address:
            return
        message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(message, self.address)
        except OSError as exc:
            log.warning("systemd.notify_failed", error=str(exc))

    def ready(self, status: str) -> None:
        self.send(READY=1, STATUS=status, MAINPID=os.getpid())

    def status(self, text: str) -> None:
        self.send(STATUS=text)

    def stopping(self, status: str) -> None:
        self.send(STOPPING=1, STATUS=status)

    def extend_timeout(self, seconds: float) -> None:
        self.send(EXTEND_TIMEOUT_USEC=int(seconds * 1e6))

    async def run(self, stop: asyncio.Event, status: Callable[[], str],
                  every: float = 5.0) -> None:
        """Watchdog pings (when asked for) and a STATUS line when it changes, until *stop*."""
        if not self.enabled:
            return
        tick = min(every, self.watchdog_interval or every)
        last = ""
        while not stop.is_set():
            if self.watchdog_interval:
                self.send(WATCHDOG=1)
            text = status()
            if text != last:
                self.status(text)
                last = text
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), tick)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
