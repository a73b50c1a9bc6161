"""The membership table: which nodes exist, and which nodes hold each shard.

The seed is the config's node list, placed by the consistent-hash ring. Changes
(`member add`, `member remove`, `rebalance`) are compare-and-set writes of the
whole table into shard 0's state machine, so every node reads one linearizable
history of it. Nodes then reconcile towards it (`Node.reconcile` in node.py): shard leaders add
or remove one Raft member at a time, nodes start and drop replicas.

Pure functions here: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .config import Config, NodeConfig
from .errors import Conflict, NotFound
from .routing import placement

TABLE_SHARD = 0


@dataclass(frozen=True)
class Table:
    version: int
    nodes: dict[str, NodeConfig]
    assignment: dict[int, list[str]]
    factor: int
    leaving: tuple[str, ...] = field(default=())

    @classmethod
    def seed(cls, config: Config) -> Table:
        nodes = {n.id: n for n in config.nodes}
        return cls(0, nodes, placement(list(nodes), config.shards, config.replication_factor),
                   config.replication_factor)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "factor": self.factor,
            "nodes": [
                {"id": n.id, "host": n.host, "http_port": n.http_port, "raft_port_base": n.raft_port_base,
                 "zone": n.zone}
                for n in sorted(self.nodes.values(), key=lambda n: n.id)
            ],
            "assignment": {str(s): reps for s, reps in sorted(self.assignment.items())},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Table:
        nodes = {
            n["id"]: NodeConfig(n["id"], n["host"], int(n["http_port"]), int(n["raft_port_base"]), n.get("zone", ""))
            for n in data["nodes"]
        }
        assignment = {int(s): list(reps) for s, reps in data["assignment"].items()}
        return cls(int(data["version"]), nodes, assignment, int(data["factor"]))

    def raft_address(self, node_id: str, shard: int) -> str:
        node = self.nodes[node_id]
        return f"{node.host}:{node.raft_port(shard)}"

    def with_node(self, node: NodeConfig) -> Table:
        if node.id in self.nodes:
            raise Conflict(f"node {node.id} is already a member")
        for other in self.nodes.values():
            if other.host == node.host and (
                other.http_port == node.http_port or abs(other.raft_port_base - node.raft_port_base) < len(self.assignment)
            ):
                raise Conflict(f"node {node.id}: ports overlap those of {other.id} on {node.host}")
        nodes = dict(self.nodes)
        nodes[node.id] = node
        return Table(self.version + 1, nodes, dict(self.assignment), self.factor)

    def without_node(self, node_id: str) -> Table:
        """Drop a node and re-place only the shards it held."""
        if node_id not in self.nodes:
            raise NotFound(f"node {node_id} is not a member")
        if len(self.nodes) - 1 < self.factor:
            raise Conflict(f"removing {node_id} would leave fewer nodes than the replication factor {self.factor}")
        nodes = {k: n for k, n in self.nodes.items() if k != node_id}
        ring = placement(list(nodes), len(self.assignment), self.factor)
        assignment = {
            s: (_merge(reps, ring[s], node_id) if node_id in reps else list(reps))
            for s, reps in self.assignment.items()
        }
        return Table(self.version + 1, nodes, assignment, self.factor)

    def rebalanced(self) -> Table:
        """Every shard where the ring (over the current nodes) says so."""
        ring = placement(list(self.nodes), len(self.assignment), self.factor)
        return Table(self.version + 1, dict(self.nodes), ring, self.factor)


def _merge(current: list[str], target: list[str], leaving: str) -> list[str]:
    """Replace `leaving` by a node of the ring's choice, keeping the others."""
    kept = [n for n in current if n != leaving]
    for n in target:
        if len(kept) >= len(current):
            break
        if n not in kept:
            kept.append(n)
    return kept


def moves(old: Table, new: Table) -> list[dict[str, Any]]:
    out = []
    for s in sorted(new.assignment):
        before, after = set(old.assignment.get(s, [])), set(new.assignment[s])
        if before != after:
            out.append({"shard": s, "add": sorted(after - before), "remove": sorted(before - after)})
    return out


def moved_fraction(old: Table, new: Table) -> float:
    total = sum(len(r) for r in old.assignment.values()) or 1
    return sum(len(m["add"]) for m in moves(old, new)) / total


def preferred_leaders(assignment: dict[int, list[str]]) -> dict[int, str]:
    """Spread leadership: each shard prefers the replica leading the fewest
    shards so far (ties: the earlier in its list). Deterministic."""
    load: dict[str, int] = {}
    out: dict[int, str] = {}
    for shard in sorted(assignment):
        reps = assignment[shard]
        if not reps:
            continue
        best = min(reps, key=lambda n: (load.get(n, 0), reps.index(n)))
        out[shard] = best
        load[best] = load.get(best, 0) + 1
    return out
