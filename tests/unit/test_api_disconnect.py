"""A waiting request whose client disconnects (raftmem.api._while_connected):
cancelled while it waits; and, when the client is found gone only once the
acquisition or claim committed (before its answer could be written), what it
won is given back rather than held until its lease runs out (review finding 8)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from raftmem.api import ClientGone, _while_connected
from raftmem.service import Reply


class Transport:
    def __init__(self) -> None:
        self.closing = False

    def is_closing(self) -> bool:
        return self.closing


class Request:
    method, path = "POST", "/v1/locks/ns/L"

    def __init__(self) -> None:
        self.transport = Transport()


async def test_a_client_gone_when_its_acquisition_commits_gets_it_given_back() -> None:
    request = Request()
    given_back: list[Reply] = []

    async def acquisition() -> Reply:
        request.transport.closing = True  # the client went away while it was in the log
        return Reply(201, {"fence": 7})

    async def give_back(reply: Reply) -> None:
        given_back.append(reply)

    with pytest.raises(ClientGone):
        await _while_connected(request, acquisition(), give_back)  # type: ignore[arg-type]
    assert [r.json() for r in given_back] == [{"fence": 7}]


@pytest.mark.parametrize("status", [409, 204])
async def test_nothing_is_given_back_for_a_refusal_or_for_a_client_still_there(status: int) -> None:
    request = Request()
    given_back: list[Any] = []

    async def refused() -> Reply:
        request.transport.closing = True
        return Reply(status, {})

    async def give_back(reply: Reply) -> None:
        given_back.append(reply)

    assert (await _while_connected(request, refused(), give_back)).status == status  # type: ignore[arg-type]
    connected = Request()

    async def acquired() -> Reply:
        await asyncio.sleep(0)
        return Reply(201, {"fence": 8})

    assert (await _while_connected(connected, acquired(), give_back)).status == 201  # type: ignore[arg-type]
    assert given_back == []


async def test_a_failed_give_back_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    request = Request()

    async def acquisition() -> Reply:
        request.transport.closing = True
        return Reply(201, {"fence": 7})

    async def give_back(_reply: Reply) -> None:
        raise RuntimeError("no leader")

    with pytest.raises(ClientGone):
        await _while_connected(request, acquisition(), give_back)  # type: ignore[arg-type]
    assert "no leader" in caplog.text
