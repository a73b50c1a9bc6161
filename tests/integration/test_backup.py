"""Online backup under write load, restore into a fresh cluster, corrupt files refused."""

from __future__ import annotations

import http.client
import io
import tarfile
import threading
from pathlib import Path

from .cluster import Cluster


def _raw(c: Cluster, node: str, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", c.http[node], timeout=60)
    try:
        conn.request(method, path, body=body)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_backup_under_load_and_restore_into_a_fresh_cluster(tmp_path: Path) -> None:
    src = Cluster(tmp_path / "src")
    dst = Cluster(tmp_path / "dst")
    try:
        src.start_all()
        before = {}
        for i in range(60):
            mid = f"m{i}"
            status, _, body = src.request(src.node_ids[i % 3], "PUT", f"/v1/memories/bk/{mid}",
                                          {"content": i, "tags": ["t"], "agent_id": "a"})
            assert status == 201
            before[mid] = body
        stop = threading.Event()
        during: list[int] = []

        def writer() -> None:
            i = 0
            while not stop.is_set():
                status, _, _ = src.request("n2", "PUT", f"/v1/memories/bk/late{i}", {"content": i})
                during.append(status)
                i += 1

        t = threading.Thread(target=writer)
        t.start()
        try:
            status, data = _raw(src, "n3", "GET", "/v1/admin/backup")
        finally:
            stop.set()
            t.join()
        assert status == 200, data[:300]
        assert during and all(s in (200, 201) for s in during)  # writes kept flowing
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            assert "manifest.json" in tar.getnames()

        dst.start_all()
        # A corrupt file is refused with a clear message, and changes nothing.
        bad = bytearray(data)
        bad[len(bad) // 2] ^= 0xFF
        status, body = _raw(dst, "n1", "POST", "/v1/admin/restore", bytes(bad))
        assert status == 400 and b"corrupt" in body, body
        assert dst.request("n1", "GET", "/v1/memories/bk?limit=10")[2]["items"] == []
        status, body = _raw(dst, "n2", "POST", "/v1/admin/restore", data)
        assert status == 200, body
        for mid, rec in before.items():
            status, _, got = dst.request("n1", "GET", f"/v1/memories/bk/{mid}")
            assert status == 200, (mid, got)
            for field in ("content", "version", "created_at", "tags", "agent_id"):
                assert got[field] == rec[field], (mid, field)
        status, _, page = dst.request("n3", "GET", "/v1/memories/bk?tag=t&limit=1000")
        assert [m["id"] for m in page["items"]] == list(before)  # indexes rebuilt too
    finally:
        src.stop_all()
        dst.stop_all()
