"""Wait until every shard of a raftmem cluster is led by its preferred leader
(the placement's spread, where the balancer leaves it), so a benchmark does not
measure a leader pile-up or the hand-overs that undo it (nodes move leadership
to the preferred leader 10 s after an election, one shard at a time: counts
within one of each other were not enough, hand-overs still landed in runs).

    python bench/wait_balanced.py URL [TIMEOUT_S]

Exit 0 when settled, 1 on timeout (printing the last leader counts)."""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from raftmem.membership import preferred_leaders  # noqa: E402

POLL_S = 0.5


def leader_counts(url: str) -> dict[str, int] | None:
    """Shards led per node, or None while some shard is not led by its
    preferred leader (or has none)."""
    try:
        with urllib.request.urlopen(f"{url}/v1/cluster", timeout=2) as resp:
            view = json.load(resp)
    except (OSError, ValueError):
        return None
    shards = view.get("shards", [])
    preferred = preferred_leaders({s["shard"]: list(s.get("replicas") or []) for s in shards})
    counts = dict.fromkeys((n["id"] for n in view.get("nodes", [])), 0)
    for shard in shards:
        leader = shard.get("leader")
        if leader is None or leader != preferred.get(shard["shard"]):
            return None
        counts[leader] = counts.get(leader, 0) + 1
    return counts


def main() -> int:
    url = sys.argv[1].split(",")[0].rstrip("/")
    deadline = time.monotonic() + (float(sys.argv[2]) if len(sys.argv) > 2 else 60.0)
    counts = None
    while time.monotonic() < deadline:
        counts = leader_counts(url)
        if counts:
            print(f"leaders on their preferred nodes: {counts}", file=sys.stderr)
            return 0
        time.sleep(POLL_S)
    print("leaders not on their preferred nodes in time", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
