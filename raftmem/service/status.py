"""What a node says about itself and the cluster: GET /v1/cluster and readiness."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..config import Config
from ..shardhash import HASH_NAME
from .calls import Reply
from .leaders import Router


class Status:
    def __init__(self, config: Config, router: Router,
                 index_status: Callable[[], dict[int, dict[str, Any]]] | None = None) -> None:
        """`index_status`: the derived indexes' state per shard (shown as `index`)."""
        self.config = config
        self.router = router
        self.node_id = router.node_id
        self.index_status = index_status
        # More of this node's state for GET /v1/cluster, by section name.
        self.sections: dict[str, Callable[[], dict[str, Any]]] = {}

    def cluster(self) -> Reply:
        router = self.router
        shards = []
        indexes = self.index_status() if self.index_status is not None else {}
        for s in range(self.config.shards):
            entry: dict[str, Any] = {"shard": s, "replicas": router.placement.get(s, [])}
            replica = router.local(s)
            if replica is not None:
                entry.update(replica.status().to_json())
            if s in indexes:
                entry["index"] = indexes[s]
            shards.append(entry)
        nodes = [
            {"id": n.id, "url": self.config.url_of(n), "zone": n.zone, "raft_port_base": n.raft_port_base}
            for n in sorted(router.table.nodes.values(), key=lambda n: n.id)
        ]
        body = {
            "cluster": self.config.name,
            "node": self.node_id,
            "shard_count": self.config.shards,
            "replication_factor": self.config.replication_factor,
            "quorums": self.config.quorums(),
            "hash": HASH_NAME,
            "table_version": router.table.version,
            "nodes": nodes,
            "shards": shards,
        }
        body.update({name: section() for name, section in self.sections.items()})
        return Reply(200, body)

    def readiness(self, sync: bool = False) -> tuple[bool, list[str]]:
        """Every local replica knows a leader; with `sync`, every follower replica
        has also applied the commit index its leader last told it (useful to gate
        each step of a rolling restart)."""
        problems = []
        for s, replica in self.router.shards.items():
            if self.router.leader_of(s) is None:
                st = replica.status()
                problems.append(
                    f"shard {s}: no known leader ({st.role} at term {st.term}, "
                    f"voters {','.join(st.members)}, log to {st.commit_index}/{st.applied_index})"
                )
                continue
            if sync and not replica.role().leading:
                st = replica.status()
                if st.leader_staleness_s > self.config.raft.election_timeout_ms_max / 1000:
                    problems.append(f"shard {s}: no recent contact with the leader")
                elif st.applied_index < st.leader_commit_index:
                    problems.append(f"shard {s}: applied {st.applied_index} of {st.leader_commit_index}")
        return not problems, problems
