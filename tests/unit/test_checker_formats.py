"""Readers of the reference history formats (EDN, Jepsen logs, VERDICTS)."""

from __future__ import annotations

from pathlib import Path

import pytest

from jepsen_like.checker.history import HistoryError
from jepsen_like.checker.testdata_formats import (
    Keyword,
    load_verdicts,
    parse_edn_kv,
    parse_jepsen_log,
    read_edn,
)


def test_edn_subset() -> None:
    value = read_edn('{:a [1 -2 3.5 nil true], "s" "q\\"x\\n", :k :v, :l (x), :t #{1}} ; c')
    assert value == {"a": [1, -2, 3.5, None, True], "s": 'q"x\n', "k": "v", "l": ["x"], "t": [1]}
    assert isinstance(value["k"], Keyword)
    for bad in ("{:a}", "[1 2", '"open', "{:a 1} 2", "[" * 100 + "]" * 100):
        with pytest.raises(HistoryError):
            read_edn(bad)


def test_jepsen_log_tabs_and_spaces(tmp_path: Path) -> None:
    path = tmp_path / "h.log"
    path.write_text(
        "INFO  jepsen.util - 3\t:invoke\t:cas\t[1 2]\n"
        "INFO  jepsen.util - 1   :invoke :read   nil\n"
        "\n"
        "INFO  jepsen.util - 3\t:info\t:cas\t:timed-out\n"
        "INFO  jepsen.util - 1  :ok     :read   4\n"
    )
    events = parse_jepsen_log(path)
    assert [(e.process, e.type, e.f, e.value, e.error) for e in events] == [
        (3, "invoke", "cas", [1, 2], None),
        (1, "invoke", "read", None, None),
        (3, "info", "cas", None, "timed-out"),
        (1, "ok", "read", 4, None),
    ]
    assert [e.index for e in events] == [0, 1, 2, 3]
    path.write_text("WARN something else\n")
    with pytest.raises(HistoryError, match=":1:"):
        parse_jepsen_log(path)


def test_edn_kv(tmp_path: Path) -> None:
    path = tmp_path / "h.txt"
    path.write_text(
        '{:process 0, :type :invoke, :f :get, :key "7", :value nil}\n'
        '{:process 0, :type :ok, :f :get, :key "7", :value "x 1 y"}\n'
    )
    events = parse_edn_kv(path)
    assert [(e.type, e.f, e.key, e.value) for e in events] == [
        ("invoke", "get", "7", None),
        ("ok", "get", "7", "x 1 y"),
    ]


def test_verdicts(tmp_path: Path) -> None:
    path = tmp_path / "VERDICTS"
    path.write_text("a.log linearizable\nb.log not-linearizable\n\n")
    assert load_verdicts(path) == {"a.log": True, "b.log": False}
    path.write_text("a.log maybe\n")
    with pytest.raises(HistoryError):
        load_verdicts(path)
