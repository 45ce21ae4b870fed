"""The embedded Open Connectors simulator: the bulk API on aiohttp.web, with fault injection.

Its names are imported when first used (PEP 562), so `bulkdrop status` and the other
commands that never start it do not pay for importing aiohttp.web."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from daemon.sim.app import create_app
    from daemon.sim.config import SimConfig
    from daemon.sim.server import SimServer
    from daemon.sim.state import Job, Simulator

_HOMES = {"create_app": "daemon.sim.app", "SimConfig": "daemon.sim.config",
          "SimServer": "daemon.sim.server", "Job": "daemon.sim.state",
          "Simulator": "daemon.sim.state"}
__all__ = ["Job", "SimConfig", "SimServer", "Simulator", "create_app"]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
