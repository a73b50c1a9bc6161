"""The Raft transport: holds messages back until the journal is durable, lets the
hooks stamp, read and swallow messages, and refuses pysyncobj's admin commands."""

from __future__ import annotations

import collections
import logging
from typing import TYPE_CHECKING, Any

from pysyncobj.transport import TCPTransport

from .patches import building

if TYPE_CHECKING:
    from .hooks import Hooks

log = logging.getLogger(__name__)


class Transport(TCPTransport):  # type: ignore[misc]
    """Holds back every message until the owning ticker has fsynced the journals
    (see module docstring); lets `Hooks` stamp, read and swallow messages;
    refuses pysyncobj utility commands."""

    def __init__(self, syncObj: Any, selfNode: Any, otherNodes: Any) -> None:  # noqa: N803
        # (node, message, journal sequence when sent): a message leaves only once
        # the journal is durable up to that sequence, in order.
        self.outbox: collections.deque[tuple[Any, Any, int]] = collections.deque()
        self.defer = bool(getattr(building, "defer_sends", False))
        self.hooks: Hooks = building.hooks
        super().__init__(syncObj, selfNode, otherNodes)

    def _onMessageReceived(self, node: Any, message: Any) -> None:  # noqa: N802
        snapshots = self.hooks.snapshots
        assert snapshots is not None, "the group wires its snapshots before any message"
        if isinstance(message, dict) and snapshots.intercept(node, message, self._deliver):
            return
        self._deliver(node, message)

    def _deliver(self, node: Any, message: Any) -> None:
        if isinstance(message, dict) and self.hooks.on_receive(node, message):
            return
        if isinstance(message, dict) and message.get("type") == "next_node_idx":
            # pysyncobj moves a follower's nextIndex back to the acknowledged point
            # on every ack, so the leader re-sends entries already in flight and the
            # follower truncates and re-appends them (see Hooks.trim_append).
            # Keep nextIndex where it was unless the follower asked for a reset.
            next_index = self._syncObj._SyncObj__raftNextIndex
            before = next_index.get(node)
            super()._onMessageReceived(node, message)
            after = next_index.get(node)
            if (
                before is not None and after is not None and after < before
                and message.get("success") and not message.get("reset")
            ):
                next_index[node] = before
            return
        super()._onMessageReceived(node, message)

    def send(self, node: Any, message: Any) -> bool:
        if isinstance(message, dict):
            self.hooks.on_send(node, message)
            snapshots = self.hooks.snapshots
            if snapshots is not None and snapshots.tear_next_transfer and snapshots.drop_outgoing(node, message):
                return True
        if self.defer:
            # A leader's append-entries need not wait for its own fsync (Raft
            # thesis 10.2.1): the leader counts itself towards a commit only up to
            # its durable index (`DurableMatch`). They still leave in order,
            # behind anything held before them.
            durable_needed = 0 if message.get("type") == "append_entries" else self.hooks.journal.appended_seq
            self.outbox.append((node, message, durable_needed))
            return True
        return bool(super().send(node, message))

    def _onNodeDisconnected(self, node: Any) -> None:  # noqa: N802
        # Messages still in the connection's buffer are gone with it: a snapshot
        # transfer through it must start over, on both ends.
        snapshots = self.hooks.snapshots
        if snapshots is not None:
            snapshots.disconnected(node)
        super()._onNodeDisconnected(node)

    def flush_outbox(self) -> None:
        outbox = self.outbox
        durable = self.hooks.journal.synced_seq
        while outbox and outbox[0][2] <= durable:
            node, message, _ = outbox.popleft()
            super().send(node, message)

    def _onUtilityMessage(self, conn: Any, message: Any) -> bool:  # noqa: N802
        log.warning("refused a pysyncobj admin command on a Raft port: %r", message[:1])
        conn.disconnect()
        return True


