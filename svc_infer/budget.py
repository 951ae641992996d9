"""The per-batch decoding memory budget of the image pipeline (pipeline.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class DecodeBudget:
    """Bytes of decoding memory a batch may hold at once, handed out first come, first
    served; `peak` is the most held at any time (tests and metrics read it)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.held = 0
        self.peak = 0
        self._turn = asyncio.Lock()  # FIFO: a large request is not overtaken forever
        self._freed = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def hold(self, amount: int) -> AsyncIterator[None]:
        """Wait until `amount` (at most the capacity) is free, hold it for the block."""
        if amount > self.capacity:
            raise ValueError(f"{amount} bytes exceed the budget of {self.capacity}")
        async with self._turn, self._freed:
            await self._freed.wait_for(lambda: self.held + amount <= self.capacity)
            self.held += amount
            self.peak = max(self.peak, self.held)
        try:
            yield
        finally:
            async with self._freed:
                self.held -= amount
                self._freed.notify_all()
