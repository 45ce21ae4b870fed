"""A request rate an API is kept to: no sliding one-second window, as the API sees the
requests arrive, holds more than ``per_second`` of them.

A token bucket holding a second's worth of tokens would let twice that through at a
window's edge. Instead each request goes only once the one ``per_second`` before it
has surely arrived a second ago: it has arrived when it is answered (or fails), and at
the latest :data:`ARRIVED_WITHIN` after it left (a long upload's answer comes late, its
start did not). Timing the sending alone is not enough: a request that leaves a moment
late (a busy event loop, a new connection) can arrive closer than a second to the one
``per_second`` after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator

# A request still unanswered this long after it left has reached the API by then.
ARRIVED_WITHIN = 0.5
MARGIN_SECONDS = 0.01  # for the clocks' granularity


class _Sent:
    __slots__ = ("answered", "at", "done")

    def __init__(self) -> None:
        self.at = time.monotonic()
        self.answered: float | None = None
        self.done = asyncio.Event()

    def arrived_by(self) -> float:
        """When it had surely arrived (so far as is known now)."""
        latest = self.at + ARRIVED_WITHIN
        return latest if self.answered is None else min(self.answered, latest)


class RateLimit:
    def __init__(self, per_second: int) -> None:
        self.per_second = per_second
        self._sent: deque[_Sent] = deque(maxlen=max(per_second, 1))
        self._turn = asyncio.Lock()  # first come, first served

    @contextlib.asynccontextmanager
    async def request(self) -> AsyncIterator[None]:
        """Hold one request's place: entered when it may go (at once when there is no
        limit), left once it is answered or has failed."""
        if not self.per_second:
            yield
            return
        async with self._turn:
            if len(self._sent) == self.per_second:
                await self._after(self._sent[0])
            sent = _Sent()
            self._sent.append(sent)
        try:
            yield
        finally:
            sent.answered = time.monotonic()
            sent.done.set()

    async def _after(self, first: _Sent) -> None:
        """Wait until *first* arrived a second ago."""
        if first.answered is None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, first.at + ARRIVED_WITHIN
                                               - time.monotonic())):
                    await first.done.wait()
        delay = first.arrived_by() + 1.0 + MARGIN_SECONDS - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


def busiest_second(times: list[float]) -> int:
    """The most of *times* (seconds) that any sliding one-second window holds."""
    ordered = sorted(times)
    most = start = 0
    for end, at in enumerate(ordered):
        while at - ordered[start] >= 1.0:
            start += 1
        most = max(most, end - start + 1)
    return most
