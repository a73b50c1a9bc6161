from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from raftmem import codec, validation
from raftmem.errors import InvalidRequest
from raftmem.routing import placement, shard_for

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@given(st.lists(st.fixed_dictionaries({"t": st.just("put"), "ns": st.text(max_size=10), "v": json_values}), max_size=5))
def test_entry_round_trip(ops: list[dict]) -> None:
    assert codec.decode_entry(codec.encode_entry(ops)) == ops


@pytest.mark.parametrize(
    "data",
    [b"", b"\x02{}", b"\x01not json", b'\x01{"ops": 3}', b'\x01{"ops": [{"t": "drop_all"}]}', b"\x80\x04pickle"],
)
def test_decode_refuses_what_it_does_not_know(data: bytes) -> None:
    with pytest.raises(codec.CodecError):
        codec.decode_entry(data)


def test_encode_refuses_unknown_operation() -> None:
    with pytest.raises(codec.CodecError):
        codec.encode_entry([{"t": "bogus"}])


def test_shard_hash_is_stable_across_processes() -> None:
    keys = [("team-a", f"m-{i}") for i in range(50)]
    here = [shard_for(ns, mid, 8) for ns, mid in keys]
    code = (
        "from raftmem.routing import shard_for;"
        f"print([shard_for(ns, mid, 8) for ns, mid in {keys!r}])"
    )
    # A fresh interpreter has a different hash() salt; our hash must not care.
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": "12345", "PATH": ""}).stdout
    assert eval(there) == here  # noqa: S307 (our own output)
    assert shard_for("team-a", "m-42", 8) == shard_for("team-a", "m-42", 8)
    assert Counter(here).keys() == set(range(8))  # spreads over every shard


def test_three_nodes_hold_every_shard_with_leaders_spread() -> None:
    table = placement(["n1", "n2", "n3"], 8, 3)
    assert all(sorted(r) == ["n1", "n2", "n3"] for r in table.values())
    preferred = Counter(r[0] for r in table.values())
    assert max(preferred.values()) - min(preferred.values()) <= 1


def test_adding_a_fourth_node_moves_about_a_quarter() -> None:
    shards = 256
    before = placement(["n1", "n2", "n3", "n4"], shards, 3)
    after = placement(["n1", "n2", "n3", "n4", "n5"], shards, 3)
    moved = sum(len(set(after[s]) - set(before[s])) for s in range(shards))
    fraction = moved / (shards * 3)
    assert 0.1 < fraction < 0.35, fraction
    three = placement(["n1", "n2", "n3"], shards, 3)
    four = placement(["n1", "n2", "n3", "n4"], shards, 3)
    moved = sum(len(set(four[s]) - set(three[s])) for s in range(shards))
    assert 0.15 < moved / (shards * 3) < 0.35


def test_names_refuse_a_trailing_newline() -> None:
    assert validation.name("id", "m-1", 256) == "m-1"
    assert validation.name("id", ".m.", 256) == ".m."
    for bad in ("m-1\n", "\nm-1", "m 1", "m/1", ".", "..", "..."):
        with pytest.raises(InvalidRequest):
            validation.name("id", bad, 256)


def test_the_shard_hash_keeps_its_values() -> None:
    """Placement of every stored memory depends on it: the server, the client and
    the harness share one function (raftmem.shardhash), so pin what it gives."""
    assert [shard_for("team-a", f"m-{i}", 8) for i in range(12)] == [6, 5, 4, 0, 0, 1, 7, 3, 4, 3, 7, 4]
    assert shard_for("ns", "k", 256) == 194
