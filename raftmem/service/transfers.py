"""Moving state between nodes and files: leadership transfer, shard snapshots,
online backups, and restores through the Raft log."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

import orjson

from .. import backup
from ..clock import Clock
from ..commands import Restore
from ..config import Config
from ..errors import InvalidRequest, Unavailable, from_result
from ..shard import Shard
from .calls import SNAPSHOT_CONTENT_TYPE, Call, FileBody, Reply
from .leaders import Router

# Under the node's data directory: backups and snapshots in transit (emptied at start).
SCRATCH_DIR = "scratch"
RESTORE_CHUNK_OPS = 200
RESTORE_CHUNK_BYTES = 4 << 20


class Transfers:
    def __init__(self, config: Config, router: Router, clock: Clock) -> None:
        self.config = config
        self.router = router
        self.clock = clock
        self.node_id = router.node_id

    def _check_shard(self, shard: int) -> None:
        if not 0 <= shard < self.config.shards:
            raise InvalidRequest(f"no shard {shard}")

    async def transfer_leader(self, shard: int, call: Call) -> Reply:
        """Hand a shard's leadership to `to` (a node id) or to the most caught-up
        follower. Answers once the request is sent; poll /v1/cluster to see it land."""
        self._check_shard(shard)
        target = call.query.get("to")
        if target is not None and target not in self.router.placement[shard]:
            raise InvalidRequest(f"node {target!r} holds no replica of shard {shard}", field="to")

        async def local(replica: Shard) -> Reply:
            if target == self.node_id:
                return Reply(200, {"shard": shard, "leader": self.node_id, "transferred": False})
            if not await replica.transfer_leadership(target):
                raise Unavailable(
                    f"shard {shard}: transfer refused (target not connected or not caught up); retry",
                    shard=shard,
                )
            return Reply(202, {"shard": shard, "from": self.node_id, "to": target, "transferred": True})

        return await self.router.on_leader(shard, call, local, is_write=True)

    async def shard_snapshot(self, shard: int, call: Call) -> Reply:
        """Internal: one shard's consistent snapshot, taken at its leader, into
        `call.download` (here, or streamed there from the leader)."""
        self._check_shard(shard)
        dest = call.download
        assert dest is not None, "a snapshot needs a file to go to"

        async def local(replica: Shard) -> Reply:
            applied = await replica.snapshot_to(dest)
            return Reply(200, FileBody(dest), {"X-Raftmem-Applied-Index": str(applied)}, SNAPSHOT_CONTENT_TYPE)

        return await self.router.on_leader(shard, call, local, is_write=False)

    async def backup(self, call: Call, workdir: Path) -> Reply:
        """An online backup of every shard (writes keep flowing while it runs),
        built in `workdir`: disk, not memory, in proportion to the data."""

        async def one(shard: int) -> tuple[int, tuple[int, Path]]:
            dest = workdir / f"shard-{shard:03d}.snapshot"
            path = f"/v1/internal/shards/{shard}/snapshot"
            reply = await self.shard_snapshot(shard, Call("GET", path, {}, {}, b"", call.hops, download=dest))
            if reply.status != 200:
                raise from_result({"status": reply.status, **reply.json()})
            return shard, (int(reply.headers.get("X-Raftmem-Applied-Index", 0)), dest)

        parts = dict(await asyncio.gather(*(one(s) for s in range(self.config.shards))))
        out = workdir / "raftmem.backup"
        await asyncio.to_thread(
            backup.build_file, out, self.config.name, self.config.shards, parts, self.clock.wall_ms()
        )
        headers = {"Content-Disposition": "attachment; filename=raftmem.backup"}
        return Reply(200, FileBody(out), headers, SNAPSHOT_CONTENT_TYPE)

    def scratch(self) -> tempfile.TemporaryDirectory[str]:
        """A private directory for a large transfer, on the node's data disk (not /tmp,
        which may be small or in memory); removed when the context ends."""
        root = Path(self.config.node_data_dir(self.node_id)) / SCRATCH_DIR
        root.mkdir(parents=True, exist_ok=True)
        return tempfile.TemporaryDirectory(prefix="xfer-", dir=root)

    async def restore(self, path: Path, workdir: Path) -> Reply:
        """Load a backup file into this cluster through the Raft log of each shard
        (so every replica gets it, durably). Memories in the backup replace those
        with the same key; others are left alone."""
        manifest = backup.verify(path, self.config.shards, workdir)
        restored: dict[int, int] = {}
        for entry in manifest["shards"]:
            shard = entry["shard"]
            count = 0
            chunk: list[dict[str, Any]] = []
            chunk_bytes = 0
            for rec in backup.shard_records(workdir / entry["file"], workdir / "scan"):
                chunk.append(Restore(rec).to_wire())
                chunk_bytes += len(orjson.dumps(rec))
                if len(chunk) >= RESTORE_CHUNK_OPS or chunk_bytes >= RESTORE_CHUNK_BYTES:
                    count += await self._restore_chunk(shard, chunk)
                    chunk, chunk_bytes = [], 0
            if chunk:
                count += await self._restore_chunk(shard, chunk)
            restored[shard] = count
        return Reply(200, {"restored": sum(restored.values()), "per_shard": {str(k): n for k, n in restored.items()},
                           "backup_created_at": manifest["created_at"], "cluster": manifest["cluster"]})

    async def _restore_chunk(self, shard: int, ops: list[dict[str, Any]]) -> int:
        call = Call("POST", f"/v1/internal/shards/{shard}/restore", {}, {}, orjson.dumps({"ops": ops}))
        reply = await self.apply_restore(shard, call)
        body = reply.json()
        if reply.status != 200:
            raise from_result({"status": reply.status, **body})
        return int(body["applied"])

    async def apply_restore(self, shard: int, call: Call) -> Reply:
        """Internal: propose restore operations on the shard leader."""
        self._check_shard(shard)
        try:
            body = orjson.loads(call.body)
        except orjson.JSONDecodeError as e:
            raise InvalidRequest(f"body is not valid JSON: {e}") from None
        ops = body.get("ops") if isinstance(body, dict) else None
        if not isinstance(ops, list) or not all(isinstance(o, dict) and o.get("t") == Restore.TAG for o in ops):
            raise InvalidRequest("restore takes only restore operations")
        commands: list[Restore] = []
        for op in ops:
            rec = op.get("rec")
            if not isinstance(rec, dict) or self.router.shard_of(str(rec.get("namespace")), str(rec.get("id"))) != shard:
                raise InvalidRequest("a restored memory does not belong to this shard")
            commands.append(Restore(rec))

        async def local(replica: Shard) -> Reply:
            done = await asyncio.gather(*(replica.submit(c) for c in commands))
            return Reply(200, {"applied": sum(1 for d in done if d.result.restored)})

        return await self.router.on_leader(shard, call, local, is_write=True)
