"""One epoll set for every Raft group of the process, watched by the asyncio loop."""

from __future__ import annotations

import contextlib
import select
from collections.abc import Callable

from pysyncobj.poller import POLL_EVENT_TYPE


class EpollPoller:
    """The process's Raft sockets in one epoll set of their own. Its descriptor is
    watched by the asyncio loop (`Ticker.start`), so Raft I/O runs on the event
    loop thread between HTTP callbacks, yet the loop's own selector never holds a
    pysyncobj socket (a socket closed without unsubscribing cannot clash with an
    aiohttp connection that reuses its number)."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._callbacks: dict[int, Callable[[int, int], None]] = {}

    def fileno(self) -> int:
        return self._epoll.fileno()

    def subscribe(self, descr: int, callback: Callable[[int, int], None], event_mask: int) -> None:
        mask = select.EPOLLERR | select.EPOLLHUP
        if event_mask & POLL_EVENT_TYPE.READ:
            mask |= select.EPOLLIN
        if event_mask & POLL_EVENT_TYPE.WRITE:
            mask |= select.EPOLLOUT
        if descr in self._callbacks:
            try:
                self._epoll.modify(descr, mask)
            except OSError:  # closed and reused: register the new one
                self._epoll.register(descr, mask)
        else:
            try:
                self._epoll.register(descr, mask)
            except FileExistsError:
                self._epoll.modify(descr, mask)
        self._callbacks[descr] = callback

    def unsubscribe(self, descr: int) -> None:
        if self._callbacks.pop(descr, None) is not None:
            with contextlib.suppress(OSError):  # already closed: epoll dropped it
                self._epoll.unregister(descr)

    def poll(self, timeout: float) -> None:
        for descr, event in self._epoll.poll(timeout, 256):
            callback = self._callbacks.get(descr)
            if callback is None:
                continue
            mask = 0
            if event & select.EPOLLIN:
                mask |= POLL_EVENT_TYPE.READ
            if event & select.EPOLLOUT:
                mask |= POLL_EVENT_TYPE.WRITE
            if event & (select.EPOLLERR | select.EPOLLHUP):
                mask |= POLL_EVENT_TYPE.ERROR
            callback(descr, mask)

    def close(self) -> None:
        self._epoll.close()


class GroupPoller:
    """One group's view of the shared poller: any socket event of the group marks
    it active, so the ticker ticks only groups with something to do (plus every
    group every few tens of milliseconds for timers). pysyncobj polls at the end
    of every tick; that is a no-op here: the event loop reports ready sockets."""

    def __init__(self, shared: EpollPoller) -> None:
        self._shared = shared
        self.active = True

    def subscribe(self, descr: int, callback: Callable[[int, int], None], event_mask: int) -> None:
        def marked(fd: int, event: int) -> None:
            self.active = True
            callback(fd, event)

        self._shared.subscribe(descr, marked, event_mask)

    def unsubscribe(self, descr: int) -> None:
        self._shared.unsubscribe(descr)

    def poll(self, timeout: float) -> None:
        pass

