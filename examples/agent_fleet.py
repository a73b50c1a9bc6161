"""A fleet of agents sharing memory through raftmem, while a node dies under them.

    make run                                             # a local 3-node cluster (another terminal)
    python examples/agent_fleet.py --data-dir ./data     # kills a node midway, restarts it at the end
    python examples/agent_fleet.py --url http://127.0.0.1:8781 --no-kill
    python examples/agent_fleet.py --data-dir ./data --llm   # workers ask a real model (OPENAI_API_KEY)

Plain Python agents, each with its own client (and its own entry node):
- a planner puts a plan in memory and queues one task per incident report;
- workers claim tasks (a claim is theirs alone for a lease, and carries a
  fence), triage the report (a rule, or a real model with `--llm`), write the
  triage as a memory and complete the task with the claim's fence. A worker
  whose claim ran out (it stalled, or its node died) cannot complete it: the
  store refuses its stale fence, and the task goes back to the queue;
- a watcher follows the triage memories as they are committed (a watch that
  resumes by itself, from where it was, when its node dies);
- a searcher recalls triaged reports by what they say (full-text search) and
  by their fields (a filter on the triage's category), across the shards;
- chaos kills the node leading the task queue's shard (kill -9) halfway
  through, then restarts it at the end (`raftmem cluster restart`).

At the end the example checks, through the store, that nothing was lost: every
task done exactly once, one triage memory per report, the watcher told of each
write once, the searcher's recall complete, and the restarted node's own
replica holding all of them. It exits 1
otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

from raftmem.client import AsyncClient, ClientError, Fenced, Indeterminate, Progress

REPO = Path(__file__).resolve().parents[1]
REPORTS = [
    "disk full on db-3, writes failing", "deploy of api v42 rolled back after 5xx spike",
    "certificate for auth.example expires in 2 days", "latency p99 doubled on search after index rebuild",
    "on-call paged twice for flapping health check on cache-1", "backup job for orders db skipped last night",
    "memory leak suspected in worker pool, RSS grows 1 GB/hour", "dns resolution errors in zone b",
    "queue depth on billing events above 100k", "failed login spike from one subnet",
    "disk full on logs-2 after verbose logging left on", "api v43 canary healthy, waiting for approval",
]
RULES = [("disk", "capacity"), ("deploy", "release"), ("v4", "release"), ("certificate", "security"),
         ("login", "security"), ("latency", "performance"), ("leak", "performance"), ("queue", "capacity"),
         ("backup", "data"), ("dns", "network"), ("health", "reliability")]
LEASE_MS = 3000  # a claim not completed within this goes back to the queue
RESTORE_TIMEOUT_S = 60.0


def log(who: str, text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {who:>10}  {text}", flush=True)


# -- triage: a rule, or a real model --------------------------------------------------------
def triage_by_rule(report: str) -> dict[str, Any]:
    category = next((c for word, c in RULES if word in report), "other")
    return {"category": category, "urgent": any(w in report for w in ("failing", "expires", "spike", "5xx"))}


async def triage_by_model(http: aiohttp.ClientSession, args: argparse.Namespace, report: str) -> dict[str, Any]:
    prompt = ("Triage this incident report. Answer with JSON only: {\"category\": one word, \"urgent\": "
              f"true or false, \"next_step\": one sentence}}.\nReport: {report}")
    async with http.post(f"{args.llm_url.rstrip('/')}/chat/completions",
                         headers={"Authorization": f"Bearer {os.environ.get('OPENAI_API_KEY', '')}"},
                         json={"model": args.llm_model, "messages": [{"role": "user", "content": prompt}]},
                         timeout=aiohttp.ClientTimeout(total=60)) as resp:
        resp.raise_for_status()
        text = (await resp.json())["choices"][0]["message"]["content"]
    try:
        answer = json.loads(text.strip().removeprefix("```json").removesuffix("```"))
    except json.JSONDecodeError:
        answer = {"category": "other", "note": text[:500]}
    return answer if isinstance(answer, dict) else {"answer": answer}


# -- the agents --------------------------------------------------------------------------------
class Fleet:
    def __init__(self, args: argparse.Namespace, urls: list[str]) -> None:
        self.args = args
        self.urls = urls
        self.ns = f"{args.namespace}.{uuid.uuid4().hex[:8]}"  # this run's memories and queue
        self.queue = f"{self.ns}.tasks"
        self.results = f"{self.ns}.triage"
        self.done = 0
        self.halfway = asyncio.Event()
        self.all_done = asyncio.Event()
        self.killed: str | None = None
        self.watching = asyncio.Event()

    def client(self, i: int) -> AsyncClient:
        """Each agent enters the cluster through its own node."""
        return AsyncClient(self.urls[i % len(self.urls):] + self.urls[: i % len(self.urls)])

    async def planner(self) -> None:
        async with self.client(0) as c:
            session = c.session()
            await session.put(self.ns, "plan", {"goal": "triage every incident report",
                                                "reports": len(REPORTS)}, agent_id="planner", tags=["plan"])
            for i, report in enumerate(REPORTS):
                await c.enqueue_task(self.queue, {"report": report}, task_id=f"r-{i:02d}", max_attempts=10)
            log("planner", f"wrote the plan and queued {len(REPORTS)} tasks in {self.queue}")

    async def worker(self, n: int) -> None:
        name = f"worker-{n}"
        async with self.client(n) as c, aiohttp.ClientSession() as http:
            session = c.session()  # reads its own writes, from any replica
            while not self.all_done.is_set():
                try:
                    task = await c.claim_task(self.queue, lease_ms=LEASE_MS, worker=name, wait_ms=500)
                except ClientError as e:  # the node died under the claim: try again
                    log(name, f"claim failed ({e.code}); trying again")
                    continue
                if task is None:
                    continue
                report = task["payload"]["report"]
                answer = await triage_by_model(http, self.args, report) if self.args.llm else triage_by_rule(report)
                try:
                    await session.put(self.results, task["id"], {"report": report, "triage": answer},
                                      agent_id=name, kind="triage", tags=[str(answer.get("category", "other"))])
                    await self._complete(c, name, task, answer)
                except ClientError as e:
                    log(name, f"{task['id']}: {e.code}; its claim will run out and the task come back")

    async def _complete(self, c: AsyncClient, name: str, task: dict[str, Any], answer: dict[str, Any]) -> None:
        try:
            await c.complete_task(self.queue, task["id"], task["fence"], answer)
        except Fenced:
            log(name, f"{task['id']}: claim ran out (fence {task['fence']} refused); someone else has it")
            return
        except Indeterminate:
            # It may have completed: the task says.
            if (await c.get_task(self.queue, task["id"], consistency="linearizable"))["state"] != "done":
                return
        self.done += 1
        log(name, f"{task['id']} done (fence {task['fence']}): {answer.get('category')}")
        if self.done == len(REPORTS) // 2:
            self.halfway.set()

    async def chaos(self, state: dict[str, Any]) -> None:
        await self.halfway.wait()
        async with self.client(0) as c:
            await c.refresh_routes(force=True)
            shard = c.shard_of(self.queue, "")
            victim = c.routes.leaders.get(shard) if shard is not None else None
        victim = victim or next(iter(state["nodes"]))
        pid = state["nodes"][victim]["pid"]
        os.kill(pid, signal.SIGKILL)
        self.killed = victim
        log("chaos", f"kill -9 {victim} (pid {pid}), leader of the queue's shard {shard}; the fleet carries on")

    async def watcher(self) -> list[str]:
        """Told of every triage as it commits: each write once, in order per
        shard, across the node's death (the watch resumes from its tokens)."""
        seen: list[tuple[str, int]] = []
        async with self.client(4) as c:
            watch = c.watch(namespace=self.results, progress=True)
            try:
                async for change in watch:
                    if isinstance(change, Progress):
                        self.watching.set()  # from here on, nothing is missed
                        if self.all_done.is_set() and len({i for i, _ in seen}) >= len(REPORTS):
                            break
                        continue
                    seen.append((change.id, change.version or 0))
                    log("watcher", f"{change.type} {change.id} v{change.version} at {change.token}: "
                        f"{(change.record or {}).get('content', {}).get('triage', {}).get('category')}")
                    if len({i for i, _ in seen}) == len(REPORTS):
                        break
            finally:
                await watch.close()
            log("watcher", f"told of {len(seen)} writes of {len({i for i, _ in seen})} triage memories "
                f"(the stream resumed {watch.reconnects} time(s))")
        problems = []
        if len(set(seen)) != len(seen):
            problems.append(f"the watcher was told of a write twice: {sorted(seen)}")
        if {i for i, _ in seen} != {f"r-{i:02d}" for i in range(len(REPORTS))}:
            problems.append(f"the watcher missed writes: it saw {sorted({i for i, _ in seen})}")
        return problems

    async def searcher(self) -> list[str]:
        """Once the work is done: recall by text and by fields (fresh: every
        write acknowledged before the search is found)."""
        await self.all_done.wait()
        problems = []
        async with self.client(3) as c:
            hits = (await c.search(self.results, "disk full", fresh=True, limit=3))["items"]
            log("searcher", "'disk full': " + ", ".join(f"{h['id']} ({h['score']:.2f}) {h['content']['report']!r}"
                                                        for h in hits))
            expected = {f"r-{i:02d}" for i, report in enumerate(REPORTS) if "disk full" in report}
            if {h["id"] for h in hits[:len(expected)]} != expected:
                problems.append(f"'disk full' found {[h['id'] for h in hits]}, not {sorted(expected)} first")
            if not self.args.llm:  # a model's categories are its own: check the rule's
                category = "release"
                found = [m async for m in c.search_all(self.results, filter={"content.triage.category": category},
                                                       fresh=True)]
                want = sorted(f"r-{i:02d}" for i, r in enumerate(REPORTS) if triage_by_rule(r)["category"] == category)
                log("searcher", f"category {category}: {sorted(m['id'] for m in found)}")
                if sorted(m["id"] for m in found) != want:
                    problems.append(f"category {category}: found {sorted(m['id'] for m in found)}, want {want}")
        return problems

    async def watch_progress(self) -> None:
        async with self.client(2) as c:
            while True:
                page = await c.list_tasks(self.queue, state="done", limit=1000)
                if page["count"] == len(REPORTS) and not page.get("open"):
                    self.all_done.set()
                    return
                await asyncio.sleep(0.2)


# -- checks -------------------------------------------------------------------------------------
async def check(fleet: Fleet) -> list[str]:
    problems: list[str] = []
    async with fleet.client(1) as c:
        tasks: list[dict[str, Any]] = []
        for state in ("done", "dead", "ready", "claimed"):
            tasks += [dict(t, state=state) for t in (await c.list_tasks(fleet.queue, state=state,
                                                                        limit=1000))["items"]]
        done = sorted(t["id"] for t in tasks if t["state"] == "done")
        if done != [f"r-{i:02d}" for i in range(len(REPORTS))] or len(tasks) != len(REPORTS):
            problems.append(f"tasks: {len(done)} done of {len(REPORTS)}; others: "
                            f"{[(t['id'], t['state']) for t in tasks if t['state'] != 'done']}")
        results = [m async for m in c.list(fleet.results, consistency="linearizable")]
        if sorted(m["id"] for m in results) != done:
            problems.append(f"triage memories: {len(results)} for {len(done)} tasks done")
        for m in results:
            task = await c.get_task(fleet.queue, m["id"])
            if task["result"] != m["content"]["triage"]:
                problems.append(f"{m['id']}: the completed result and the memory differ")
    log("check", f"{len(done)}/{len(REPORTS)} tasks done exactly once, {len(results)} triage memories"
        + ("" if problems else ": nothing lost"))
    return problems


async def restored(fleet: Fleet, url: str) -> bool:
    """The restarted node's own replica (eventual reads there) holds every triage."""
    async with AsyncClient([url], route_direct=False) as c:  # that node only
        deadline = time.monotonic() + RESTORE_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                held = [m async for m in c.list(fleet.results, consistency="eventual")]
                if len(held) == len(REPORTS):
                    return True
            except ClientError:
                pass
            await asyncio.sleep(0.2)
    return False


async def run(args: argparse.Namespace) -> int:
    state = json.loads((Path(args.data_dir) / "cluster.json").read_text()) if args.data_dir else None
    urls = [u.strip() for u in args.url.split(",")] if args.url else [n["url"] for n in state["nodes"].values()]
    fleet = Fleet(args, urls)
    log("fleet", f"{args.workers} workers, {len(REPORTS)} reports, namespace {fleet.ns}, nodes {', '.join(urls)}")
    watching = asyncio.ensure_future(fleet.watcher())
    await asyncio.wait_for(fleet.watching.wait(), timeout=args.timeout_s)
    await fleet.planner()
    agents = [fleet.worker(n) for n in range(1, args.workers + 1)] + [fleet.watch_progress()]
    if state is not None and not args.no_kill:
        agents.append(fleet.chaos(state))
    searching = asyncio.ensure_future(fleet.searcher())
    await asyncio.wait_for(asyncio.gather(*agents), timeout=args.timeout_s)
    problems = await check(fleet) + await searching + await asyncio.wait_for(watching, timeout=args.timeout_s)
    if fleet.killed is not None and state is not None:
        node = state["nodes"][fleet.killed]
        subprocess.run([sys.executable, "-m", "cli.main", "cluster", "restart", fleet.killed, "--data-dir",
                        str(Path(args.data_dir).resolve())], cwd=REPO, check=True, stdout=subprocess.DEVNULL)
        log("chaos", f"restarted {fleet.killed}")
        if await restored(fleet, node["url"]):
            log("check", f"{fleet.killed}'s own replica caught up: it holds all {len(REPORTS)} triage memories")
        else:
            problems.append(f"{fleet.killed} did not catch up within {RESTORE_TIMEOUT_S:.0f}s")
    for problem in problems:
        log("check", f"PROBLEM: {problem}")
    return 1 if problems else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", help="a cluster started by `make run` / `raftmem cluster up` (its cluster.json: "
                                      "node URLs and pids): a node is killed midway and restarted at the end")
    p.add_argument("--url", help="node URLs, comma-separated (default: those of --data-dir's cluster)")
    p.add_argument("--no-kill", action="store_true", help="no node is killed")
    p.add_argument("--workers", type=int, default=3)
    p.add_argument("--namespace", default="fleet")
    p.add_argument("--timeout-s", type=float, default=180.0, help="give up after this long")
    p.add_argument("--llm", action="store_true", help="workers triage with a real model (OpenAI-compatible API; "
                                                      "the key in OPENAI_API_KEY)")
    p.add_argument("--llm-url", default="https://api.openai.com/v1")
    p.add_argument("--llm-model", default="gpt-4o-mini")
    args = p.parse_args()
    if not args.data_dir and not args.url:
        p.error("give --data-dir (a local cluster to kill a node of) or --url")
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
