"""`raftmem put/get/delete/list` (filled in with the client)."""

from __future__ import annotations

from typing import Any


def add_parsers(sub: Any) -> None:
    return None
