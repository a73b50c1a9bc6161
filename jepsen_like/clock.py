"""Clock faults for one node process: the writer side of ``clockshim.c``.

``build_shim(dir)`` compiles the preload library (once per source version);
``ClockControl(path)`` owns one node's control file. A node started with
``LD_PRELOAD=<shim>`` and ``RMJ_CLOCK_FILE=<path>`` sees:

- realtime = real + ``real_offset``: ``jump_realtime`` / ``set_realtime_offset``
  step it (what an operator's ``date -s`` or an NTP step does);
- monotonic = a line of slope ``rate`` through an anchor: ``set_monotonic_rate``
  makes the clock run fast or slow from now on, continuously;
  ``jump_monotonic`` steps it (a fault no healthy Linux clock shows, kept for
  harsher experiments).

The shim maps absolute deadlines back to the real clock, so a skewed node waits
as long as it believes it waits. See clockshim.c for what it cannot map.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import shutil
import struct
import subprocess
import time
from pathlib import Path

SHIM_SOURCE = Path(__file__).with_name("clockshim.c")
CONTROL_BYTES = 48
MAGIC = struct.unpack("<Q", b"RMJCLK01")[0]
PPB = 1_000_000_000
_LAYOUT = struct.Struct("=Qqqqq")  # seq, real_offset, anchor_real, anchor_fake, rate_ppb
_MAGIC_AT = 40


class ClockShimError(RuntimeError):
    """The shim cannot be built or loaded here."""


def build_shim(build_dir: Path) -> Path:
    """Compile clockshim.c into ``build_dir`` (reused when the source is unchanged)."""
    source = SHIM_SOURCE.read_bytes()
    digest = hashlib.sha256(source).hexdigest()[:16]
    target = build_dir / f"clockshim-{digest}.so"
    if target.exists():
        return target
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise ClockShimError("no C compiler (cc/gcc) to build the clock shim; apt-get install gcc")
    build_dir.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    proc = subprocess.run(
        [compiler, "-shared", "-fPIC", "-O2", "-Wall", "-o", str(tmp), str(SHIM_SOURCE), "-ldl", "-lpthread"],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise ClockShimError(f"building the clock shim failed:\n{proc.stderr}")
    os.replace(tmp, target)
    return target


class ClockControl:
    """One node's clock. All times are CLOCK_MONOTONIC / CLOCK_REALTIME of this
    machine (network namespaces share them)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with open(path, "wb") as fh:
            fh.write(b"\0" * CONTROL_BYTES)
        self._fd = os.open(path, os.O_RDWR)
        self._map = mmap.mmap(self._fd, CONTROL_BYTES, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.seq = 0
        self.real_offset_ns = 0
        self.anchor_real_ns = 0
        self.anchor_fake_ns = 0
        self.rate_ppb = PPB
        self._publish()
        struct.pack_into("=Q", self._map, _MAGIC_AT, MAGIC)

    def _publish(self) -> None:
        self.seq += 1  # odd: readers wait
        struct.pack_into("=Q", self._map, 0, self.seq)
        _LAYOUT.pack_into(
            self._map, 0, self.seq, self.real_offset_ns, self.anchor_real_ns, self.anchor_fake_ns, self.rate_ppb
        )
        self.seq += 1  # even: stable
        struct.pack_into("=Q", self._map, 0, self.seq)

    def fake_monotonic_ns(self, real_ns: int | None = None) -> int:
        real = time.monotonic_ns() if real_ns is None else real_ns
        return self.anchor_fake_ns + (real - self.anchor_real_ns) * self.rate_ppb // PPB

    # -- faults ----------------------------------------------------------------
    def set_realtime_offset(self, offset_s: float) -> None:
        self.real_offset_ns = int(offset_s * 1e9)
        self._publish()

    def jump_realtime(self, delta_s: float) -> None:
        self.set_realtime_offset(self.real_offset_ns / 1e9 + delta_s)

    def set_monotonic_rate(self, rate: float) -> None:
        """From now on the node's monotonic clock advances ``rate`` seconds per
        real second (0.92: 8 % slow)."""
        if not 0.1 <= rate <= 10:
            raise ValueError(f"clock rate {rate} out of range")
        now = time.monotonic_ns()
        self.anchor_fake_ns = self.fake_monotonic_ns(now)
        self.anchor_real_ns = now
        self.rate_ppb = int(rate * PPB)
        self._publish()

    def jump_monotonic(self, delta_s: float) -> None:
        now = time.monotonic_ns()
        self.anchor_fake_ns = self.fake_monotonic_ns(now) + int(delta_s * 1e9)
        self.anchor_real_ns = now
        self._publish()

    def reset(self) -> None:
        """Realtime back to true time; monotonic back to rate 1 (it keeps the
        offset it accumulated: a monotonic clock never steps back)."""
        self.real_offset_ns = 0
        now = time.monotonic_ns()
        self.anchor_fake_ns = self.fake_monotonic_ns(now)
        self.anchor_real_ns = now
        self.rate_ppb = PPB
        self._publish()

    def state(self) -> dict[str, float]:
        return {
            "realtime_offset_s": self.real_offset_ns / 1e9,
            "monotonic_rate": self.rate_ppb / PPB,
            "monotonic_offset_s": (self.fake_monotonic_ns() - time.monotonic_ns()) / 1e9,
        }

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)
