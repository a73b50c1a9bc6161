"""Wait until a raftmem cluster's shard leaders are spread over its nodes (each
node leads within one shard of the others), so a benchmark does not measure
a leader pile-up or the leader hand-overs that undo it (nodes move leadership
to the placement's preferred leader 10 s after an election).

    python bench/wait_balanced.py URL [TIMEOUT_S]

Exit 0 when balanced, 1 on timeout (printing the last leader counts)."""

from __future__ import annotations

import json
import sys
import time
import urllib.request

POLL_S = 0.5


def leader_counts(url: str) -> dict[str, int] | None:
    try:
        with urllib.request.urlopen(f"{url}/v1/cluster", timeout=2) as resp:
            view = json.load(resp)
    except (OSError, ValueError):
        return None
    nodes = [n["id"] for n in view.get("nodes", [])]
    counts = dict.fromkeys(nodes, 0)
    for shard in view.get("shards", []):
        leader = shard.get("leader")
        if leader is None:
            return None
        counts[leader] = counts.get(leader, 0) + 1
    return counts


def main() -> int:
    url = sys.argv[1].split(",")[0].rstrip("/")
    deadline = time.monotonic() + (float(sys.argv[2]) if len(sys.argv) > 2 else 60.0)
    counts = None
    while time.monotonic() < deadline:
        counts = leader_counts(url)
        if counts and max(counts.values()) - min(counts.values()) <= 1:
            print(f"leaders balanced: {counts}", file=sys.stderr)
            return 0
        time.sleep(POLL_S)
    print(f"leaders not balanced in time: {counts}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
