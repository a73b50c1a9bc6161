"""Backup files: one tar holding `manifest.json` and one shard snapshot per shard.

Each shard snapshot is a RocksDB checkpoint taken at the shard leader after a
ReadIndex round, so it holds every write acknowledged before the backup began.
The manifest records, per shard, the applied index, the size and a SHA-256;
`verify` refuses a file whose manifest or any checksum does not match.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path
from typing import Any

import orjson

from .errors import InvalidRequest

FORMAT = "raftmem-backup-v1"
MANIFEST = "manifest.json"


def shard_member(shard: int) -> str:
    return f"shard-{shard:03d}.snapshot"


def build(cluster: str, shard_count: int, snapshots: dict[int, tuple[int, bytes]], created_at_ms: int) -> bytes:
    """`snapshots`: shard -> (applied index, packed snapshot bytes)."""
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "cluster": cluster,
        "shard_count": shard_count,
        "created_at": created_at_ms,
        "shards": [
            {
                "shard": shard,
                "applied_index": applied,
                "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "file": shard_member(shard),
            }
            for shard, (applied, data) in sorted(snapshots.items())
        ],
    }
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in [(MANIFEST, orjson.dumps(manifest, option=orjson.OPT_INDENT_2))] + [
            (shard_member(s), d) for s, (_, d) in sorted(snapshots.items())
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def verify(path: Path, shard_count: int, directory: Path) -> dict[str, Any]:
    """Check the manifest and every checksum; extract the shard snapshots into
    `directory`. Raises InvalidRequest with a clear message on any mismatch."""
    try:
        with tarfile.open(str(path), mode="r") as tar:
            member = tar.extractfile(MANIFEST)
            if member is None:
                raise InvalidRequest("not a raftmem backup: no manifest.json")
            manifest = orjson.loads(member.read())
            if manifest.get("format") != FORMAT:
                raise InvalidRequest(f"unknown backup format {manifest.get('format')!r}")
            if manifest.get("shard_count") != shard_count:
                raise InvalidRequest(
                    f"backup has {manifest.get('shard_count')} shards, this cluster has {shard_count}"
                )
            for entry in manifest["shards"]:
                data_member = tar.extractfile(entry["file"])
                if data_member is None:
                    raise InvalidRequest(f"backup is missing {entry['file']}")
                data = data_member.read()
                if len(data) != entry["bytes"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
                    raise InvalidRequest(f"corrupt backup: checksum mismatch for shard {entry['shard']}")
                (directory / entry["file"]).write_bytes(data)
    except (tarfile.TarError, orjson.JSONDecodeError, KeyError, EOFError) as e:
        raise InvalidRequest(f"corrupt or truncated backup file: {e}") from None
    return dict(manifest)
