"""A node's budget of text index commits, shared by its replicas' indexes.

A tantivy commit costs a fixed ~7 ms of CPU on this project's machine whatever
it holds (raftmem/indexing/DESIGN.md, "Commits"): with every replica of 8 shards
committing every `batch_ms`, a node spent most of a core committing. The
budget spreads at most `commits_per_s` commits a second (after a burst of
`commits_burst`) over the node's replicas, in the order they asked: under
writes to every shard, each replica commits in turn and absorbs more per
commit; when few replicas have changes waiting, none waits for the budget.

Only batched and lazy absorption takes the budget. Eager changes, readers
waiting on the index (`fresh`, session and causal searches, the default
search's eager barrier) and a full queue are absorbed at once and do not
spend it (the budget is how soon a batch *may* go, never a wait a reader sees).

Pure (times are given): a generic cell rate algorithm, where each grant is a
reservation of the next free slot.
"""

from __future__ import annotations


class CommitBudget:
    def __init__(self, per_s: float, burst: int) -> None:
        assert per_s >= 0 and burst >= 1
        self.per_s = per_s
        self.interval = 1.0 / per_s if per_s > 0 else 0.0
        self.tolerance = (burst - 1) * self.interval  # how far ahead of the rate a burst may go
        self._tat = 0.0  # theoretical arrival time of the next commit at the rate
        self.granted = 0
        self.delayed = 0
        self.delay_s = 0.0  # total of the delays granted

    @property
    def unlimited(self) -> bool:
        return self.per_s <= 0

    def reserve(self, now_s: float) -> float:
        """A slot for one commit: the time it may start (now or later). Slots
        are granted in the order asked, so replicas take turns."""
        self.granted += 1
        if self.unlimited:
            return now_s
        slot = max(now_s, self._tat - self.tolerance)
        self._tat = max(self._tat, now_s) + self.interval
        if slot > now_s:
            self.delayed += 1
            self.delay_s += slot - now_s
        return slot
