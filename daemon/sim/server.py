"""Serving a Simulator over real HTTP: an async context manager for tests and the CLI."""

from __future__ import annotations

from types import TracebackType

from aiohttp import web

from daemon.sim.app import API_PREFIX, create_app
from daemon.sim.state import Simulator


class SimServer:
    """`async with SimServer(sim, port=0) as server:` serves `create_app(sim)`.

    On exit, requests still running get `shutdown_timeout` seconds, then pending
    callbacks are cancelled.
    """

    def __init__(
        self,
        sim: Simulator,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        shutdown_timeout: float = 2.0,
    ) -> None:
        self.sim = sim
        self.host = host
        self._requested_port = port
        self._shutdown_timeout = shutdown_timeout
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        runner = web.AppRunner(create_app(self.sim), shutdown_timeout=self._shutdown_timeout)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self._requested_port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> SimServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        if self._runner is None:
            raise RuntimeError("SimServer is not running")
        return int(self._runner.addresses[0][1])

    @property
    def root_url(self) -> str:
        """`http://host:port`, where the `/_sim` control routes live."""
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        if host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The API base URL, e.g. `http://127.0.0.1:8471/elements/api-v2`."""
        return self.root_url + API_PREFIX
