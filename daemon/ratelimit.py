"""A request rate an API is kept to: no sliding one-second window holds more than
``per_second`` requests.

A token bucket holding a second's worth of tokens would let twice that through at a
window's edge; instead each request waits until the one ``per_second`` before it was sent
a second ago (plus a margin for the way to the API), in the order they asked.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

# Requests that leave a second apart can arrive a little closer (one delayed on its way).
MARGIN_SECONDS = 0.05


class RateLimit:
    def __init__(self, per_second: int) -> None:
        self.per_second = per_second
        self._sent: deque[float] = deque(maxlen=max(per_second, 1))
        self._turn = asyncio.Lock()  # first come, first served

    async def wait(self) -> None:
        """Return when one more request may go (at once when there is no limit)."""
        if not self.per_second:
            return
        async with self._turn:
            if len(self._sent) == self.per_second:
                delay = self._sent[0] + 1.0 + MARGIN_SECONDS - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            self._sent.append(time.monotonic())


def busiest_second(times: list[float]) -> int:
    """The most of *times* (seconds) that any sliding one-second window holds."""
    ordered = sorted(times)
    most = start = 0
    for end, at in enumerate(ordered):
        while at - ordered[start] >= 1.0:
            start += 1
        most = max(most, end - start + 1)
    return most
