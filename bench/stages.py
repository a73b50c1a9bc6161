"""Sort py-spy samples of raftmem nodes into the stages of a write (issue 17), for
bench/profile_writes.sh.

    python bench/stages.py --dir DIR --load LOAD --nodes "n1 n2 n3"

DIR holds, per node, NODE.collapsed (py-spy's raw format: one stack per line,
root first, frames `function (file:line)` separated by `;`, then the count), the
node's CPU seconds over the run in node-cpu.txt (`NODE SECONDS` lines), and the
wrk outputs wrk.*.txt (their last JSON line: requests, duration). Each node's
samples are weighed by its CPU seconds, so a stage's share is of the servers' CPU.

A stack belongs to the stage of its deepest matching frame, except that the
stages in OWNERS keep everything below them (a RocksDB write under the journal is
the journal's, not the state machine's)."""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter, defaultdict
from pathlib import Path

# (stage, pattern on a frame's file): the deepest matching frame of a stack decides,
# and a frame takes the first rule it matches.
RULES: tuple[tuple[str, str], ...] = (
    ("HTTP server (aiohttp: parse, dispatch, write)", r"\((aiohttp/web|aiohttp/http|aiohttp/streams|raftmem/httpserver)"),
    ("HTTP client (forwarding to a leader)", r"\(aiohttp/(client|connector)"),
    ("API handlers and replies (raftmem/api.py, codec)", r"\(raftmem/(api|codec)\.py"),
    ("validation", r"\(raftmem/(validation|config/)"),
    ("commands: encode, decode, fingerprint", r"\(raftmem/commands/"),
    ("service: routing, leaders, outcomes", r"\(raftmem/(service/|routing|shardhash|leases|membership)"),
    ("propose: shard, group commit, waits", r"\(raftmem/(replica|shard|reads|consensus/waits)\.py"),
    ("Raft transport: sockets, serialization", r"\(raftmem/consensus/(transport|poller)\.py|pysyncobj/(tcp_connection|poller|serializer)"),
    ("Raft: ticks, log, replication (pysyncobj, our group, hooks)",
     r"\((pysyncobj/|raftmem/consensus/(group|ticker|hooks|patches|snapshots))"),
    ("journal: append, truncate (RocksDB)", r"\(raftmem/consensus/journal\.py"),
    ("apply: state machine, RocksDB batch", r"\(raftmem/(statemachine|statekeys|statereads|coordination|storage|lifecycle)\.py"),
    ("history and change events", r"\(raftmem/(history|events)\.py"),
    ("derived indexes (absorb: tantivy, usearch)", r"\(raftmem/(indexing/|textindex|vectorindex)"),
    ("metrics", r"\((raftmem/metrics|prometheus_client/)"),
)
OWNERS = frozenset({
    "journal: append, truncate (RocksDB)",
    "apply: state machine, RocksDB batch",
    "derived indexes (absorb: tantivy, usearch)",
    "HTTP client (forwarding to a leader)",
    "metrics",
})
THREAD_STAGES = (("fsync thread (fsync and its bookkeeping)", "raft-fsync"),)
OTHER = "event loop (uvloop's C: polling, callbacks), asyncio, thread pools"
COMPILED = tuple((stage, re.compile(pattern)) for stage, pattern in RULES)


def stage_of(stack: str) -> str:
    frames = stack.split(";")
    for stage, thread in THREAD_STAGES:
        if thread in frames[0]:
            return stage
    found = OTHER
    for frame in frames[1:]:
        for stage, pattern in COMPILED:
            if pattern.search(frame):
                found = stage
                break
        if found in OWNERS:
            break
    return found


def leaf(stack: str) -> str:
    return re.sub(r" \(([^:]*)(:\d+)?\)$", r" (\1)", stack.rsplit(";", 1)[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", required=True, type=Path)
    parser.add_argument("--load", default="write")
    parser.add_argument("--nodes", default="n1 n2 n3")
    args = parser.parse_args()
    cpu = dict(line.split() for line in (args.dir / "node-cpu.txt").read_text().splitlines() if line.strip())
    weighted: dict[str, float] = defaultdict(float)
    leaves: dict[str, Counter[str]] = defaultdict(Counter)
    total_cpu = 0.0
    for node in args.nodes.split():
        samples: Counter[str] = Counter()
        for line in (args.dir / f"{node}.collapsed").read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if stack and count.isdigit():  # --nonblocking may tear a line
                samples[stack] += int(count)
        n = sum(samples.values()) or 1
        node_cpu = float(cpu[node])
        total_cpu += node_cpu
        for stack, count in samples.items():
            stage = stage_of(stack)
            weighted[stage] += node_cpu * count / n
            leaves[stage][leaf(stack)] += count
    requests = 0
    for path in sorted(args.dir.glob("wrk.*.txt")):
        lines = [ln for ln in path.read_text().splitlines() if ln.startswith("{")]
        if lines:
            requests += json.loads(lines[-1])["requests"]
    per = 16 if args.load.startswith("batch") else 1
    ops = requests * per
    print(f"load {args.load}: {requests} requests ({ops} memory ops), servers' CPU {total_cpu:.2f} s, "
          f"{total_cpu * 1e6 / max(1, ops):.0f} µs per memory op\n")
    print("| stage | share | µs per memory op | hottest leaf frames |")
    print("|---|--:|--:|---|")
    for stage, seconds in sorted(weighted.items(), key=lambda kv: -kv[1]):
        hot = ", ".join(f"`{name}`" for name, _ in leaves[stage].most_common(2))
        print(f"| {stage} | {seconds / total_cpu:.1%} | {seconds * 1e6 / max(1, ops):.0f} | {hot} |")
    threads_table(args.dir, ops)
    return 0


def _thread_group(name: str) -> str:
    """Threads by kind: numbered siblings (absorb_0, rocksdb:low3) counted together."""
    return re.sub(r"[-_:]?\d+$", "", name.strip()) or name


def threads_table(directory: Path, ops: int) -> None:
    """CPU by thread kind over the run, from /proc (natives included)."""
    before, after = directory / "threads-before.tsv", directory / "threads-after.tsv"
    if not (before.exists() and after.exists()):
        return
    clk = 100  # USER_HZ

    def load(path: Path) -> Counter[tuple[str, str]]:
        out: Counter[tuple[str, str]] = Counter()
        for line in path.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) == 3:
                out[(parts[0], _thread_group(parts[1]))] += int(parts[2])
        return out

    b, a = load(before), load(after)
    by_kind: Counter[str] = Counter()
    for key, ticks in a.items():
        by_kind[key[1]] += ticks - b.get(key, 0)
    total = sum(by_kind.values()) or 1
    print(f"\nCPU by thread (all nodes, from /proc; threads born during the run counted whole): {total / clk:.2f} s\n")
    print("| thread | CPU s | share | µs per memory op |")
    print("|---|--:|--:|--:|")
    for kind, ticks in by_kind.most_common():
        if ticks > 0:
            print(f"| {kind} | {ticks / clk:.2f} | {ticks / total:.1%} | {ticks / clk * 1e6 / max(1, ops):.0f} |")


if __name__ == "__main__":
    raise SystemExit(main())
