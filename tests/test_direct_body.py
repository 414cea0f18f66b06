"""`DirectBody`'s buffer handling (wire/direct_body.py) on its own: bytes arriving faster than the app takes them.

Live uploads through it are tested with the real clients (test_hub_durability.py, test_xet.py, every large
upload of the suite); what they cannot force is the order of events below, which depends on timing there.
"""

from __future__ import annotations

import asyncio
import os
from types import SimpleNamespace

import pytest
from starlette.requests import ClientDisconnect

from keephub.wire.direct_body import DirectBody


class Reading:
    """What `DirectBody` drives on keephub's protocol: reading paused or not, and the body detached."""

    def __init__(self) -> None:
        self.paused = False
        self.detached: list[DirectBody] = []
        self.flow = SimpleNamespace(pause_reading=lambda: setattr(self, "paused", True),
                                    resume_reading=lambda: setattr(self, "paused", False))
        self.transport = SimpleNamespace(is_closing=lambda: False)

    def detach(self, body: DirectBody) -> None:
        self.detached.append(body)


def test_bytes_arriving_while_no_buffer_is_free_are_held_with_reading_paused_and_come_out_in_order() -> None:
    data = os.urandom(45)
    reading = Reading()
    body = DirectBody(reading, 8)  # type: ignore[arg-type]

    async def take_all() -> list[bytes]:
        body.feed(data[:3])
        body.feed(data[3:20])  # fills both buffers; 4 bytes held
        assert reading.paused
        taken = []
        first = await body.next_piece()
        second = await body.next_piece()
        assert first is not None and second is not None
        taken += [bytes(first), bytes(second)]
        body.give_back(first)  # the held 4 bytes move in; reading resumes
        assert not reading.paused
        body.feed(data[20:45])  # 4 + 25: fills the freed buffer, then holds what the other cannot take
        body.end()
        body.give_back(second)
        while (piece := await body.next_piece()) is not None:
            taken.append(bytes(piece))
            body.give_back(piece)
        return taken

    pieces = asyncio.run(take_all())
    assert b"".join(pieces) == data
    assert [len(piece) for piece in pieces] == [8, 8, 8, 8, 8, 5]
    body.close()
    assert reading.detached == [body]  # the protocol drops the rest of the body, if any, and reads on


def test_a_disconnect_ends_the_wait_for_the_next_piece() -> None:
    reading = Reading()
    body = DirectBody(reading, 8)  # type: ignore[arg-type]

    async def wait_then_disconnect() -> None:
        asyncio.get_running_loop().call_later(0.01, body.disconnect)
        await body.next_piece()

    body.feed(b"abc")
    with pytest.raises(ClientDisconnect):
        asyncio.run(wait_then_disconnect())
