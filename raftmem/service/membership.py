"""The membership table as an API: read it (linearizably, from shard 0's leader),
change it by compare-and-set (add or remove a node, rebalance). Nodes converge
on it in node.py's reconciler."""

from __future__ import annotations

from collections.abc import Callable

import orjson

from .. import validation as v
from ..commands import SetMembers
from ..config import Config, NodeConfig
from ..errors import Conflict, InvalidRequest, PreconditionFailed, from_result
from ..membership import TABLE_SHARD, Table, moved_fraction, moves
from ..shard import Shard
from .calls import Call, Reply
from .leaders import Router
from .memories import Memories

TABLE_CAS_ATTEMPTS = 5
MEMBER_FIELDS = frozenset({"id", "host", "http_port", "raft_port_base", "zone"})
PORT_MAX = 65535


class Membership:
    def __init__(self, config: Config, router: Router, memories: Memories) -> None:
        self.config = config
        self.router = router
        self.memories = memories
        self.limits = config.limits

    async def members(self, call: Call) -> Reply:
        """The membership table, read linearizably from shard 0's leader."""

        async def local(replica: Shard) -> Reply:
            stored, _ = await replica.read("linearizable", lambda state: state.members_table())
            table = Table.from_json(stored) if stored else self.table_seed()
            return Reply(200, {"table": table.to_json()})

        return await self.router.on_leader(
            TABLE_SHARD, Call("GET", "/v1/admin/members", {}, {}, b"", call.hops), local, is_write=False
        )

    def table_seed(self) -> Table:
        return Table.seed(self.config)

    async def current_table(self, call: Call) -> Table:
        reply = await self.members(call)
        body = reply.json()
        if reply.status != 200:
            raise from_result({"status": reply.status, **body})
        return Table.from_json(body["table"])

    async def write_table(self, table: Table, if_version: int, call: Call) -> Table:
        command = SetMembers(table.to_json(), if_version)
        body = orjson.dumps({"table": command.table, "if_version": if_version})
        reply = await self.memories.write(
            TABLE_SHARD, command, Call("POST", "/v1/internal/members", {}, {}, body, call.hops)
        )
        result = reply.json()
        if reply.status != 200:
            raise from_result({"status": reply.status, **result})
        written = Table.from_json(result["table"])
        self.router.set_table(written)
        return written

    async def internal_write_table(self, call: Call) -> Reply:
        body = v.parse_json(call.body, self.limits)
        try:
            table = Table.from_json(body["table"])
            if_version = int(body["if_version"])
        except (KeyError, TypeError, ValueError) as e:
            raise InvalidRequest(f"bad membership table: {e}") from None
        return await self.memories.write(TABLE_SHARD, SetMembers(table.to_json(), if_version), call)

    async def _change_table(self, call: Call, change: Callable[[Table], Table]) -> tuple[Table, Table]:
        for _attempt in range(TABLE_CAS_ATTEMPTS):
            current = await self.current_table(call)
            try:
                new = change(current)
            except ValueError as e:
                raise InvalidRequest(str(e)) from None
            try:
                return current, await self.write_table(new, current.version, call)
            except PreconditionFailed:
                continue  # someone else changed it: re-read and re-apply
        raise Conflict("the membership table kept changing; retry")

    async def member_add(self, call: Call) -> Reply:
        body = v.json_object(call.body, self.limits, MEMBER_FIELDS)
        node_id = body.get("id")
        if not isinstance(node_id, str):
            raise InvalidRequest("id must be a node id (a string)", field="id")
        zone = body.get("zone")
        node = NodeConfig(
            id=v.name("id", node_id, v.NODE_ID_CHARS_MAX),
            host=v.label("host", body.get("host"), v.HOST_CHARS_MAX),
            http_port=v.json_int_field(body, "http_port", None, 1, PORT_MAX),
            # Its shards' Raft ports follow it: the last must be a port too.
            raft_port_base=v.json_int_field(body, "raft_port_base", None, 1,
                                      PORT_MAX - (self.config.shards - 1)),
            zone=v.label("zone", zone, v.NODE_ID_CHARS_MAX) if zone is not None else "",
        )
        _, new = await self._change_table(call, lambda t: t.with_node(node))
        return Reply(200, {"table": new.to_json()})

    async def member_remove(self, node_id: str, call: Call) -> Reply:
        v.name("node", node_id, v.NODE_ID_CHARS_MAX)
        old, new = await self._change_table(call, lambda t: t.without_node(node_id))
        return Reply(200, {"table": new.to_json(), "moves": moves(old, new),
                           "moved_fraction": moved_fraction(old, new)})

    async def rebalance(self, call: Call) -> Reply:
        dry_run = v.flag("dry_run", call.query.get("dry_run"))
        current = await self.current_table(call)
        planned = current.rebalanced()
        if dry_run or not moves(current, planned):
            # Nothing to write: report the plan against the current version.
            old, new = current, Table(current.version, planned.nodes, planned.assignment, planned.factor)
        else:
            old, new = await self._change_table(call, lambda t: t.rebalanced())
        return Reply(200, {"dry_run": dry_run, "table": new.to_json(), "moves": moves(old, new),
                           "moved_fraction": moved_fraction(old, new)})
