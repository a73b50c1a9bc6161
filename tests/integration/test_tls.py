"""TLS on real nodes, with certificates the tests make: the API and node-to-node
traffic over https, plain http refused, client certificates checked under
`client_auth: require`, a node whose certificate another CA signed shut out,
and certificates reloaded on SIGHUP without a restart."""

from __future__ import annotations

import asyncio
import http.client
import shutil
import signal
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from raftmem.client import AsyncClient, Client, WatchEvent, tls_context

from .certs import Authority
from .cluster import Cluster, wait_for


class Pki:
    def __init__(self, root: Path) -> None:
        self.dir = root / "certs"
        self.ca = Authority(self.dir, "cluster-ca")
        for node in ("n1", "n2", "n3", "n4"):
            self.ca.issue(node)
        self.client_cert, self.client_key, _ = self.ca.issue("agent")
        self.rogue = Authority(root / "rogue", "rogue-ca")
        self.rogue_cert, self.rogue_key, _ = self.rogue.issue("intruder")

    def context(self, cert: Path | None = None, key: Path | None = None, ca: Path | None = None) -> ssl.SSLContext:
        return tls_context(str(ca or self.ca.path), str(cert) if cert else None, str(key) if key else None)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[Cluster]:
    tls = {"cert_file": str(pki.dir / "{node}.pem"), "key_file": str(pki.dir / "{node}.key"),
           "ca_file": str(pki.ca.path), "client_auth": "require"}
    c = Cluster(tmp_path_factory.mktemp("tls"), tls=tls, spare=1,
                ssl_context=pki.context(pki.client_cert, pki.client_key))
    try:
        c.start_all()
        yield c
    finally:
        c.stop_all()


def test_the_api_and_the_nodes_speak_https(secured: Cluster, pki: Pki) -> None:
    view = secured.request("n1", "GET", "/v1/cluster")[2]
    assert all(n["url"].startswith("https://") for n in view["nodes"])
    # Writes sent to every node: two of three are forwarded to their leader, over https.
    for i, node in enumerate(secured.node_ids):
        status, _, body = secured.request(node, "PUT", f"/v1/memories/tls/k{i}", {"content": i})
        assert status == 201, body
    urls = [f"https://127.0.0.1:{secured.http[n]}" for n in secured.node_ids]
    with Client(urls, ssl_context=pki.context(pki.client_cert, pki.client_key)) as client:
        assert client.get("tls", "k2")["content"] == 2
        assert {m["id"] for m in client.list("tls")} == {"k0", "k1", "k2"}  # the fan-out, over https


async def test_a_watch_streams_over_https(secured: Cluster, pki: Pki) -> None:
    """Live changes reach a watcher over TLS whole and in order (a live batch
    is written straight to the connection, an SSL transport here)."""
    urls = [f"https://127.0.0.1:{secured.http[n]}" for n in secured.node_ids]
    async with AsyncClient(urls, ssl_context=pki.context(pki.client_cert, pki.client_key)) as client:
        watch = client.watch(namespace="tlswatch", progress_ms=200, progress=True)
        first = await asyncio.wait_for(watch.__anext__(), 30)  # a progress: the stream is up
        assert not isinstance(first, WatchEvent)
        for i in range(20):
            await client.put("tlswatch", f"k{i % 5}", i)
        got: list[WatchEvent] = []
        while len(got) < 20:
            item = await asyncio.wait_for(watch.__anext__(), 30)
            if isinstance(item, WatchEvent):
                got.append(item)
        assert sorted(e.record["content"] for e in got if e.record) == list(range(20))  # type: ignore[index]
        by_key: dict[str, list[int]] = {}
        for e in got:
            by_key.setdefault(e.id, []).append(e.version)
        assert all(versions == sorted(versions) for versions in by_key.values())
        await watch.close()


def test_plain_http_is_refused(secured: Cluster) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", secured.http["n1"], timeout=5)
    try:
        with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
            conn.request("GET", "/v1/cluster")
            response = conn.getresponse()
            # Should a TLS server ever answer plain text, it must not be a success.
            raise ConnectionError(f"answered {response.status}") if response.status != 200 else AssertionError(
                "a TLS node answered plain http with 200")
    finally:
        conn.close()


@pytest.mark.parametrize("who", ["none", "rogue"])
def test_under_require_a_client_without_a_certificate_of_the_ca_is_refused(secured: Cluster, pki: Pki,
                                                                           who: str) -> None:
    context = pki.context() if who == "none" else pki.context(pki.rogue_cert, pki.rogue_key)
    conn = secured.connection("n1", 5, context=context)
    try:
        with pytest.raises((ssl.SSLError, ConnectionError, OSError, http.client.HTTPException)):
            conn.request("GET", "/v1/cluster")
            conn.getresponse().read()
    finally:
        conn.close()
    # Control: the same request with the CA's client certificate is answered.
    assert secured.request("n1", "GET", "/v1/cluster")[0] == 200


def test_a_node_whose_certificate_another_ca_signed_is_shut_out(secured: Cluster, pki: Pki, tmp_path: Path) -> None:
    """n4 joins with a certificate (and CA) of its own: the members' forwards,
    table reads and fan-outs to it fail, and its own to them. A write it is
    handed reaches no leader (503, nothing written); it learns no shard."""
    rogue_dir = tmp_path / "n4"
    rogue_dir.mkdir()
    pki.rogue.issue("n4", out=rogue_dir)
    # n4 reads its files from the shared paths: swap its certificate for the rogue one.
    for suffix in (".pem", ".key"):
        shutil.copy(rogue_dir / f"n4{suffix}", pki.dir / f"n4{suffix}")
    spec = secured.start_joining("n4")
    status, _, body = secured.request("n1", "POST", "/v1/admin/members", spec)
    assert status in (200, 201), body
    # To talk to n4 itself: trust its CA, present the cluster CA's client certificate (it trusts that CA).
    rogue = pki.context(pki.client_cert, pki.client_key, ca=pki.rogue.path)

    def answers() -> bool:
        assert secured.alive("n4"), secured.log_text("n4")[-2000:]
        probe = secured.connection("n4", 2, context=rogue)
        try:
            probe.request("GET", "/healthz")
            return probe.getresponse().status == 200
        finally:
            probe.close()

    wait_for(answers, 30, "n4 listening")
    conn = secured.connection("n4", 15, context=rogue)
    try:
        conn.request("PUT", "/v1/memories/tls/rogue", body=b'{"content": 1}',
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        assert response.status == 503, response.read()
        conn.close()
        conn = secured.connection("n4", 5, context=rogue)
        conn.request("GET", "/v1/cluster")
        view = __import__("json").loads(conn.getresponse().read())
    finally:
        conn.close()
    assert all(s.get("role") in (None, "none") for s in view["shards"]), view["shards"]
    assert secured.request("n2", "GET", "/v1/memories/tls/rogue")[0] == 404
    # Control: the members still write, read and forward between themselves.
    assert secured.request("n2", "PUT", "/v1/memories/tls/after", {"content": 1})[0] == 201
    secured.stop("n4")


def test_sighup_reloads_the_certificate_without_a_restart(secured: Cluster, pki: Pki) -> None:
    def serial_presented() -> int:
        conn = secured.connection("n2", 5)
        try:
            conn.request("GET", "/healthz")
            conn.getresponse().read()
            der = conn.sock.getpeercert(binary_form=True)  # type: ignore[union-attr]
        finally:
            conn.close()
        from cryptography import x509

        return int(x509.load_der_x509_certificate(der).serial_number)

    before = serial_presented()
    _, _, renewed = pki.ca.issue("n2")  # new files at the same paths
    assert renewed != before
    pid = secured.procs["n2"].pid
    secured.procs["n2"].send_signal(signal.SIGHUP)
    wait_for(lambda: serial_presented() == renewed, 10, "n2 presenting the renewed certificate")
    assert secured.procs["n2"].pid == pid and secured.alive("n2")
    assert secured.request("n2", "PUT", "/v1/memories/tls/renewed", {"content": 1})[0] == 201
