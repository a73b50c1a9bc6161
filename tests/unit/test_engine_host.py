"""The engine host (raftmem/indexing/host.py) with a real host process: the
same answers as the engines in this process, its refusals, and what a caller
sees when it dies (EngineLost, `lost()`, a new host after `revive`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from raftmem import embeddings
from raftmem.indexing.engines import EngineError, EngineLost, Engines, ReplicaEngines
from raftmem.indexing.host import EngineHost, RemoteEngines
from raftmem.textindex import Restriction

HEAP = 15_000_000


def record(i: int, vector: bool = True) -> dict[str, Any]:
    rec: dict[str, Any] = {"namespace": "ns", "id": f"m{i}", "content": f"note {i} about deploys" if i % 2 else
                           f"note {i} about lunch", "tags": ["x"] if i % 3 else ["y"], "created_at": i,
                           "updated_at": i, "rev": i}
    if vector:
        rec["emb"] = embeddings.pack([1.0, float(i)])
    return rec


@pytest.fixture
def host() -> Iterator[EngineHost]:
    h = EngineHost()
    h.start()
    try:
        yield h
    finally:
        h.stop()


def exercise(engines: Engines) -> list[Any]:
    engines.write([record(i) for i in range(1, 40)], ())
    engines.write((), [("ns", "m3")])
    state = engines.commit(41)
    hits = engines.search(Restriction(namespace="ns"), [("deploy", 1.0)], 100)
    near = engines.nearest(np.asarray([1.0, 5.0], dtype=np.float32), Restriction(namespace="ns", with_vector=True),
                           "cosine", 3, 3)
    assert near is not None
    return [state.text_watermark, state.vector_counts, state.documents, sorted(h.key for h in hits), near[2],
            engines.term_stats(["deploy", "lunch"]), engines.vectors_held({2: [1, 2]})[2][0],
            sorted(engines.revs())[:3]]


def test_the_host_answers_as_the_engines_in_this_process_do(tmp_path: Path, host: EngineHost) -> None:
    local = ReplicaEngines(tmp_path / "local", HEAP)
    remote = RemoteEngines(host, tmp_path / "remote", HEAP)
    assert exercise(remote) == exercise(local)
    assert remote.state().text_watermark == 41 and not remote.lost()
    local.close(save=True)
    remote.close(save=True)
    assert host.calls > 0


def test_a_failing_call_is_an_engine_error_and_the_host_goes_on(tmp_path: Path, host: EngineHost) -> None:
    remote = RemoteEngines(host, tmp_path / "r", HEAP)
    with pytest.raises(EngineError, match="KeyError"):
        remote.write([{"id": "no namespace"}], ())  # a record without its namespace
    with pytest.raises(EngineError, match="unknown engine method"):
        host.call("__init__", remote.directory, remote.token)
    assert remote.commit(5).text_watermark == 5


def test_a_dead_host_is_reported_lost_and_a_revived_one_reopens_from_disk(tmp_path: Path, host: EngineHost) -> None:
    remote = RemoteEngines(host, tmp_path / "r", HEAP)
    remote.write([record(i) for i in range(1, 10)], ())
    remote.commit(9)
    assert host.pid is not None
    os.kill(host.pid, signal.SIGKILL)
    assert host.proc is not None
    host.proc.wait(10)
    assert remote.lost()
    with pytest.raises(EngineLost):
        remote.commit(10)
    assert host.revive() and not host.revive()  # once: the second finds it alive
    assert remote.lost()  # opened in the old host: a replica opens its engines again
    again = RemoteEngines(host, tmp_path / "r", HEAP)
    assert not again.lost() and again.state().text_watermark == 9 and again.state().documents == 9
    assert host.restarts == 1


def test_engines_opened_again_leave_the_earlier_proxy_lost(tmp_path: Path, host: EngineHost) -> None:
    """A search holding the proxy of an earlier open is told, not answered by
    the engines opened since (they may still be replaying)."""
    first = RemoteEngines(host, tmp_path / "r", HEAP)
    first.commit(3)
    second = RemoteEngines(host, tmp_path / "r", HEAP)
    with pytest.raises(EngineLost):
        first.search(Restriction(namespace="ns"), [], 10)
    assert second.search(Restriction(namespace="ns"), [], 10) == []


def test_only_the_node_process_is_served(tmp_path: Path, host: EngineHost) -> None:
    """Another process of the same user that finds the socket's name is
    refused before anything it sends is read; the node's own threads are served."""
    remote = RemoteEngines(host, tmp_path / "r", HEAP)
    probe = (
        "import pickle, socket, struct, sys\n"
        "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
        "s.connect(b'\\0' + sys.argv[1].encode())\n"
        "frame = pickle.dumps(('state', sys.argv[2], int(sys.argv[3]), ()))\n"
        "try:\n"
        "    s.sendall(struct.pack('<I', len(frame)) + frame)\n"
        "    print('answered' if s.recv(4) else 'refused')\n"
        "except ConnectionResetError:\n"
        "    print('refused')\n"
    )
    out = subprocess.run([sys.executable, "-c", probe, host.address.removeprefix("\0"), remote.directory,
                          str(remote.token)], capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "refused", out
    assert remote.commit(4).text_watermark == 4
