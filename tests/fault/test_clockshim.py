"""The clock shim: a node process's realtime jumps, its monotonic clock runs at
a chosen rate, and its timed waits neither hang nor spin."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jepsen_like.clock import ClockControl, build_shim

from .conftest import requires_compiler

pytestmark = requires_compiler

CHILD = r"""
import sys, threading, time
for line in sys.stdin:
    cmd = line.strip()
    if cmd == "now":
        print(time.monotonic_ns(), time.time_ns(), flush=True)
    elif cmd == "wait":
        start = time.monotonic()
        threading.Event().wait(0.05)
        print(time.monotonic() - start, flush=True)
"""
ANSWER_TIMEOUT_S = 10.0


class Child:
    def __init__(self, shim: Path, control: Path) -> None:
        env = {**os.environ, "LD_PRELOAD": str(shim), "RMJ_CLOCK_FILE": str(control)}
        self.proc = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)

    def ask(self, cmd: str) -> list[float]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], ANSWER_TIMEOUT_S)
        assert ready, f"the child did not answer {cmd!r} within {ANSWER_TIMEOUT_S}s (a hang)"
        return [float(x) for x in self.proc.stdout.readline().split()]

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


@pytest.fixture
def child(tmp_path: Path) -> Iterator[tuple[Child, ClockControl]]:
    shim = build_shim(tmp_path / "build")
    control = ClockControl(tmp_path / "clock.ctl")
    c = Child(shim, control.path)
    try:
        yield c, control
    finally:
        c.close()
        control.close()


def test_realtime_jumps_and_monotonic_does_not(child: tuple[Child, ClockControl]) -> None:
    c, control = child
    mono, wall = c.ask("now")
    assert abs(wall - time.time_ns()) < 0.5e9
    assert abs(mono - time.monotonic_ns()) < 0.5e9
    control.jump_realtime(5)
    mono, wall = c.ask("now")
    assert abs(wall - time.time_ns() - 5e9) < 0.5e9
    assert abs(mono - time.monotonic_ns()) < 0.5e9
    control.set_realtime_offset(-7)
    _, wall = c.ask("now")
    assert abs(wall - time.time_ns() + 7e9) < 0.5e9
    assert c.ask("wait")[0] < 1.0  # a timed wait under a jumped realtime returns


def test_monotonic_rate_and_waits(child: tuple[Child, ClockControl]) -> None:
    c, control = child
    control.set_monotonic_rate(0.5)
    start_child, _ = c.ask("now")
    start = time.monotonic_ns()
    # Poll the child's clock until a third of a second has passed here.
    while time.monotonic_ns() - start < 0.3e9:
        c.ask("now")
    end_child, _ = c.ask("now")
    elapsed = time.monotonic_ns() - start
    ratio = (end_child - start_child) / elapsed
    assert 0.4 < ratio < 0.6, ratio
    waited = c.ask("wait")[0]  # measured on the child's (slow) clock
    assert 0.04 < waited < 0.5, waited
    control.reset()
    a, _ = c.ask("now")
    b, _ = c.ask("now")
    assert b >= a  # reset never steps the monotonic clock back


def test_a_malformed_control_file_means_no_skew(tmp_path: Path) -> None:
    shim = build_shim(tmp_path / "build")
    bad = tmp_path / "bad.ctl"
    bad.write_bytes(b"\x01" * 48)
    c = Child(shim, bad)
    try:
        mono, wall = c.ask("now")
        assert abs(wall - time.time_ns()) < 0.5e9
        assert abs(mono - time.monotonic_ns()) < 0.5e9
    finally:
        c.close()
