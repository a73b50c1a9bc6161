"""A deployment gate on raftmem: a memory whose writes are fenced by a lock and
whose reads are linearizable, so that agents never deploy past a closed gate
and a deployer that stalled can never reopen one someone else has closed.

    python examples/deployment_gate.py --url http://127.0.0.1:8781,http://127.0.0.1:8782

The pattern:
- The gate is the memory `<namespace>/<gate>`; the lock guarding it has the
  same name (a lock fences memories on its own shard, and the memory named
  like it always is). It is tagged `lock`, which the default config reads at
  `linearizable` (ReadIndex: no clock assumption).
- Whoever opens or closes the gate holds the lock and writes with its fence
  (`if_fence=lease`). The store checks the fence in the same step as the
  write: once the lock has moved on (released, expired, taken over), the old
  holder's write is refused (`Fenced`), however late it arrives.
- Agents read the gate before each deployment and deploy only if it is open.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid

from raftmem.client import AsyncClient, Fenced, NotFound

TAGS = ["lock", "deployment"]  # `lock` maps to linearizable reads in the default config


async def gate_is_open(client: AsyncClient, ns: str, gate: str) -> bool:
    try:
        memory = await client.get(ns, gate)  # the tag policy picks linearizable
    except NotFound:
        return False
    return bool(memory["content"].get("open"))


async def main(urls: list[str], ns: str, gate: str) -> int:
    async with AsyncClient(urls) as client:
        # 1. A release manager opens the gate, holding the lock while it does.
        async with client.lock(ns, gate, ttl_ms=5000, holder="release-manager") as lease:
            await client.put(ns, gate, {"open": True, "release": "v42", "by": lease.holder}, tags=TAGS,
                             if_fence=lease)
            print(f"opened {ns}/{gate} for v42 with fence {lease.fence}")
        # 2. Agents check it before deploying.
        assert await gate_is_open(client, ns, gate), "agents must see the gate open"
        print("agents: gate open, deploying v42")

        # 3. A deployer takes the lock to close the gate, then stalls past its lease.
        stale = await client.acquire_lock(ns, gate, ttl_ms=300, holder="stalled-deployer")
        print(f"stalled-deployer holds the lock with fence {stale.fence} ... and pauses")
        await asyncio.sleep(0.5)
        # 4. Meanwhile on-call closes the gate (the stale lease has run out).
        async with client.lock(ns, gate, ttl_ms=5000, holder="on-call", wait_ms=5000) as lease:
            await client.put(ns, gate, {"open": False, "reason": "incident", "by": lease.holder}, tags=TAGS,
                             if_fence=lease)
            print(f"on-call closed the gate with fence {lease.fence}")
        # 5. The stalled deployer wakes up and tries to open the gate again: refused.
        try:
            await client.put(ns, gate, {"open": True, "release": "v43", "by": stale.holder}, tags=TAGS,
                             if_fence=stale)
        except Fenced as e:
            print(f"stalled-deployer's write refused: {e}")
        else:
            print("BUG: a stale fence reopened the gate", file=sys.stderr)
            return 1
        # 6. Agents see the gate closed, and do not deploy.
        assert not await gate_is_open(client, ns, gate), "the gate must still be closed"
        print("agents: gate closed, not deploying")
        return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8781", help="node URLs, comma-separated")
    parser.add_argument("--namespace", default="deploy")
    parser.add_argument("--gate", default=f"prod-gate-{int(time.time())}-{uuid.uuid4().hex[:4]}")
    args = parser.parse_args()
    sys.exit(asyncio.run(main([u for u in args.url.split(",") if u], args.namespace, args.gate)))
