"""A synthetic memory corpus for benchmarks: texts drawn from a Zipf-shaped
vocabulary (a few words common, most rare, as in real notes), agents, kinds,
tags, and unit vectors of a chosen dimension. Deterministic per index, so a
preload and a later search agree on what exists.

Vectors are random directions, not meanings: they exercise the index (its
dimension, its graph, its filters) the way real 384-dimensional embeddings do,
without a model to run."""

from __future__ import annotations

import math
import random
from typing import Any

VOCABULARY_SIZE = 5000
ZIPF_S = 1.1
AGENTS = 32
KINDS = ("episodic", "fact", "plan", "observation")
TAGS = ("deploy", "review", "incident", "customer", "infra", "research", "todo", "done")
_SYLLABLES = ("ka", "lo", "mi", "ren", "to", "sa", "vi", "dor", "ul", "pe", "xa", "qui", "bo", "ne", "ti", "gar")


def _word(i: int) -> str:
    out = []
    n = i + 1
    while n:
        n, r = divmod(n, len(_SYLLABLES))
        out.append(_SYLLABLES[r])
    return "".join(out)


WORDS = [_word(i) for i in range(VOCABULARY_SIZE)]
_WEIGHTS = [1 / (rank + 1) ** ZIPF_S for rank in range(VOCABULARY_SIZE)]
_CUMULATIVE: list[float] = []
_total = 0.0
for _w in _WEIGHTS:
    _total += _w
    _CUMULATIVE.append(_total)


def words(rng: random.Random, n: int) -> list[str]:
    return rng.choices(WORDS, cum_weights=_CUMULATIVE, k=n)


def vector(rng: random.Random, dims: int) -> list[float]:
    v = [rng.gauss(0.0, 1.0) for _ in range(dims)]
    norm = math.sqrt(sum(x * x for x in v)) or 1.0
    return [round(x / norm, 6) for x in v]


def memory(i: int, dims: int = 0) -> dict[str, Any]:
    """The i-th memory's body (PUT)."""
    rng = random.Random(i * 7919 + 1)
    body: dict[str, Any] = {
        "content": " ".join(words(rng, rng.randint(12, 40))),
        "agent_id": f"agent-{i % AGENTS}",
        "kind": KINDS[i % len(KINDS)],
        "tags": sorted(set(rng.sample(TAGS, rng.randint(1, 3)))),
        "metadata": {"n": i, "priority": rng.randint(1, 5)},
    }
    if dims:
        body["embedding"] = vector(rng, dims)
    return body


def query(rng: random.Random) -> str:
    """2-3 words, mostly mid-frequency (the common ones match everything)."""
    return " ".join(WORDS[min(VOCABULARY_SIZE - 1, int(rng.paretovariate(0.8) * 20))] for _ in range(rng.randint(2, 3)))


def search_body(kind: str, rng: random.Random, namespace: str, dims: int, limit: int = 10) -> dict[str, Any]:
    """A search of `kind`: text, vector, hybrid, filtered (text with a filter)."""
    body: dict[str, Any] = {"namespace": namespace, "limit": limit}
    if kind in ("text", "hybrid", "filtered"):
        body["query"] = query(rng)
    if kind in ("vector", "hybrid"):
        body["vector"] = vector(rng, dims)
    if kind == "filtered":
        body["filter"] = {"agent_id": f"agent-{rng.randrange(AGENTS)}", "metadata.priority": {"$gte": 3}}
    return body
