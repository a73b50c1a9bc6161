"""The node's engine host: a process of its own that runs every replica's
engines (raftmem.indexing.engines), and the node's side of it.

Why a process (raftmem/indexing/DESIGN.md, "The engines in a process of their
own"): a thread absorbing a batch holds the GIL while it builds documents and
inside tantivy-py's calls, and the node's event loop, which serves HTTP and
drives every shard's Raft pipeline, got it back only at CPython's switch
interval. In a process of their own the engines have a GIL of their own; the
node's threads only pickle records and wait on a socket (GIL released).

The wire: an abstract Unix socket (nothing on disk, nothing on the network);
each node thread that calls has its own connection (thread-local), and the
host serves each connection on a thread of its own, so a search never waits
behind another replica's commit. A frame is a 4-byte length and a pickle:
`(method, directory, args)` one way, `(outcome, value or error text)` the
other (outcome "ok", "error", or "lost": no engines of that directory here,
they died with an earlier host).
Both ends are this module; nothing else can reach the socket but processes of
the same user that know its random name.

Life: the host is started from the node's event-loop thread and dies with it
(PR_SET_PDEATHSIG: a node killed with -9 takes its host along, so a restarted
node's host can take tantivy's writer locks; and EOF on its stdin when the
node closes it). When the host dies under a running node, every call fails
with `EngineLost`; a replica's absorber then asks for a new host (`revive`)
and opens its engines again from their durable watermarks (the change log is
their write-ahead log, as after a node crash).
"""

from __future__ import annotations

import ctypes
import logging
import os
import pickle
import secrets
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import allocator
from ..textindex import Hit, Restriction
from .engines import EngineError, EngineLost, EngineState, Nearest, ReplicaEngines

log = logging.getLogger(__name__)

_LENGTH = struct.Struct("<I")
CONNECT_TIMEOUT_S = 60.0  # the host imports tantivy, usearch and numpy first
STOP_TIMEOUT_S = 10.0
LOCK_WAIT_S = 10.0  # a dead host's writer locks go with it; a host that is dying may still hold them
PR_SET_PDEATHSIG = 1
# What a node may ask of an engine (anything else is refused).
METHODS = frozenset({
    "state", "write", "begin_rebuild", "commit", "save_vectors", "search", "term_stats", "nearest", "resolve",
    "revs", "vectors_held", "all_keys",
})


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def _recv_frame(sock: socket.socket) -> bytes | None:
    head = _recv_exact(sock, _LENGTH.size)
    if head is None:
        return None
    return _recv_exact(sock, _LENGTH.unpack(head)[0])


def _send_frame(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(_LENGTH.pack(len(payload)) + payload)


# -- the node's side -----------------------------------------------------------------------
class EngineHost:
    """The node's engine host process and the connections to it."""

    def __init__(self, nice: int = 0) -> None:
        self.nice = nice
        self.proc: subprocess.Popen[bytes] | None = None
        self.address = ""
        self.generation = 0
        self.restarts = 0
        self.calls = 0
        self._local = threading.local()
        self._lock = threading.Lock()
        self._socks: set[socket.socket] = set()  # every thread's, closed at stop

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> None:
        """Spawn the host (call from the event loop's thread: the host's death
        signal is tied to the thread that started it)."""
        self.address = f"\0raftmem-engines-{os.getpid()}-{secrets.token_hex(8)}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "raftmem.indexing.host", self.address.removeprefix("\0"), str(os.getpid()),
             str(self.nice)],
            stdin=subprocess.PIPE, close_fds=True,
        )
        self.generation += 1

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def revive(self) -> bool:
        """A new host when this one died (True: one was started)."""
        if self.alive():
            return False
        if self.proc is not None:
            log.warning("engine host (pid %d) exited with %s: starting another", self.proc.pid, self.proc.returncode)
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        self.restarts += 1
        self.start()
        return True

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        with self._lock:
            socks, self._socks = self._socks, set()
        for sock in socks:
            sock.close()
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()  # the host exits on EOF
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _connection(self) -> socket.socket:
        local = self._local
        sock: socket.socket | None = getattr(local, "sock", None)
        if sock is not None and local.generation == self.generation:
            return sock
        if sock is not None:
            self._forget(sock)
        generation = self.generation
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        while True:
            if not self.alive():
                raise EngineLost("the engine host is not running")
            fresh = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                fresh.connect(self.address)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                fresh.close()
                if time.monotonic() > deadline:
                    raise EngineLost(f"the engine host did not listen within {CONNECT_TIMEOUT_S:.0f}s") from None
                time.sleep(0.02)
        local.sock, local.generation = fresh, generation
        with self._lock:
            self._socks.add(fresh)
        return fresh

    def _forget(self, sock: socket.socket) -> None:
        sock.close()
        self._local.sock = None
        with self._lock:
            self._socks.discard(sock)

    def call(self, method: str, directory: str, *args: Any) -> Any:
        """Run `method` of the engines of `directory` in the host (blocking: the GIL is released while it waits)."""
        sock = self._connection()
        self.calls += 1
        try:
            _send_frame(sock, pickle.dumps((method, directory, args), protocol=pickle.HIGHEST_PROTOCOL))
            reply = _recv_frame(sock)
        except OSError as e:
            reply = None
            log.debug("engine host connection: %s", e)
        if reply is None:
            self._forget(sock)
            raise EngineLost(f"the engine host went away during {method}")
        outcome, value = pickle.loads(reply)
        if outcome == "lost":
            raise EngineLost(value)
        if outcome != "ok":
            raise EngineError(value)
        return value


class RemoteEngines:
    """One replica's engines, in the node's engine host."""

    remote = True

    def __init__(self, host: EngineHost, directory: Path, heap_bytes: int) -> None:
        self.host = host
        self.directory = str(directory)
        self.generation = host.generation
        self._state: EngineState = host.call("open", self.directory, heap_bytes)

    def lost(self) -> bool:
        """The host they were opened in is gone (a replica with nothing to
        absorb learns it here, not at its next call)."""
        return self.host.generation != self.generation or not self.host.alive()

    def state(self) -> EngineState:
        return self._state

    def write(self, records: Sequence[Mapping[str, Any]], gone: Sequence[tuple[str, str]],
              raw: Sequence[bytes] = ()) -> None:
        self.host.call("write", self.directory, list(records), list(gone), list(raw))

    def begin_rebuild(self) -> None:
        self.host.call("begin_rebuild", self.directory)

    def commit(self, watermark: int) -> EngineState:
        self._state = self.host.call("commit", self.directory, watermark)
        return self._state

    def save_vectors(self) -> EngineState:
        self._state = self.host.call("save_vectors", self.directory)
        return self._state

    def close(self, save: bool) -> None:
        self.host.call("close", self.directory, save)

    def search(self, restriction: Restriction, terms: Sequence[tuple[str, float]], limit: int,
               order_by: str | None = None, descending: bool = True) -> list[Hit]:
        hits: list[Hit] = self.host.call("search", self.directory, restriction, list(terms), limit, order_by,
                                         descending)
        return hits

    def term_stats(self, terms: Sequence[str]) -> tuple[int, list[int]]:
        stats: tuple[int, list[int]] = self.host.call("term_stats", self.directory, list(terms))
        return stats

    def nearest(self, query: np.ndarray, restriction: Restriction, metric: str, count: int,
                first: int) -> Nearest | None:
        found: Nearest | None = self.host.call("nearest", self.directory, query, restriction, metric, count, first)
        return found

    def resolve(self, vkeys: Sequence[int]) -> dict[int, str]:
        keys: dict[int, str] = self.host.call("resolve", self.directory, list(vkeys))
        return keys

    def revs(self) -> list[tuple[str, int]]:
        revs: list[tuple[str, int]] = self.host.call("revs", self.directory)
        return revs

    def vectors_held(self, keys: dict[int, list[int]]) -> dict[int, tuple[int, int]]:
        held: dict[int, tuple[int, int]] = self.host.call("vectors_held", self.directory, keys)
        return held

    def all_keys(self) -> list[str]:
        keys: list[str] = self.host.call("all_keys", self.directory)
        return keys


# -- the host process ----------------------------------------------------------------------
class _NotOpen(Exception):
    pass


class _Host:
    def __init__(self) -> None:
        self.engines: dict[str, ReplicaEngines] = {}
        self.lock = threading.Lock()

    def open(self, directory: str, heap_bytes: int) -> EngineState:
        with self.lock:
            old = self.engines.pop(directory, None)
        if old is not None:
            old.close(save=False)  # the node's replica started again without closing (it lost its host call)
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                engines = ReplicaEngines(Path(directory), heap_bytes)
                break
            except ValueError as e:
                if "lock" not in str(e).lower() or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        with self.lock:
            self.engines[directory] = engines
        return engines.state()

    def run(self, method: str, directory: str, args: tuple[Any, ...]) -> Any:
        if method == "open":
            return self.open(directory, *args)
        with self.lock:
            engines = self.engines.get(directory)
        if engines is None:
            raise _NotOpen(f"no engines open for {directory} in this engine host (pid {os.getpid()})")
        if method == "close":
            with self.lock:
                self.engines.pop(directory, None)
            engines.close(*args)
            return None
        if method not in METHODS:
            raise ValueError(f"unknown engine method {method!r}")
        return getattr(engines, method)(*args)

    def serve(self, conn: socket.socket) -> None:
        with conn:
            while True:
                frame = _recv_frame(conn)
                if frame is None:
                    return
                method, directory, args = pickle.loads(frame)
                try:
                    reply: tuple[str, Any] = ("ok", self.run(method, directory, args))
                except _NotOpen as e:
                    reply = ("lost", str(e))
                except Exception as e:  # noqa: BLE001 (sent back to the caller, who raises it)
                    log.exception("engine call %s on %s failed", method, directory)
                    reply = ("error", f"{type(e).__name__}: {e}")
                _send_frame(conn, pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL))


def _die_with(parent: int) -> None:
    """SIGKILL when the node dies (even by -9), and exit on EOF of stdin (a node that stops)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        log.warning("engine host: no PR_SET_PDEATHSIG here; relying on stdin")
    if os.getppid() != parent:
        os._exit(0)  # the node died before the signal was set

    def watch_stdin() -> None:
        while sys.stdin.buffer.read(4096):
            pass
        os._exit(0)

    threading.Thread(target=watch_stdin, name="stdin", daemon=True).start()


def main(argv: list[str]) -> None:
    address, parent, nice = "\0" + argv[0], int(argv[1]), int(argv[2])
    if nice:
        os.nice(nice)
    allocator.tune()  # before any thread starts (tantivy's per-commit buffers: raftmem/allocator.py)
    logging.basicConfig(level=logging.WARNING, format="engine-host %(levelname)s %(name)s: %(message)s")
    _die_with(parent)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(address)
    listener.listen(64)
    host = _Host()
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=host.serve, args=(conn,), name="engines", daemon=True).start()


if __name__ == "__main__":
    main(sys.argv[1:])
