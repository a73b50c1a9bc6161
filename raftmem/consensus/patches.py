"""Everything that changes pysyncobj 0.3.17 itself (pinned exactly): the version
check, the construction-time factories (our journal and poller replace pysyncobj's),
bare-pickle framing instead of zlib, and two TcpConnection methods with fewer
system calls. Imported first by the package, so the patches are in place before
any SyncObj is built."""

from __future__ import annotations

import errno
import socket
import threading
import zlib
from typing import Any

import pysyncobj
import pysyncobj.syncobj as _so
import pysyncobj.tcp_connection as _tcp_connection
from pysyncobj.monotonic import monotonic as monotonic_time
from pysyncobj.poller import POLL_EVENT_TYPE

PYSYNCOBJ_VERSION = "0.3.17"
if getattr(pysyncobj, "__version__", None) not in (None, PYSYNCOBJ_VERSION):
    raise ImportError(f"raftmem needs pysyncobj=={PYSYNCOBJ_VERSION}, found {pysyncobj.__version__}")
if _so.VERSION != PYSYNCOBJ_VERSION:
    raise ImportError(f"raftmem needs pysyncobj=={PYSYNCOBJ_VERSION}, found {_so.VERSION}")


# -- construction-time hooks into pysyncobj ------------------------------------
building = threading.local()
_orig_create_journal = _so.createJournal
_orig_create_poller = _so.createPoller


def _create_journal(journal_file: str | None = None) -> Any:
    journal = getattr(building, "journal", None)
    return journal if journal is not None else _orig_create_journal(journal_file)


def _create_poller(poller_type: str) -> Any:
    poller = getattr(building, "poller", None)
    return poller if poller is not None else _orig_create_poller(poller_type)


_so.createJournal = _create_journal
_so.createPoller = _create_poller


class _NoZlib:
    """pysyncobj deflates every message at level 3; ours are small and on a LAN,
    and even a level-0 zlib frame costs a copy and a checksum each way. Messages
    are sent as the bare pickle. A received frame is inflated only if it is a
    zlib stream (first byte 0x78); a pickle starts with its PROTO opcode 0x80, so
    the two never mix up."""

    @staticmethod
    def compress(data: bytes, _level: int = 0) -> bytes:
        return data

    @staticmethod
    def decompress(data: bytes) -> bytes:
        return zlib.decompress(data) if data[:1] == b"\x78" else data


_tcp_connection.zlib = _NoZlib


# pysyncobj's TcpConnection makes four system calls per readable event where one
# does: getsockopt(SO_ERROR) on every event, then recv, getsockopt, and a recv
# that fails with EAGAIN. Syscalls are dear in a VM, and every Raft message pays
# them. The two methods below are pysyncobj 0.3.17's, minus those calls: SO_ERROR
# is read only while a connect is in progress (a connected socket reports errors
# through recv/send and EPOLLERR), and one recv is made per event unless it
# filled the buffer (the level-triggered poller reports what is left).
_TcpConnection = _tcp_connection.TcpConnection
_CONN = _tcp_connection.CONNECTION_STATE


def _process_read(self: Any) -> bool:
    try:
        incoming = self._TcpConnection__socket.recv(self._TcpConnection__recvBufferSize)
    except OSError as e:
        if e.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
            self.disconnect()
        return False
    if not incoming:
        self.disconnect()
        return False
    self._TcpConnection__readBuffer += incoming
    return bool(len(incoming) == self._TcpConnection__recvBufferSize)


def _process_connection(self: Any, descr: int, event_type: int) -> None:
    poller = self._TcpConnection__poller
    if descr != self._TcpConnection__fileno:
        poller.unsubscribe(descr)
        return
    if event_type & POLL_EVENT_TYPE.ERROR:
        self.disconnect()
        return
    self._TcpConnection__processConnectionTimeout()
    if self.state == _CONN.DISCONNECTED:
        return
    if self._TcpConnection__state == _CONN.CONNECTING and event_type & (POLL_EVENT_TYPE.READ | POLL_EVENT_TYPE.WRITE):
        if self._TcpConnection__socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            self.disconnect()
            return
        on_connected = self._TcpConnection__onConnected
        if on_connected is not None:
            on_connected()
        if self._TcpConnection__state == _CONN.DISCONNECTED:
            return
        self._TcpConnection__state = _CONN.CONNECTED
        self._TcpConnection__lastReadTime = monotonic_time()
        return
    if event_type & POLL_EVENT_TYPE.WRITE:
        self._TcpConnection__trySendBuffer()
        if self._TcpConnection__state == _CONN.DISCONNECTED:
            return
        event = POLL_EVENT_TYPE.READ | POLL_EVENT_TYPE.ERROR
        if self._TcpConnection__writeBuffer:
            event |= POLL_EVENT_TYPE.WRITE
        poller.subscribe(descr, self._TcpConnection__processConnection, event)
    if event_type & POLL_EVENT_TYPE.READ:
        self._TcpConnection__tryReadBuffer()
        if self._TcpConnection__state == _CONN.DISCONNECTED:
            return
        while True:
            message = self._TcpConnection__processParseMessage()
            if message is None:
                break
            # Re-read each time: the first message of an incoming connection
            # names its node, and the transport swaps the callback then.
            on_message = self._TcpConnection__onMessageReceived
            if on_message is not None:
                on_message(message)
            if self._TcpConnection__state == _CONN.DISCONNECTED:
                return


_TcpConnection._TcpConnection__processRead = _process_read
_TcpConnection._TcpConnection__processConnection = _process_connection
