"""Per-node health as the client sees it: a latency estimate (EWMA) and an error
streak per node URL, used to pick where stale-tolerant reads go and to back off
a node that stops answering. Pure: the client feeds it outcomes and the time.

- A node that answers (any HTTP status) updates its latency EWMA and clears its
  streak. A node that gives no answer (refused, timed out, connection lost) is
  backed off for `BACKOFF_S_MIN` doubling per consecutive failure up to
  `BACKOFF_S_MAX`; when that passes it is due a probe (GET /healthz, short
  timeout) before real traffic goes back to it.
- Picking (`pick`): two random available nodes, the one with the lower latency
  estimate wins ("power of two choices", as Finagle and Linkerd balance): load
  shifts away from a slow node without piling everything on the fastest one.
  A node never measured counts as fast, so every node gets measured.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

EWMA_ALPHA = 0.3  # weight of the newest sample
BACKOFF_S_MIN = 0.5
BACKOFF_S_MAX = 10.0
PROBE_TIMEOUT_S = 0.5


@dataclass
class NodeHealth:
    latency_s: float | None = None  # EWMA of answered requests
    streak: int = 0  # consecutive requests without an answer
    down_until: float = 0.0  # backed off until then (monotonic)
    probing: bool = False  # a /healthz probe is in flight
    answered: int = 0
    failed: int = 0
    last_error: str | None = None


class HealthTable:
    def __init__(self, rng: random.Random | None = None) -> None:
        self.nodes: dict[str, NodeHealth] = {}
        self._rng = rng or random.Random()

    def _of(self, url: str) -> NodeHealth:
        health = self.nodes.get(url)
        if health is None:
            health = self.nodes[url] = NodeHealth()
        return health

    def answered(self, url: str, latency_s: float) -> None:
        h = self._of(url)
        h.latency_s = latency_s if h.latency_s is None else (1 - EWMA_ALPHA) * h.latency_s + EWMA_ALPHA * latency_s
        h.streak = 0
        h.down_until = 0.0
        h.answered += 1

    def no_answer(self, url: str, now: float, reason: str) -> None:
        h = self._of(url)
        h.streak += 1
        h.failed += 1
        h.last_error = reason
        h.down_until = now + min(BACKOFF_S_MAX, BACKOFF_S_MIN * 2 ** (h.streak - 1))

    def usable(self, url: str, now: float) -> bool:
        """Answering, as far as we know (never tried counts as answering)."""
        return self._of(url).streak == 0

    def due_probe(self, urls: Sequence[str], now: float) -> list[str]:
        """Backed-off nodes whose back-off has run out and that no probe is testing."""
        return [u for u in urls if (h := self._of(u)).streak > 0 and now >= h.down_until and not h.probing]

    def pick(self, urls: Sequence[str], now: float) -> str:
        """Where a stale-tolerant read goes. When no node is usable, the one whose
        back-off ends first (a request is the probe then)."""
        usable = [u for u in urls if self.usable(u, now)]
        if not usable:
            return min(urls, key=lambda u: self._of(u).down_until)
        if len(usable) == 1:
            return usable[0]
        a, b = self._rng.sample(usable, 2)
        return a if self._score(a) <= self._score(b) else b

    def _score(self, url: str) -> float:
        latency = self._of(url).latency_s
        return 0.0 if latency is None else latency

    def snapshot(self, now: float) -> dict[str, dict[str, Any]]:
        """What `AsyncClient.health()` shows, per node URL."""
        return {
            url: {
                "usable": h.streak == 0,
                "latency_ms": None if h.latency_s is None else round(h.latency_s * 1000, 3),
                "failures_in_a_row": h.streak,
                "backed_off_for_s": round(max(0.0, h.down_until - now), 3) if h.streak else 0.0,
                "answered": h.answered,
                "failed": h.failed,
                "last_error": h.last_error,
            }
            for url, h in sorted(self.nodes.items())
        }
