"""Watch: GET /v1/watch streams the committed changes of every shard, filtered,
as Server-Sent Events or NDJSON, resumable from tokens (raftmem/DESIGN.md,
"Watch, history, lifecycle").

Where the changes come from, per shard:
- a replica on this node (`_local`): its change log (StateMachine.changes_after,
  read through the Shard port) up to its applied index, then the node's feed
  through the fan-out (raftmem.service.watchfanout: one subscription and one
  task for every stream). It catches up from the log on its own, then joins
  the fan-out and reads the log once more, then follows: whatever was applied
  between is in the log, whatever comes after reaches it through the fan-out,
  and a change at or below the position already given is skipped. A snapshot
  install (`RESET`) is caught up from the installed log the same way.
- another node (`_remote`), for a shard this node holds no replica of (after a
  membership change), or whose leader is required and elsewhere: long-polls of
  GET /v1/internal/shards/{shard}/changes at a node that holds one.

Both hold only applied entries, and a replica applies only committed ones: a
watch never sends an entry a new leader could overwrite, from whichever
replica serves it.

Per shard the stream keeps a position: every matching change at or below it
has been sent. An entry's matching changes go out in one write, the last of
them marked `"last": true`, and the position moves only past whole entries, so
a token in a progress, overflow or compacted event never splits an entry. A
client resumes from the token of the last event marked `last` or the last
progress, whichever is later, and sees exactly what follows: a connection cut
in the middle of an entry sends that entry again, whole.

Bounds: `watch.watchers_max` streams per node (past it 429); per stream,
`watch.buffer_events_max` entries held for its driver when they cannot go
straight to its outgoing queue, and that queue of as many items (entries
queued together: a live batch's, or a log page's) or `watch.buffer_bytes_max`
bytes; a stream that falls that far behind its writes is cut off with an
`overflow` event carrying its tokens. The encoded events, and an entry's
events framed for a filter, are shared between streams (`EventCache`), not
copied.

Under load the fan-out takes the feed's changes at most every
`watch.batch_ms`, so many entries go out in one item and one write per stream
(raftmem/DESIGN.md, "Batches of `watch.batch_ms` under load" and "One fan-out
per node").
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from .. import validation as v
from ..config import WATCH_PROGRESS_MS_MAX, WATCH_PROGRESS_MS_MIN, Config
from ..errors import Gone, InvalidRequest, NoLeader, Overloaded, Unavailable
from ..events import Change, ChangeFeed, ChangeKind, Closed, Compacted, Overflowed
from ..shard import Shard
from .calls import Call, Forwarder, Reply
from .leaders import Router
from .watchfanout import FanOut
from .watchstream import (
    ALIVE_CHECK_S,
    FILTER_PARAMS,
    LAST_IN_ENTRY,
    NDJSON,
    EventCache,
    Framed,
    Framing,
    WatchFilter,
    WatchRequest,
    WatchStream,
    entries,
    event_body,
    format_tokens,
    frame,
    parse_filter,
    read_page,
)

WATCH_PARAMS = frozenset({*FILTER_PARAMS, "after", "progress_ms", "require_leader"})
# POST /v1/watch: many watches on one connection.
MANY_FIELDS = frozenset({"watches", "progress_ms", "require_leader"})
ONE_OF_MANY_FIELDS = frozenset({"id", *FILTER_PARAMS, "after"})
WATCH_ID_CHARS_MAX = 128
REMOTE_WAIT_MS_MAX = 30_000
# Negative control only (debug.unsafe_watch_drop): one event in this many is not sent.
UNSAFE_DROP_EVERY = 100


@dataclass
class WatchStats:
    opened: int = 0
    open_now: int = 0
    events: int = 0
    writes: int = 0  # of events to streams' sockets (several entries' events in one when they come fast)
    ended: dict[str, int] = field(default_factory=dict)


class Watches:
    """The node's watch streams, and the internal fetch other nodes' streams use."""

    def __init__(self, config: Config, router: Router, feed: ChangeFeed, forwarder: Forwarder) -> None:
        self.config = config
        self.router = router
        self.feed = feed
        self.forwarder = forwarder
        self.limits = config.watch
        self.cache: EventCache[tuple[int, int, int], bytes] = EventCache(len)
        self.entry_cache: EventCache[tuple[int, int, WatchFilter, Framing], Framed] = EventCache(_framed_bytes)
        self.stats = WatchStats()
        self.fanout = FanOut(self)
        self.stopping = asyncio.Event()
        self.unsafe_drop = bool(config.debug.get("unsafe_watch_drop"))
        self._sent = 0  # events, for the negative control's drop

    # -- requests -------------------------------------------------------------------------
    def parse(self, call: Call) -> WatchRequest:
        q = call.query
        unknown = sorted(set(q) - WATCH_PARAMS)
        if unknown:
            raise InvalidRequest(f"unknown watch parameter(s): {', '.join(unknown)} (allowed: "
                                 f"{', '.join(sorted(WATCH_PARAMS))})", fields=unknown)
        return WatchRequest(
            filter=parse_filter(q, self.config.limits),
            after=v.tokens(q.get("after"), self.config.shards),
            progress_ms=v.int_param("progress_ms", q.get("progress_ms"), self.limits.progress_ms,
                                    WATCH_PROGRESS_MS_MIN, WATCH_PROGRESS_MS_MAX),
            require_leader=v.flag("require_leader", q.get("require_leader")),
            framing=Framing.NDJSON if NDJSON in (call.header("Accept") or "") else Framing.SSE,
        )

    def serving(self, shard: int, require_leader: bool) -> Shard | None:
        """This node's replica of `shard` when it may serve a watch of it."""
        replica = self.router.local(shard)
        if replica is None or (require_leader and not replica.role().leading):
            return None
        return replica

    def parse_many(self, call: Call) -> tuple[list[str], list[WatchRequest]]:
        """POST /v1/watch: `{"watches": [{"id", filters..., "after"}, ...],
        "progress_ms", "require_leader"}`; each watch is a stream of its own
        (counted against `watch.watchers_max`), sharing the connection."""
        if call.query:
            raise InvalidRequest(f"POST /v1/watch takes no query parameters (got {', '.join(sorted(call.query))}): "
                                 "everything goes in the body", fields=sorted(call.query))
        body = v.json_object(call.body, self.config.limits, MANY_FIELDS)
        watches = body.get("watches")
        if not isinstance(watches, list) or not watches:
            raise InvalidRequest("watches must be a non-empty list of watches", field="watches")
        if len(watches) > self.limits.watchers_max:
            raise InvalidRequest(f"watches: at most {self.limits.watchers_max} (watch.watchers_max), "
                                 f"got {len(watches)}", field="watches")
        progress_ms = v.json_int_field(body, "progress_ms", self.limits.progress_ms, WATCH_PROGRESS_MS_MIN,
                                       WATCH_PROGRESS_MS_MAX)
        require_leader = body.get("require_leader", False)
        if not isinstance(require_leader, bool):
            raise InvalidRequest("require_leader must be true or false", field="require_leader")
        ids: list[str] = []
        requests: list[WatchRequest] = []
        for n, one in enumerate(watches):
            what = f"watches[{n}]"
            one = v.known_fields(one, ONE_OF_MANY_FIELDS, what)
            watch_id = v.label(f"{what}.id", one.get("id"), WATCH_ID_CHARS_MAX)
            if watch_id in ids:
                raise InvalidRequest(f"{what}.id: {watch_id!r} is given twice", field="id")
            for key, value in one.items():
                if key != "id" and not isinstance(value, str):
                    raise InvalidRequest(f"{what}.{key} must be a string", field=key)
            ids.append(watch_id)
            requests.append(WatchRequest(
                filter=parse_filter(one, self.config.limits), after=v.tokens(one.get("after"), self.config.shards),
                progress_ms=progress_ms, require_leader=require_leader, framing=Framing.ITEMS))
        return ids, requests

    async def open(self, call: Call) -> WatchStream:
        """Check the request and where every shard starts (400, 410, 429, 503
        before anything is streamed)."""
        return (await self._open([self.parse(call)], call.hops))[0]

    async def open_many(self, call: Call) -> list[tuple[str, WatchStream]]:
        """POST /v1/watch: every watch checked and started as `open` does; a
        watch whose tokens are older than the change log keeps fails the whole
        request (410 naming it), before anything is streamed."""
        ids, requests = self.parse_many(call)
        return list(zip(ids, await self._open(requests, call.hops, ids), strict=True))

    async def _open(self, requests: list[WatchRequest], hops: int, ids: list[str] | None = None) -> list[WatchStream]:
        if self.limits.retention_entries <= 0:
            raise Unavailable("watch is off on this cluster (watch.retention_entries is 0)")
        if self.stats.open_now + len(requests) > self.limits.watchers_max:
            raise Overloaded(f"this node serves {self.stats.open_now} of at most {self.limits.watchers_max} watches "
                             f"(watch.watchers_max): {len(requests)} more do not fit")
        shards = self.config.shards
        streams = [WatchStream(self, request, hops) for request in requests]
        for stream in streams:  # places taken now, before any await: requests at once cannot pass the bound together
            stream.holds_place = True
            self.stats.open_now += 1
        try:
            return self._started(streams, await asyncio.gather(
                *(stream.start(s) for stream in streams for s in range(shards)), return_exceptions=True), ids)
        except BaseException:
            for stream in streams:
                stream.release()
            raise

    def _started(self, streams: list[WatchStream], starts: list[Any], ids: list[str] | None) -> list[WatchStream]:
        """The streams, unless a start failed (the first failure, a 410 for a
        token older than the change log keeps)."""
        shards = self.config.shards
        for n, stream in enumerate(streams):
            mine = starts[n * shards:(n + 1) * shards]
            gone = {s: e.oldest for s, e in enumerate(mine) if isinstance(e, Compacted)}
            if gone:
                named = {"watch": ids[n]} if ids is not None else {}
                raise Gone(f"the change log no longer holds what follows {format_tokens(stream.request.after)} "
                           f"on shard(s) {', '.join(map(str, sorted(gone)))}; resume from oldest",
                           oldest=format_tokens(gone), **named)
        for error in starts:
            if isinstance(error, BaseException):
                raise error
        return streams

    def encode(self, change: Change, seq: int) -> bytes:
        return self.cache.get((change.shard, change.index, seq), lambda: orjson.dumps(event_body(change, seq)))

    def encode_body(self, shard: int, index: int, body: Mapping[str, Any]) -> bytes:
        """An event fetched from another node."""
        return self.cache.get((shard, index, int(body["seq"])), lambda: orjson.dumps(body))

    def entry_frames(self, shard: int, index: int, group: list[tuple[int, Change]], flt: WatchFilter,
                     framing: Framing) -> Framed:
        """A whole entry's changes that `flt` matches, framed (NDJSON or SSE):
        computed once for every stream with the same filter and framing (a
        hundred watchers of one namespace share one)."""

        def make() -> Framed:
            encoded = [self.encode(change, seq) for seq, change in group
                       if change.kind is not ChangeKind.RESET and flt.matches(change.record)]
            return self.frame_entry(encoded, framing)

        if self.unsafe_drop:
            return make()  # the control drops events per stream
        return self.entry_cache.get((shard, index, flt, framing), make)

    def frame_entry(self, encoded: list[bytes], framing: Framing) -> Framed:
        """An entry's events, framed, the last one marked: a client that has it
        may resume from its token (orjson's object ends in "}"; the event's own
        encoding is shared by every filter, the mark depends on the filter)."""
        kept = [data for data in encoded if not self.drop()]
        if kept:
            kept[-1] = kept[-1][:-1] + LAST_IN_ENTRY
        return b"".join(frame(data, framing) for data in kept), len(kept)

    def drop(self) -> bool:
        """Negative control: True for the event to leave out."""
        if not self.unsafe_drop:
            return False
        self._sent += 1
        return self._sent % UNSAFE_DROP_EVERY == 0

    def close(self) -> None:
        self.stopping.set()

    def status(self) -> dict[str, Any]:
        return {"open": self.stats.open_now, "opened": self.stats.opened, "events": self.stats.events,
                "writes": self.stats.writes, "ended": dict(self.stats.ended), "watchers_max": self.limits.watchers_max,
                "fanout": {"following": len(self.fanout.members), "batches": self.fanout.batches,
                           "resyncs": self.fanout.resyncs}}

    # -- the internal fetch: a shard's changes for another node's stream --------------------
    async def fetch(self, shard: int, call: Call) -> Reply:
        """GET /v1/internal/shards/{shard}/changes?after=&limit=&wait_ms=&...: the
        matching changes after `after`, whole entries, waiting up to `wait_ms`
        for one; `after=-1`: none, only where this replica is (`through`)."""
        if not 0 <= shard < self.config.shards:
            raise InvalidRequest(f"no shard {shard}")
        q = call.query
        require = q.get("require_leader") == "true"
        replica = self.serving(shard, require)
        if replica is None:
            if require:
                raise NoLeader(f"node {self.router.node_id} does not lead shard {shard}", shard=shard)
            raise Unavailable(f"node {self.router.node_id} holds no replica of shard {shard}", shard=shard)
        flt = parse_filter(q, self.config.limits)
        after = v.int_param("after", q.get("after"), -1, -1, (1 << 63) - 1)
        limit = v.int_param("limit", q.get("limit"), self.limits.page_events_max, 1, self.limits.page_events_max)
        wait_s = v.int_param("wait_ms", q.get("wait_ms"), 0, 0, REMOTE_WAIT_MS_MAX) / 1000
        if after < 0:
            return Reply(200, {"events": [], "through": replica.applied_index, "complete": True})
        deadline = time.monotonic() + wait_s
        while True:
            # Subscribe first, then read: a change applied in between wakes the wait.
            sub = self.feed.subscribe([shard], queue_max=1)
            try:
                page = await read_page(replica, after, limit)
                events = [event_body(c, seq) for _s, _i, group in entries(page.changes) for seq, c in group
                          if flt.matches(c.record)]
                remaining = deadline - time.monotonic()
                if events or not page.complete or remaining <= 0 or self.stopping.is_set():
                    return Reply(200, {"events": events, "through": page.through, "complete": page.complete})
                after = max(after, page.through)  # nothing matched up to here
                try:
                    await sub.get(min(remaining, ALIVE_CHECK_S))
                except (Overflowed, Closed):
                    pass
            finally:
                sub.close()


def _framed_bytes(framed: Framed) -> int:
    return len(framed[0])
