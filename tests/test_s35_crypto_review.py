"""Review of the handshake's server-side bounds: the per-address handshake cap, its
waiting line and the replay guard's capacity take ints only.

Each was checked with a bare comparison (``cap < 1``, ``max_waiting < 0``,
``capacity < 1``), which a NaN passes, as it then passed every "at the cap" / "line
full" / "more than the capacity" comparison after it: a server given
``max_handshakes_per_address=float("nan")`` ran with no per-address cap at all (one
address could hold every ``max_handshakes`` slot, the stall the cap exists to stop),
``max_waiting_per_address=float("nan")`` with an unbounded line, and a
``ReplayGuard(float("nan"))`` never forgot a key (its pools grew without bound); a
float cap such as 1.5 quietly let two handshakes in. ``max_handshakes`` (ServerSlots)
already refused anything but an int. Each test here failed on the old code.
"""

from __future__ import annotations

import asyncio
import math

import pytest

import dtp.aio
import dtp.socket
from dtp.handshake_slots import AddressSlots, ServerSlots
from dtp.replay_guard import ReplayGuard
from tests.test_handshake_slots import SERVER, aio_echo

NAN = math.nan


@pytest.mark.parametrize("cap", [NAN, 1.5, True, "8"])
def test_a_per_address_cap_that_is_no_int_is_refused(cap: object) -> None:
    with pytest.raises(ValueError, match="per-address handshake cap"):
        AddressSlots(cap)  # type: ignore[arg-type]


def test_a_nan_cap_no_longer_lets_one_address_take_every_slot() -> None:
    # what the old code did with it: every try_take succeeded, however many
    try:
        slots: AddressSlots[str] = AddressSlots(NAN)  # type: ignore[arg-type]
    except ValueError:
        return
    taken = sum(slots.try_take("192.0.2.1") for _ in range(100))
    pytest.fail(f"a NaN cap was accepted, and let one address take {taken} of 100")


@pytest.mark.parametrize("line", [NAN, 2.5, "64"])
def test_a_waiting_line_that_is_no_int_is_refused(line: object) -> None:
    with pytest.raises(ValueError, match="waiting line"):
        AddressSlots(1, line)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="waiting line"):
        ServerSlots(1, line)  # type: ignore[arg-type]


def test_int_likes_still_bound_the_line() -> None:
    # (the asyncio server's line is its listen backlog, any int-like listen() takes)
    slots: AddressSlots[int] = AddressSlots(1, True)
    assert slots.max_waiting == 1 and type(slots.max_waiting) is int


@pytest.mark.parametrize(
    "keywords",
    [
        {"max_handshakes_per_address": NAN},
        {"max_handshakes_per_address": 2.5},
        {"max_waiting_per_address": NAN},
    ],
)
def test_the_blocking_server_refuses_them(keywords: dict[str, float]) -> None:
    # (no address: nothing listens, so the old code left no socket behind)
    with pytest.raises(ValueError):
        server = dtp.socket.DTPServer(None, SERVER, **keywords)  # type: ignore[arg-type]
        server.close()


@pytest.mark.parametrize(
    "keywords",
    [{"max_handshakes_per_address": NAN}, {"max_waiting_per_address": NAN}],
)
def test_the_asyncio_server_refuses_them(keywords: dict[str, float]) -> None:
    async def main() -> None:
        with pytest.raises(ValueError):
            server = await dtp.aio.start_server(
                aio_echo,
                "127.0.0.1",
                0,
                identity=SERVER,
                **keywords,  # type: ignore[arg-type]
            )
            server.close()
            await server.wait_closed()

    asyncio.run(main())


@pytest.mark.parametrize("capacity", [NAN, 2.5, True])
def test_a_replay_guard_capacity_that_is_no_int_is_refused(capacity: object) -> None:
    with pytest.raises(ValueError, match="replay guard"):
        ReplayGuard(capacity)  # type: ignore[arg-type]
