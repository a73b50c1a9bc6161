"""Injectable clocks. Leases and staleness use the monotonic clock; record
timestamps use wall time, chosen by the leader before proposing and carried in
the log (apply never reads a clock)."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def wall_ms(self) -> int: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def wall_ms(self) -> int:
        return time.time_ns() // 1_000_000


class ManualClock:
    """A clock that tests drive by hand."""

    def __init__(self, monotonic_s: float = 1000.0, wall_ms: int = 1_763_700_000_000) -> None:
        self._mono = monotonic_s
        self._wall = wall_ms

    def monotonic(self) -> float:
        return self._mono

    def wall_ms(self) -> int:
        return self._wall

    def advance(self, seconds: float) -> None:
        self._mono += seconds
        self._wall += int(seconds * 1000)
