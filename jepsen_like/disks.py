"""Node data directories: plain, a size-limited tmpfs (disk full), or a
power-loss FUSE layer (``powerfs``).

- ``SmallDisk``: a tmpfs of a fixed size mounted on the node's data directory.
  ``fill()`` writes a filler file until the filesystem answers ENOSPC;
  ``free()`` deletes it ("space returns").
- ``PowerDisk``: ``python -m jepsen_like.powerfs BACKING MOUNT`` in its own
  process. ``cut()`` is the power cut (SIGKILL of the FUSE process, which drops
  every unsynced write, then a lazy unmount); ``start()`` mounts again over the
  same backing directory.

Mounts are created only on directories of the run and removed by exact path.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from jepsen_like.resources import Teardown, run_command

log = logging.getLogger(__name__)

FILL_CHUNK_BYTES = 1 << 20
MOUNT_WAIT_S = 15.0
POLL_S = 0.02


def _is_mounted(path: Path) -> bool:
    target = str(path.resolve())
    with open("/proc/self/mounts", encoding="utf-8") as fh:
        return any(line.split()[1] == target for line in fh if len(line.split()) > 1)


def unmount(path: Path) -> None:
    """Lazy-unmount ``path`` if something is mounted on it."""
    if _is_mounted(path):
        run_command(["umount", "-l", str(path.resolve())])


class SmallDisk:
    def __init__(self, path: Path, size_mb: int, teardown: Teardown) -> None:
        self.path = path
        self.size_mb = size_mb
        self.teardown = teardown
        self.filler = path / ".rmj-filler"
        self.filled_bytes = 0

    def mount(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        run_command(["mount", "-t", "tmpfs", "-o", f"size={self.size_mb}m,mode=0755", "rmj-small", str(self.path)])
        self.teardown.push(f"unmount {self.path}", lambda: unmount(self.path))

    def fill(self) -> int:
        """Fill the disk to the last byte; returns the bytes written."""
        written = 0
        chunk = b"\0" * FILL_CHUNK_BYTES
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            # Most of it at once (tmpfs allocates without writing), the rest by writes.
            sv = os.statvfs(self.path)
            bulk = sv.f_bavail * sv.f_frsize - 4 * FILL_CHUNK_BYTES
            if bulk > 0:
                try:
                    os.posix_fallocate(fd, os.fstat(fd).st_size, bulk)
                    written += bulk
                except OSError as exc:
                    if exc.errno not in (errno.ENOSPC, errno.EOPNOTSUPP):
                        raise
            for size in (FILL_CHUNK_BYTES, 4096, 1):
                while True:
                    try:
                        n = os.write(fd, chunk[:size])
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
                        break
                    written += n
                    if n < size:
                        break
        finally:
            os.close(fd)
        self.filled_bytes += written
        return written

    def free(self) -> None:
        try:
            self.filler.unlink()
        except FileNotFoundError:
            pass
        self.filled_bytes = 0

    def usage(self) -> dict[str, int]:
        sv = os.statvfs(self.path)
        return {"size_bytes": sv.f_blocks * sv.f_frsize, "free_bytes": sv.f_bavail * sv.f_frsize}


class PowerDisk:
    def __init__(self, path: Path, backing: Path, log_path: Path, teardown: Teardown,
                 pids: list[int] | None = None) -> None:
        self.pids = pids if pids is not None else []
        self.path = path
        self.backing = backing
        self.log_path = log_path
        self.teardown = teardown
        self.proc: subprocess.Popen[bytes] | None = None
        self.cuts = 0
        self._registered = False

    def start(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        self.backing.mkdir(parents=True, exist_ok=True)
        if not self._registered:
            self._registered = True
            self.teardown.push(f"unmount powerfs {self.path}", self._stop)
        with open(self.log_path, "ab") as log_fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "jepsen_like.powerfs", str(self.backing), str(self.path)],
                stdout=log_fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=str(Path(__file__).resolve().parents[1]),
            )
        self.pids.append(self.proc.pid)
        deadline = time.monotonic() + MOUNT_WAIT_S
        while not _is_mounted(self.path):
            if self.proc.poll() is not None:
                raise RuntimeError(f"powerfs exited with {self.proc.returncode}; see {self.log_path}")
            if time.monotonic() > deadline:
                self._stop()
                raise RuntimeError(f"powerfs did not mount {self.path} within {MOUNT_WAIT_S}s")
            time.sleep(POLL_S)

    def cut(self) -> None:
        """Power cut: everything not fsynced is gone. Kill the node processes
        using the mount first."""
        self.cuts += 1
        self._stop()

    def _stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        unmount(self.path)
