"""Teardown bookkeeping: everything the harness creates outside its own process
(network namespaces, links, mounts, child processes) is registered here the
moment it exists, with the exact action that removes it.

``Teardown.run()`` undoes them newest first; each action runs once, and one that
fails is logged and does not stop the others. Every live ``Teardown`` is also run
at interpreter exit (``atexit``), and ``install_signal_handlers`` turns SIGTERM
and SIGHUP into KeyboardInterrupt so that ``finally`` blocks run on them as on
Ctrl-C. SIGKILL of the harness cannot be caught: ``python -m jepsen_like cleanup``
then removes what a dead run left, by its name prefix.
"""

from __future__ import annotations

import atexit
import logging
import signal
import subprocess
import threading
import weakref
from collections.abc import Callable, Sequence
from types import FrameType

log = logging.getLogger(__name__)

COMMAND_TIMEOUT_S = 30.0


class CommandError(RuntimeError):
    """A system command (ip, nft, mount...) failed."""


def run_command(argv: Sequence[str], *, input_text: str | None = None, check: bool = True) -> str:
    """Run a short system command; return stdout. Raises CommandError on failure
    when ``check``."""
    proc = subprocess.run(
        list(argv),
        input=input_text,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )
    if check and proc.returncode != 0:
        raise CommandError(f"{' '.join(argv)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


class Teardown:
    """A stack of undo actions."""

    _live: weakref.WeakSet[Teardown] = weakref.WeakSet()

    def __init__(self, name: str) -> None:
        self.name = name
        self._actions: list[tuple[str, Callable[[], None]]] = []
        self._lock = threading.Lock()
        Teardown._live.add(self)

    def push(self, what: str, action: Callable[[], None]) -> None:
        with self._lock:
            self._actions.append((what, action))

    def __len__(self) -> int:
        return len(self._actions)

    def run(self) -> list[str]:
        """Undo everything, newest first; returns the descriptions of the actions
        that failed."""
        failures: list[str] = []
        while True:
            with self._lock:
                if not self._actions:
                    break
                what, action = self._actions.pop()
            try:
                action()
            except Exception as exc:  # one failure must not leave the rest behind
                log.warning("teardown %s: %s failed: %s", self.name, what, exc)
                failures.append(f"{what}: {exc}")
        return failures

    @classmethod
    def run_all(cls) -> None:
        for teardown in list(cls._live):
            teardown.run()


atexit.register(Teardown.run_all)


def _raise_interrupt(signum: int, _frame: FrameType | None) -> None:
    # As SIGINT, so that inside asyncio.run its runner cancels the main task
    # (its SIGINT handler) instead of a KeyboardInterrupt landing in the middle
    # of the event loop's own code, which can leave futures that never finish
    # and hang the teardown. Where SIGINT is ignored (a background job) or not
    # Python's, the KeyboardInterrupt is raised here, as before.
    if signal.getsignal(signal.SIGINT) in (signal.SIG_IGN, signal.SIG_DFL, None):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.raise_signal(signal.SIGINT)


def install_signal_handlers() -> None:
    """SIGTERM and SIGHUP behave like Ctrl-C (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupt)
