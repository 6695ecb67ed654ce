"""The blocking server's per-address line kept a connection whose wait had passed the
handshake timeout until its turn came -- which, behind a handshake whose accept hook
takes its time, is much later -- and every newcomer from that address meanwhile found
the line full and was closed. A newcomer that finds the line full now first closes
those that waited too long (counted in ``busy_refused``) and takes a place. Real
servers and sockets on 127.0.0.1."""

from __future__ import annotations

import time

from tests.polling import wait_for
from tests.test_handshake_slots import closed_by_peer, idle
from tests.test_s33_goneclients_review import held_address


def test_a_connection_that_waited_too_long_leaves_its_place_to_a_newcomer() -> None:
    # (the first client's handshake holds the address's slot in its accept hook; the
    # newcomer's own deadline, 1.5 s, leaves room to look at it on a loaded machine)
    with held_address(1, handshake_timeout=1.5) as (server, slots):
        stale = idle(server.address)  # waits in line, then past its deadline
        assert wait_for(lambda: slots.waiting("127.0.0.1") == 1)
        with stale:
            deadline = slots._waiting["127.0.0.1"][0][0]
            assert wait_for(lambda: time.monotonic() > deadline + 0.05)
            newcomer = idle(server.address)
            with newcomer:
                # the stale one is closed and counted; the newcomer waits in its place
                assert closed_by_peer(stale, within=3.0)
                assert not closed_by_peer(newcomer, within=0.3)
                assert server.busy_refused == 1
                assert slots.waiting("127.0.0.1") == 1
