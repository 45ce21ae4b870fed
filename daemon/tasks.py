"""One owner for the tasks a daemon runs per file, and for the writes they must finish.

The shape of aiojobs' ``Scheduler`` (``spawn``, ``shield``, ``wait_and_close``), kept
small: every task is held (none is lost to the garbage collector), every error is
surfaced, a shielded write finishes even when its caller is cancelled, and closing
waits for what is running before it cancels the rest.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, TypeVar

T = TypeVar("T")


class Tasks:
    def __init__(self, on_error: Callable[[asyncio.Task[Any], BaseException], None]) -> None:
        self._running: set[asyncio.Task[Any]] = set()
        self._shields: set[asyncio.Task[Any]] = set()
        self._on_error = on_error

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._running.add(task)
        task.add_done_callback(self._done)
        return task

    async def shield(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run *coro* to its end even if the caller is cancelled; a close waits for it."""
        task = asyncio.create_task(coro)
        self._shields.add(task)
        task.add_done_callback(self._shields.discard)
        return await asyncio.shield(task)

    @property
    def running(self) -> list[asyncio.Task[Any]]:
        return [task for task in self._running if not task.done()]

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._running.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._on_error(task, task.exception())  # type: ignore[arg-type]

    async def wait(self, tasks: Iterable[asyncio.Task[Any]], seconds: float) -> None:
        tasks = [task for task in tasks if not task.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=seconds)

    async def cancel_running(self) -> int:
        """Cancel the tasks still running and wait until they are gone; how many."""
        left = self.running
        for task in left:
            task.cancel()
        await asyncio.gather(*left, return_exceptions=True)
        return len(left)

    async def wait_shields(self, seconds: float) -> None:
        """Give the shielded writes *seconds*; what is cut short is redone at the next start."""
        await self.wait(self._shields, seconds)
