"""Backup files: one tar holding `manifest.json` and one shard snapshot per shard,
written and checked in chunks (a backup costs disk, not memory).

Each shard snapshot is a RocksDB checkpoint taken at the shard leader after a
ReadIndex round, so it holds every write acknowledged before the backup began.
The manifest records, per shard, the applied index, the size and a SHA-256;
`verify` refuses a file whose manifest or any checksum does not match.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from .errors import InvalidRequest
from .statemachine import snapshot_records
from .storage import read_hashing

FORMAT = "raftmem-backup-v1"
MANIFEST = "manifest.json"


def shard_member(shard: int) -> str:
    return f"shard-{shard:03d}.snapshot"


def build_file(
    out: Path, cluster: str, shard_count: int, snapshots: dict[int, tuple[int, Path]], created_at_ms: int
) -> None:
    """Write the backup to `out`. `snapshots`: shard -> (applied index, packed
    snapshot file); each file is streamed in and then deleted, so a backup needs
    disk, not memory, in proportion to the data."""
    entries = []
    for shard, (applied, path) in sorted(snapshots.items()):
        with open(path, "rb") as f:
            size, digest = read_hashing(f)
        entries.append(
            {"shard": shard, "applied_index": applied, "bytes": size, "sha256": digest, "file": shard_member(shard)}
        )
    manifest = {
        "format": FORMAT, "cluster": cluster, "shard_count": shard_count, "created_at": created_at_ms,
        "shards": entries,
    }
    data = orjson.dumps(manifest, option=orjson.OPT_INDENT_2)
    with open(out, "wb") as out_file, tarfile.open(fileobj=out_file, mode="w") as tar:
        info = tarfile.TarInfo(MANIFEST)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        for shard, (_, path) in sorted(snapshots.items()):
            info = tarfile.TarInfo(shard_member(shard))
            info.size = path.stat().st_size
            with open(path, "rb") as src:
                tar.addfile(info, src)
            path.unlink()


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
                with open(directory / entry["file"], "wb") as out:
                    size, digest = read_hashing(data_member, out)
                if size != entry["bytes"] or digest != entry["sha256"]:
                    raise InvalidRequest(f"corrupt backup: checksum mismatch for shard {entry['shard']}")
    except (tarfile.TarError, orjson.JSONDecodeError, KeyError, EOFError) as e:
        raise InvalidRequest(f"corrupt or truncated backup file: {e}") from None
    return dict(manifest)


def shard_records(path: Path, workdir: Path) -> Iterator[dict[str, Any]]:
    """The memories in one shard snapshot of a verified backup (unpacked in
    `workdir`); the key layout stays the state machine's."""
    return snapshot_records(path, workdir)
