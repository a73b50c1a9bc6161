from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .cluster import Cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One healthy 3-node cluster shared by a module's non-destructive tests."""
    c = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        c.start_all()
        yield c
    finally:
        c.stop_all()


@pytest.fixture
def fresh_cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A cluster of its own, for tests that kill, wipe or restart nodes. Started by the test."""
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.stop_all()


@pytest.fixture(scope="module")
def coordination_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A healthy 3-node cluster whose coordination waiters poll often and whose
    leases may be short (tests of locks and tasks)."""
    c = Cluster(tmp_path_factory.mktemp("coordination"), coordination={"waiter_poll_ms": 100, "ttl_ms_min": 50})
    try:
        c.start_all()
        yield c
    finally:
        c.stop_all()
