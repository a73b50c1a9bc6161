"""`raftmem bench` pieces: the histogram, argument parsing, error kinds, and short
runs of both targets against in-process fakes (raftmem's API, etcd's gateway)."""

from __future__ import annotations

import argparse
import base64
import json
from collections.abc import AsyncIterator

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from cli import bench
from cli.main import build_parser
from raftmem.client import (
    ClientError,
    ConnectionFailed,
    Indeterminate,
    NotFound,
    Overloaded,
    Unavailable,
)
from tests.unit.fake_raftmem import FakeCluster, Fault


def test_histogram_percentiles_are_within_two_percent() -> None:
    hist = bench.Histogram()
    for i in range(1, 10_001):
        hist.record(i / 1000)  # 1 ms .. 10 s
    for p, exact in ((50, 5.0), (99, 9.9), (99.9, 9.99)):
        assert hist.percentile(p) == pytest.approx(exact, rel=0.02)
    assert hist.percentile(100) == pytest.approx(10.0)
    assert hist.count == 10_000 and hist.max_s == 10.0
    assert bench.Histogram().percentile(50) == 0.0
    tiny = bench.Histogram()
    tiny.record(0.0)
    tiny.record(1e9)  # clamped into the last bucket, memory stays bounded
    assert len(tiny.counts) == bench.HIST_BUCKETS


def test_parse_mix() -> None:
    assert bench.parse_mix("90:10") == pytest.approx(0.9)
    assert bench.parse_mix("0:100") == 0.0
    for bad in ("90", "a:b", "0:0", "-1:5"):
        with pytest.raises(argparse.ArgumentTypeError):
            bench.parse_mix(bad)


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (Indeterminate("x"), "timeout"),
        (Indeterminate("x", status=504), "indeterminate"),
        (Overloaded("x", status=429), "overloaded"),
        (Unavailable("x", status=503), "unavailable"),
        (Unavailable("x", code="no_answer"), "timeout"),
        (ConnectionFailed("x"), "connection"),
        (NotFound("x", status=404), "not_found"),
        (TimeoutError(), "timeout"),
    ],
)
def test_error_kind(error: BaseException, kind: str) -> None:
    assert bench.error_kind(error) == kind


def test_bench_flags_do_not_clobber_the_global_ones() -> None:
    args = build_parser().parse_args(["--url", "http://a:1", "bench", "--mix", "50:50"])
    assert args.url == "http://a:1" and args.bench_url is None
    args = build_parser().parse_args(["bench", "--url", "http://b:1", "--json"])
    assert args.bench_url == "http://b:1" and args.bench_json


@pytest.fixture
async def fake() -> AsyncIterator[FakeCluster]:
    cluster = await FakeCluster().start()
    yield cluster
    await cluster.close()


def _args(url: str, **kw: object) -> argparse.Namespace:
    argv = ["--url", url, "bench", "--clients", "4", "--duration", "0.3", "--warmup", "0.1", "--keys", "20"]
    for key, value in kw.items():
        argv += [f"--{key.replace('_', '-')}"] + ([str(value)] if value != "" else [])
    return build_parser().parse_args(argv)


async def test_a_short_raftmem_run(fake: FakeCluster) -> None:
    report = await bench.bench(_args(",".join(fake.url_list()), mix="50:50", consistency="strong,eventual"))
    rows = {(r["op"], r["consistency"]): r for r in report["results"]}
    assert set(rows) == {("read", "strong"), ("read", "eventual"), ("write", "-"), ("all", "-")}
    assert rows[("all", "-")]["count"] == sum(r["count"] for k, r in rows.items() if k[0] != "all") > 0
    assert all(not r["errors"] for r in rows.values())
    assert len({k for (ns, k) in fake.data if ns == bench.NAMESPACE}) == 20  # preloaded
    writes = [s for s in fake.data_requests() if s.method == "PUT"]
    assert "Idempotency-Key" not in writes[-1].headers  # not --idempotent


async def test_searches_join_the_mix(fake: FakeCluster) -> None:
    report = await bench.bench(_args(",".join(fake.url_list()), mix="0:1:3", search="text,vector,filtered",
                                     dims=8, search_fresh=""))
    rows = {(r["op"], r["consistency"]) for r in report["results"]}
    assert {("search", "text"), ("search", "vector"), ("search", "filtered"), ("write", "-")} <= rows
    kinds = {("query" in b, "vector" in b, "filter" in b) for b in fake.searches}
    assert kinds == {(True, False, False), (False, True, False), (True, False, True)}
    assert all(b["fresh"] is True and b["namespace"] == "load" for b in fake.searches)
    assert all(len(b["vector"]) == 8 for b in fake.searches if "vector" in b)


async def test_a_preload_sends_again_what_back_pressure_refused(fake: FakeCluster) -> None:
    fake.batch_refusals = 5
    report = await bench.bench(_args(",".join(fake.url_list()), mix="0:100", preload=40, preload_batch=8))
    assert report["preload_memories_per_s"] and fake.batch_refusals == 0
    sent = [op["id"] for s in fake.data_requests() if s.path == "/v1/batch"
            for op in orjson.loads(s.body)["ops"]]
    assert set(sent) >= {bench.key_id(k) for k in range(40)}
    assert len(sent) >= 45  # the five refused operations went twice


async def test_a_preload_fails_on_a_refusal_that_does_not_pass(fake: FakeCluster) -> None:
    fake.always = Fault(400, path_prefix="/v1/batch")
    with pytest.raises(ClientError):
        await bench.bench(_args(",".join(fake.url_list()), mix="0:100", preload=8, preload_batch=8))


async def test_errors_are_counted_by_kind(fake: FakeCluster) -> None:
    fake.always = Fault(503)
    report = await bench.bench(_args(fake.url_list()[0], mix="0:100"))
    total = report["results"][-1]
    assert total["count"] == 0 and total["errors"]["unavailable"] > 0


def test_unknown_levels_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    args = _args("http://127.0.0.1:1", consistency="strong", target="etcd")
    assert bench._run(args) == 2
    assert "etcd has no consistency level strong" in capsys.readouterr().err


class FakeEtcd:
    """etcd's JSON gateway, the three calls the bench makes."""

    def __init__(self) -> None:
        self.kv: dict[str, str] = {}
        self.ranges: list[dict[str, object]] = []

    def app(self) -> web.Application:
        async def put(request: web.Request) -> web.Response:
            body = json.loads(await request.read())
            self.kv[body["key"]] = body["value"]
            return web.json_response({"header": {"revision": str(len(self.kv))}})

        async def range_(request: web.Request) -> web.Response:
            body = json.loads(await request.read())
            self.ranges.append(body)
            kvs = [{"key": body["key"], "value": self.kv[body["key"]]}] if body["key"] in self.kv else []
            return web.json_response({"header": {}, "kvs": kvs, "count": str(len(kvs))} if kvs else {"header": {}})

        async def status(_request: web.Request) -> web.Response:
            return web.json_response({"header": {"member_id": "1"}, "leader": "1"})

        app = web.Application()
        app.router.add_post("/v3/kv/put", put)
        app.router.add_post("/v3/kv/range", range_)
        app.router.add_post("/v3/maintenance/status", status)
        return app


async def test_a_short_etcd_run() -> None:
    etcd = FakeEtcd()
    server = TestServer(etcd.app(), host="127.0.0.1")
    await server.start_server()
    try:
        url = str(server.make_url("")).rstrip("/")
        report = await bench.bench(_args(url, mix="100:0", consistency="linearizable,serializable", target="etcd", value_bytes=10))
    finally:
        await server.close()
    rows = {(r["op"], r["consistency"]): r for r in report["results"]}
    assert rows[("read", "linearizable")]["count"] > 0 and rows[("read", "serializable")]["count"] > 0
    assert all(not r["errors"] for r in rows.values())
    assert len(etcd.kv) == 20
    assert base64.b64decode(next(iter(etcd.kv.values()))) == b"0123456789"
    assert {bool(r.get("serializable")) for r in etcd.ranges} == {True, False}
