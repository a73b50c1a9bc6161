"""A text progress bar for long admin work (replica moves), on stderr.

On a terminal it redraws one line in place; otherwise (a pipe, a log file, CI) it
prints a plain line only when the count changes, so logs stay short and
readable. No I/O besides writing to the given stream; the clock is injectable."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

BAR_CELLS = 30


class Progress:
    def __init__(
        self,
        label: str,
        total: int,
        stream: TextIO,
        *,
        tty: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label = label
        self.total = max(0, total)
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self._clock = clock
        self._start = clock()
        self._done: int | None = None
        self._width = 0

    def line(self, done: int, detail: str = "") -> str:
        done = min(max(0, done), self.total)
        filled = BAR_CELLS if self.total == 0 else BAR_CELLS * done // self.total
        bar = "#" * filled + "." * (BAR_CELLS - filled)
        text = f"{self.label} [{bar}] {done}/{self.total} {self._clock() - self._start:.0f}s"
        return f"{text} {detail}".rstrip()

    def update(self, done: int, detail: str = "") -> None:
        if self.tty:
            text = self.line(done, detail)
            self.stream.write("\r" + text.ljust(self._width))
            self._width = max(self._width, len(text))
            self.stream.flush()
        elif done != self._done:
            self.stream.write(self.line(done, detail) + "\n")
            self.stream.flush()
        self._done = done

    def finish(self, message: str) -> None:
        """End the bar with a final line."""
        if self.tty and self._done is not None:
            self.stream.write("\r" + " " * self._width + "\r")
        self.stream.write(f"{self.label}: {message} ({self._clock() - self._start:.1f}s)\n")
        self.stream.flush()
