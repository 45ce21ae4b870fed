"""The embedded Open Connectors simulator: the bulk API on aiohttp.web, with fault injection."""

from daemon.sim.app import create_app
from daemon.sim.config import SimConfig
from daemon.sim.server import SimServer
from daemon.sim.state import Job, Simulator

__all__ = ["Job", "SimConfig", "SimServer", "Simulator", "create_app"]
