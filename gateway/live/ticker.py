"""Ticker: one timer wheel per event loop that rings the idle waits of every local stream.

An idle stream waits for its wakeup event or its next heartbeat. With ``asyncio.timeout``
each of those waits is a timer handle plus a task cancellation when it expires (an exception
thrown through the stream's coroutine stack); with thousands of idle viewers that is most of
the work of a heartbeat round. The ticker keeps alarms in buckets of :data:`RESOLUTION`
seconds and has at most one loop timer, for the earliest non-empty bucket; ringing an alarm
just sets the waiter's event. Alarms never ring before their deadline (an alarm found early
in its bucket is put back), and a cancelled alarm never rings.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import weakref
from collections.abc import Callable

RESOLUTION = 0.02  # seconds per bucket: how late an alarm may ring, at most, when idle


class Alarm:
    """One scheduled call of ``callback`` at ``deadline`` (loop time). ``rang`` once called."""

    __slots__ = ("callback", "deadline", "rang")

    def __init__(self, deadline: float, callback: Callable[[], object]) -> None:
        self.deadline = deadline
        self.callback: Callable[[], object] | None = callback
        self.rang = False

    def cancel(self) -> None:
        """Never ring (a no-op once rung)."""
        self.callback = None


class Ticker:
    """The alarms of one event loop; get it with :func:`ticker`."""

    def __init__(self, loop: asyncio.AbstractEventLoop, resolution: float = RESOLUTION) -> None:
        self.loop = loop
        self.resolution = resolution
        self._buckets: dict[int, list[Alarm]] = {}
        self._ticks: list[int] = []  # heap of the buckets' tick numbers
        self._timer: asyncio.TimerHandle | None = None
        self._timer_tick: int | None = None

    def call_at(self, deadline: float, callback: Callable[[], object]) -> Alarm:
        """Ring ``callback`` once ``loop.time() >= deadline`` (within one resolution)."""
        alarm = Alarm(deadline, callback)
        self._add(alarm)
        return alarm

    def call_later(self, delay: float, callback: Callable[[], object]) -> Alarm:
        """Ring ``callback`` ``delay`` seconds from now."""
        return self.call_at(self.loop.time() + max(0.0, delay), callback)

    async def wait(self, event: asyncio.Event, timeout: float) -> bool:
        """Wait for ``event`` up to ``timeout`` seconds; True if it was set, False on timeout.

        On timeout the alarm *sets* ``event``: use it only for an event its waiter owns and
        clears before waiting (a stream's wakeup), never for one others also watch.
        """
        if event.is_set():
            return True
        alarm = self.call_later(timeout, event.set)
        try:
            await event.wait()
        finally:
            alarm.cancel()
        return not alarm.rang

    def _add(self, alarm: Alarm) -> None:
        tick = math.ceil(alarm.deadline / self.resolution)
        bucket = self._buckets.get(tick)
        if bucket is None:
            self._buckets[tick] = [alarm]
            heapq.heappush(self._ticks, tick)
            if self._timer_tick is None or tick < self._timer_tick:
                self._arm(tick)
        else:
            bucket.append(alarm)

    def _arm(self, tick: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_tick = tick
        self._timer = self.loop.call_at(tick * self.resolution, self._ring)

    def _ring(self) -> None:
        self._timer = self._timer_tick = None
        now = self.loop.time()
        due: list[Alarm] = []
        while self._ticks and self._ticks[0] * self.resolution <= now:
            due.extend(self._buckets.pop(heapq.heappop(self._ticks)))
        for alarm in due:
            callback = alarm.callback
            if callback is None:
                continue
            if alarm.deadline > now:  # the loop may run a timer a clock resolution early
                self._add(alarm)
                continue
            alarm.callback = None
            alarm.rang = True
            callback()
        if self._ticks and self._timer is None:
            self._arm(self._ticks[0])


_TICKERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Ticker] = weakref.WeakKeyDictionary()


def ticker() -> Ticker:
    """The running loop's ticker (created on first use)."""
    loop = asyncio.get_running_loop()
    t = _TICKERS.get(loop)
    if t is None:
        t = _TICKERS[loop] = Ticker(loop)
    return t
