"""Admission: at most ``slots`` checks run at once, up to ``queue`` more wait their turn in
order, and beyond that a request is refused at once, before its body is read.

A slot is released from whichever thread finishes the check (a worker's done-callback),
so ``release`` hands the slot over on the event loop.
"""

from __future__ import annotations

import asyncio
from collections import deque

__all__ = ["Admission", "QueueFull"]


class QueueFull(Exception):
    """Every slot is taken and the queue is full."""


class Admission:
    def __init__(self, slots: int, queue: int) -> None:
        self.slots, self.queue = slots, queue
        self.running = 0
        self.waiting: deque[asyncio.Future[None]] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None

    def admit(self) -> asyncio.Future[None] | None:
        """On the event loop: None to run now, or a future to await for a slot (FIFO)."""
        self._loop = asyncio.get_running_loop()
        if self.running < self.slots and not self.waiting:
            self.running += 1
            return None
        if len(self.waiting) >= self.queue:
            raise QueueFull
        ticket: asyncio.Future[None] = self._loop.create_future()
        self.waiting.append(ticket)
        return ticket

    def abandon(self, ticket: asyncio.Future[None]) -> None:
        """A waiter gave up (its time budget ran out, its client left): out of the queue, or, if a
        slot was handed to it meanwhile, the slot goes to the next."""
        if ticket in self.waiting:
            self.waiting.remove(ticket)
        elif ticket.done() and not ticket.cancelled():
            self._release()
        ticket.cancel()

    def release(self) -> None:
        """From any thread: a check finished; its slot goes to the first waiter, or is free."""
        loop = self._loop
        if loop is None or loop.is_closed():
            self.running -= 1
            return
        try:
            if asyncio.get_running_loop() is loop:
                self._release()
                return
        except RuntimeError:
            pass
        loop.call_soon_threadsafe(self._release)

    def _release(self) -> None:
        while self.waiting:
            ticket = self.waiting.popleft()
            if not ticket.done():
                ticket.set_result(None)  # the slot passes straight on: running stays the same
                return
        self.running -= 1
