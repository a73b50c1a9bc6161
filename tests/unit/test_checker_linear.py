"""The linearizability checker on tiny handmade histories, and against a brute-force
oracle on random small ones."""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Sequence
from typing import Any

import pytest

from jepsen_like.checker.history import HistoryBuilder, HistoryError, Operation, pair_operations
from jepsen_like.checker.linear import check_linearizable

DEADLINE_S = 10.0
RANDOM_HISTORIES = 1000
RANDOM_SEED = 20251121


def _check(builder: HistoryBuilder, model: str = "register", deadline_s: float = DEADLINE_S):
    return check_linearizable(builder.events, model, deadline_s)


def test_empty_history_is_valid() -> None:
    assert check_linearizable([], "register", DEADLINE_S)["valid"] is True


def test_sequential_write_then_read_is_valid() -> None:
    h = HistoryBuilder()
    h.invoke(0, "write", "x", 1)
    h.ok(0)
    h.invoke(0, "read", "x")
    h.ok(0, 1)
    assert _check(h)["valid"] is True


def test_read_of_absent_key_returns_none() -> None:
    h = HistoryBuilder()
    h.invoke(0, "read", "x")
    h.ok(0, None)
    assert _check(h)["valid"] is True


def test_stale_read_is_invalid_and_reported() -> None:
    h = HistoryBuilder()
    h.invoke(0, "write", "x", 1)
    h.ok(0)
    h.invoke(0, "write", "x", 2)
    h.ok(0)
    h.invoke(1, "read", "x")
    h.ok(1, 1)  # 2 was acknowledged before this read began
    result = _check(h)
    assert result["valid"] is False
    assert result["key"] == "x"
    stuck = [op for op in result["failure_window"] if op["role"] == "stuck"]
    assert len(stuck) == 1
    assert stuck[0]["f"] == "read" and stuck[0]["output"] == 1
    assert stuck[0]["state_before"] == 2
    assert stuck[0]["invoke"]["index"] == 4 and stuck[0]["complete"]["index"] == 5
    linearized = [op["value"] for op in result["failure_window"] if op["role"] == "linearized"]
    assert linearized == [1, 2]
    assert "state is 2" in result["explanation"]


def test_concurrent_overlapping_write_and_read_is_valid_either_way() -> None:
    for seen in (None, 1):
        h = HistoryBuilder()
        h.invoke(0, "write", "x", 1)
        h.invoke(1, "read", "x")
        h.ok(1, seen)
        h.ok(0)
        assert _check(h)["valid"] is True, seen


def test_info_write_that_later_appears_is_valid() -> None:
    h = HistoryBuilder()
    h.invoke(0, "write", "x", 7)
    h.info(0, None, error="timeout")
    h.invoke(1, "read", "x")
    h.ok(1, None)  # not yet applied
    h.invoke(1, "read", "x")
    h.ok(1, 7)  # now it is
    assert _check(h)["valid"] is True


def test_missing_completion_is_unknown_and_may_never_happen() -> None:
    h = HistoryBuilder()
    h.invoke(0, "write", "x", 7)  # never completes
    h.invoke(1, "read", "x")
    h.ok(1, None)
    assert _check(h)["valid"] is True


def test_info_write_cannot_take_effect_before_its_invoke() -> None:
    h = HistoryBuilder()
    h.invoke(1, "read", "x")
    h.ok(1, 7)
    h.invoke(0, "write", "x", 7)
    h.info(0, None)
    assert _check(h)["valid"] is False


def test_failed_write_whose_value_is_read_is_invalid() -> None:
    h = HistoryBuilder()
    h.invoke(0, "write", "x", 5)
    h.fail(0)
    h.invoke(1, "read", "x")
    h.ok(1, 5)
    assert _check(h)["valid"] is False


def test_cas_ok_must_match() -> None:
    h = HistoryBuilder()
    h.invoke(0, "write", "x", 1)
    h.ok(0)
    h.invoke(0, "cas", "x", [2, 3])
    h.ok(0)
    assert _check(h)["valid"] is False
    h = HistoryBuilder()
    h.invoke(0, "write", "x", 1)
    h.ok(0)
    h.invoke(0, "cas", "x", [1, 3])
    h.ok(0)
    h.invoke(0, "read", "x")
    h.ok(0, 3)
    assert _check(h)["valid"] is True


def test_unknown_cas_may_apply_or_not() -> None:
    for seen in (1, 3):
        h = HistoryBuilder()
        h.invoke(0, "write", "x", 1)
        h.ok(0)
        h.invoke(0, "cas", "x", [1, 3])
        h.info(0, None)
        h.invoke(1, "read", "x")
        h.ok(1, seen)
        assert _check(h)["valid"] is True, seen


def test_keys_are_independent_and_the_bad_one_is_named() -> None:
    h = HistoryBuilder()
    h.invoke(0, "write", "a", 1)
    h.ok(0)
    h.invoke(0, "read", "b")
    h.ok(0, 1)  # b was never written
    h.invoke(0, "read", "a")
    h.ok(0, 1)
    result = _check(h)
    assert result["valid"] is False and result["key"] == "b"


def test_json_values_compare_structurally() -> None:
    h = HistoryBuilder()
    h.invoke(0, "write", "x", {"a": [1, 2]})
    h.ok(0)
    h.invoke(0, "cas", "x", [{"a": [1, 2]}, [3]])
    h.ok(0)
    h.invoke(0, "read", "x")
    h.ok(0, [3])
    assert _check(h)["valid"] is True


def test_kv_model_append_and_get() -> None:
    h = HistoryBuilder()
    h.invoke(0, "append", "k", "a")
    h.invoke(1, "append", "k", "b")
    h.ok(0)
    h.ok(1)
    h.invoke(0, "get", "k")
    h.ok(0, "ba")
    assert _check(h, "kv")["valid"] is True
    h.invoke(0, "get", "k")
    h.ok(0, "ab")  # the order was already fixed by the previous get
    assert _check(h, "kv")["valid"] is False


def test_unknown_operation_is_refused() -> None:
    h = HistoryBuilder()
    h.invoke(0, "frobnicate", "x", 1)
    h.ok(0)
    with pytest.raises(HistoryError, match="frobnicate"):
        _check(h)


def _hard_history(h: HistoryBuilder, key: str, writers: int) -> None:
    """Many concurrent writes, then a read of a value nobody wrote: proving it
    invalid means trying every subset of the writes."""
    for p in range(writers):
        h.invoke(p, "write", key, p)
    h.invoke(writers, "read", key)
    h.ok(writers, -1)
    for p in range(writers):
        h.ok(p)


def test_deadline_exhaustion_gives_unknown() -> None:
    h = HistoryBuilder()
    _hard_history(h, "hard", 18)
    started = time.monotonic()
    result = _check(h, deadline_s=0.05)
    assert result["valid"] == "unknown"
    assert result["reason"] == "deadline" and result["key"] == "hard"
    assert time.monotonic() - started < 2.0


def test_small_failing_key_found_before_hard_key() -> None:
    h = HistoryBuilder()
    _hard_history(h, "hard", 18)
    h.invoke(100, "write", "easy", 1)
    h.ok(100)
    h.invoke(100, "read", "easy")
    h.ok(100, 2)
    result = _check(h, deadline_s=0.05)
    assert result["valid"] is False and result["key"] == "easy"


# --- a brute-force oracle on random small histories -------------------------------


def _oracle(ops: Sequence[Operation]) -> bool:
    """Try every subset of the unknown ops and every order that respects real time."""
    known = [op for op in ops if op.status == "ok"]
    unknown = [op for op in ops if op.status == "unknown" and op.f != "read"]
    for r in range(len(unknown) + 1):
        for chosen in itertools.combinations(unknown, r):
            candidate = known + list(chosen)
            for order in itertools.permutations(candidate):
                if _respects_real_time(order) and _legal(order):
                    return True
    return False


def _respects_real_time(order: Sequence[Operation]) -> bool:
    for i, later in enumerate(order):
        for earlier in order[i + 1 :]:
            # `earlier` comes after `later` in this order: wrong if it finished first.
            if earlier.ret is not None and earlier.ret < later.call:
                return False
    return True


def _legal(order: Sequence[Operation]) -> bool:
    state: Any = None
    for op in order:
        if op.f == "read":
            if op.output != state:
                return False
        elif op.f == "write":
            state = op.value
        elif state == op.value[0]:
            state = op.value[1]
        elif op.status == "ok":
            return False
    return True


def _random_history(rng: random.Random) -> HistoryBuilder:
    h = HistoryBuilder()
    # Half the histories come from a real register (each op takes effect when it
    # completes, so mostly valid); the rest read random values (mostly invalid).
    honest = rng.random() < 0.5
    register: Any = None
    busy: dict[int, tuple[str, Any]] = {}  # process -> (f, value) in flight
    invokes = 0
    max_ops = rng.randint(2, 7)
    while invokes < max_ops or busy:
        process = rng.randrange(3)
        if process in busy:
            roll = rng.random()
            f, value = busy.pop(process)
            if f == "read":
                if roll < 0.1:
                    h.info(process, None)
                else:
                    h.ok(process, register if honest else rng.choice([None, 0, 1, 2]))
            elif roll < 0.15:
                h.info(process, None)
            elif roll < 0.3 or (f == "cas" and honest and register != value[0]):
                h.fail(process)
            else:
                register = value if f == "write" else value[1]
                h.ok(process)
        elif invokes < max_ops:
            invokes += 1
            f = rng.choice(["read", "read", "write", "cas"])
            value = None
            if f == "write":
                value = rng.randrange(3)
            elif f == "cas":
                value = [rng.choice([None, 0, 1, 2]), rng.randrange(3)]
            busy[process] = (f, value)
            h.invoke(process, f, "x", value)
    return h


def test_agrees_with_brute_force_on_random_histories() -> None:
    rng = random.Random(RANDOM_SEED)
    verdicts = {True: 0, False: 0}
    for _ in range(RANDOM_HISTORIES):
        h = _random_history(rng)
        expected = _oracle(pair_operations(h.events))
        result = _check(h)
        assert result["valid"] is expected, [e.to_dict() for e in h.events]
        verdicts[expected] += 1
    # The generator must exercise both outcomes, or the comparison proves little.
    assert min(verdicts.values()) > RANDOM_HISTORIES // 4, verdicts
