"""The node's engine host: a process of its own that runs every replica's
engines (raftmem.indexing.engines), and the node's side of it.

Why a process (raftmem/indexing/DESIGN.md, "The engines in a process of their
own"): a thread absorbing a batch holds the GIL while it builds documents and
inside tantivy-py's calls, and the node's event loop, which serves HTTP and
drives every shard's Raft pipeline, got it back only at CPython's switch
interval. In a process of their own the engines have a GIL of their own; the
node's threads only pickle records and wait on a socket (GIL released).

The wire: an abstract Unix socket (nothing on disk, nothing on the network)
that the node binds and listens on before it starts the host, which inherits
the listening descriptor (the name is in no command line, and nobody can bind
it first); the host accepts only connections from the node's pid and user
(SO_PEERCRED), and the node only talks to a listener it created. Each node
thread that calls has its own connection (thread-local), and the host serves
each connection on a thread of its own, so a search never waits behind
another replica's commit. A frame is a 4-byte length (at most FRAME_MAX) and
a pickle: `(method, directory, token, args)` one way, `(outcome, value or
error text)` the other (outcome "ok", "error", or "lost": no engines of that
directory here under that open's token: they died with an earlier host, or
were opened again since).

Life: the host is started from the node's event-loop thread and dies with it
(PR_SET_PDEATHSIG: a node killed with -9 takes its host along, so a restarted
node's host can take tantivy's writer locks; and EOF on its stdin when the
node closes it); it ignores SIGINT and SIGTERM (a Ctrl-C or a process-group
SIGTERM reaches the node, which stops its indexes and then the host). When the
host dies under a running node, or a call gets no answer for CALL_TIMEOUT_S
(the host is then killed), every call fails with `EngineLost`; a replica's
absorber then asks for a new host (`revive`) and opens its engines again from
their durable watermarks (the change log is their write-ahead log, as after a
node crash).
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
FRAME_MAX = 1 << 30  # a rebuild's chunk is at most REBUILD_CHUNK_BYTES (replica.py), a check's keys a few MB
# A call the host does not answer in this long (it imports tantivy, usearch and
# numpy first; a rebuild's commit of a million documents takes seconds) is
# taken for a hung host: it is killed and the replicas reopen in another.
CALL_TIMEOUT_S = 600.0
STOP_TIMEOUT_S = 10.0
LOCK_WAIT_S = 10.0  # a dead host's writer locks go with it; a host that is dying may still hold them
PR_SET_PDEATHSIG = 1
# What a node may ask of an engine (anything else is refused).
METHODS = frozenset({
    "state", "write", "begin_rebuild", "commit", "save_vectors", "search", "term_stats", "nearest", "resolve",
    "revs", "vectors_held", "all_keys",
})


def _recv_exact(sock: socket.socket, n: int) -> bytearray | None:
    """`n` bytes, received in place (a rebuild's frames are megabytes: no copies)."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        read = sock.recv_into(view[got:])
        if not read:
            return None
        got += read
    return buf


def _recv_frame(sock: socket.socket) -> bytearray | None:
    head = _recv_exact(sock, _LENGTH.size)
    if head is None:
        return None
    size = _LENGTH.unpack(head)[0]
    if size > FRAME_MAX:
        raise ConnectionError(f"a frame of {size} bytes (at most {FRAME_MAX})")
    return _recv_exact(sock, size)


def _send_frame(sock: socket.socket, payload: bytes) -> None:
    if len(payload) > FRAME_MAX:
        raise ValueError(f"a frame of {len(payload)} bytes (at most {FRAME_MAX})")
    head = _LENGTH.pack(len(payload))
    sent = sock.sendmsg([head, payload])  # one system call for a call or an answer that fits the buffer
    if sent < len(head):
        sock.sendall(head[sent:])
        sent = len(head)
    if sent - len(head) < len(payload):
        sock.sendall(memoryview(payload)[sent - len(head):])


def _peer(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the other end (the listener's creator, seen from a connecting socket)."""
    pid, uid, gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    return pid, uid, gid


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
        proc = self.proc
        return proc.pid if proc is not None else None

    def start(self) -> None:
        """Spawn the host (call from the event loop's thread: the host's death
        signal is tied to the thread that started it), on a listener bound
        here first."""
        self.address = f"\0raftmem-engines-{os.getpid()}-{secrets.token_hex(16)}"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(self.address)
            listener.listen(64)
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "raftmem.indexing.host", str(listener.fileno()), str(os.getpid()),
                 str(self.nice)],
                stdin=subprocess.PIPE, close_fds=True, pass_fds=(listener.fileno(),),
            )
        finally:
            listener.close()  # the host holds it now
        self.generation += 1

    def alive(self) -> bool:
        proc = self.proc
        return proc is not None and proc.poll() is None

    def wait_ready(self) -> int:
        """Until the host answers (it imports tantivy, usearch and numpy first: about a
        second of CPU); its pid."""
        pid: int = self.call("ping", "", 0)
        return pid

    def kill(self) -> None:
        """A host that does not answer: killed (the replicas then revive another)."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            log.warning("engine host (pid %d) did not answer within %.0fs: killing it", proc.pid, CALL_TIMEOUT_S)
            proc.kill()

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
        if not self.alive():
            raise EngineLost("the engine host is not running")
        fresh = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            fresh.settimeout(CALL_TIMEOUT_S)
            fresh.connect(self.address)
            if _peer(fresh)[0] != os.getpid():  # the listener is ours, or the name was taken over
                raise ConnectionRefusedError("the engine host's address is held by another process")
        except OSError as e:
            fresh.close()
            raise EngineLost(f"cannot reach the engine host: {e}") from None
        with self._lock:
            self._socks.add(fresh)
        local.sock, local.generation = fresh, generation
        return fresh

    def _forget(self, sock: socket.socket) -> None:
        sock.close()
        self._local.sock = None
        with self._lock:
            self._socks.discard(sock)

    def call(self, method: str, directory: str, token: int, *args: Any) -> Any:
        """Run `method` of the engines of `directory` (opened as `token`) in
        the host (blocking: the GIL is released while it waits)."""
        sock = self._connection()
        self.calls += 1
        try:
            _send_frame(sock, pickle.dumps((method, directory, token, args), protocol=pickle.HIGHEST_PROTOCOL))
            reply = _recv_frame(sock)
        except TimeoutError:
            reply = None
            self.kill()
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
        self.token = secrets.randbits(62)  # this open's: a call under another is answered "lost"
        self._state: EngineState = host.call("open", self.directory, self.token, heap_bytes)

    def lost(self) -> bool:
        """The host they were opened in is gone (a replica with nothing to
        absorb learns it here, not at its next call)."""
        return self.host.generation != self.generation or not self.host.alive()

    def _call(self, method: str, *args: Any) -> Any:
        return self.host.call(method, self.directory, self.token, *args)

    def state(self) -> EngineState:
        return self._state

    def write(self, records: Sequence[Mapping[str, Any]], gone: Sequence[tuple[str, str]],
              raw: Sequence[bytes] = ()) -> None:
        self._call("write", list(records), list(gone), list(raw))

    def begin_rebuild(self) -> None:
        self._call("begin_rebuild")

    def commit(self, watermark: int) -> EngineState:
        self._state = self._call("commit", watermark)
        return self._state

    def save_vectors(self) -> EngineState:
        self._state = self._call("save_vectors")
        return self._state

    def close(self, save: bool) -> None:
        self._call("close", save)

    def search(self, restriction: Restriction, terms: Sequence[tuple[str, float]], limit: int,
               order_by: str | None = None, descending: bool = True) -> list[Hit]:
        hits: list[Hit] = self._call("search", restriction, list(terms), limit, order_by,
                                         descending)
        return hits

    def term_stats(self, terms: Sequence[str]) -> tuple[int, list[int]]:
        stats: tuple[int, list[int]] = self._call("term_stats", list(terms))
        return stats

    def nearest(self, query: np.ndarray, restriction: Restriction, metric: str, count: int,
                first: int) -> Nearest | None:
        found: Nearest | None = self._call("nearest", query, restriction, metric, count, first)
        return found

    def resolve(self, vkeys: Sequence[int]) -> dict[int, str]:
        keys: dict[int, str] = self._call("resolve", list(vkeys))
        return keys

    def revs(self) -> list[tuple[str, int]]:
        revs: list[tuple[str, int]] = self._call("revs")
        return revs

    def vectors_held(self, keys: dict[int, list[int]]) -> dict[int, tuple[int, int]]:
        held: dict[int, tuple[int, int]] = self._call("vectors_held", keys)
        return held

    def all_keys(self) -> list[str]:
        keys: list[str] = self._call("all_keys")
        return keys


# -- the host process ----------------------------------------------------------------------
class _NotOpen(Exception):
    pass


class _Host:
    def __init__(self, parent: int) -> None:
        self.parent = parent
        self.engines: dict[str, tuple[int, ReplicaEngines]] = {}  # directory -> (its open's token, engines)
        self.lock = threading.Lock()

    def open(self, directory: str, token: int, heap_bytes: int) -> EngineState:
        with self.lock:
            old = self.engines.pop(directory, None)
        if old is not None:
            old[1].close(save=False)  # the replica opened again without closing (a call of its was lost)
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
            self.engines[directory] = (token, engines)
        return engines.state()

    def run(self, method: str, directory: str, token: int, args: tuple[Any, ...]) -> Any:
        if method == "ping":
            return os.getpid()
        if method == "open":
            return self.open(directory, token, *args)
        with self.lock:
            opened = self.engines.get(directory)
        if opened is None or opened[0] != token:
            raise _NotOpen(f"the engines of {directory} are not open in this engine host (pid {os.getpid()}) "
                           "under this open (an earlier host died, or they were opened again)")
        engines = opened[1]
        if method == "close":
            with self.lock:
                if self.engines.get(directory) is opened:
                    del self.engines[directory]
            engines.close(*args)
            return None
        if method not in METHODS:
            raise ValueError(f"unknown engine method {method!r}")
        return getattr(engines, method)(*args)

    def serve(self, conn: socket.socket) -> None:
        with conn:
            pid, uid, _gid = _peer(conn)
            if pid != self.parent or uid != os.getuid():
                log.warning("engine host: refused a connection from pid %d uid %d", pid, uid)
                return
            while True:
                try:
                    frame = _recv_frame(conn)
                except OSError:
                    return
                if frame is None:
                    return
                method, directory = "?", "?"
                try:
                    method, directory, token, args = pickle.loads(frame)
                    payload = pickle.dumps(("ok", self.run(method, directory, token, args)),
                                           protocol=pickle.HIGHEST_PROTOCOL)
                except _NotOpen as e:
                    payload = pickle.dumps(("lost", str(e)))
                except Exception as e:  # noqa: BLE001 (sent back to the caller, who raises it)
                    log.exception("engine call %s on %s failed", method, directory)
                    payload = pickle.dumps(("error", f"{type(e).__name__}: {e}"))
                _send_frame(conn, payload)


def _die_with(parent: int) -> None:
    """SIGKILL when the node dies (even by -9), and exit on EOF of stdin (a
    node that stops); SIGINT and SIGTERM are the node's to act on."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    except (OSError, AttributeError) as e:
        log.warning("engine host: no PR_SET_PDEATHSIG (%s); relying on stdin", e)
    if os.getppid() != parent:
        os._exit(0)  # the node died before the signal was set

    def watch_stdin() -> None:
        while sys.stdin.buffer.read(4096):
            pass
        os._exit(0)

    threading.Thread(target=watch_stdin, name="stdin", daemon=True).start()


def main(argv: list[str]) -> None:
    fd, parent, nice = int(argv[0]), int(argv[1]), int(argv[2])
    if nice:
        os.nice(nice)
    allocator.tune()  # before any thread starts (tantivy's per-commit buffers: raftmem/allocator.py)
    logging.basicConfig(level=logging.WARNING, format="engine-host %(levelname)s %(name)s: %(message)s")
    _die_with(parent)
    listener = socket.socket(fileno=fd)  # bound and listening: the node made it
    host = _Host(parent)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=host.serve, args=(conn,), name="engines", daemon=True).start()


if __name__ == "__main__":
    main(sys.argv[1:])
