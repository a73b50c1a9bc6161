from __future__ import annotations

import json
import logging

from cli.logfmt import JsonFormatter


def test_json_logs_carry_node_shard_term_index() -> None:
    record = logging.LogRecord("raftmem.consensus", logging.INFO, __file__, 1, "shard %d: %s", (3, "leader"), None)
    record.shard, record.term, record.index = 3, 7, 1207
    out = json.loads(JsonFormatter("n2").format(record))
    assert out["node"] == "n2" and out["message"] == "shard 3: leader"
    assert (out["shard"], out["term"], out["index"]) == (3, 7, 1207)
    assert out["level"] == "INFO" and out["logger"] == "raftmem.consensus"
    plain = logging.LogRecord("raftmem.node", logging.WARNING, __file__, 1, "hello", (), None)
    assert "shard" not in json.loads(JsonFormatter("n1").format(plain))
