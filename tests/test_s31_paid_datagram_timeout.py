"""A paid handler's recv_datagram(timeout) waits at most ``timeout`` in all: the wait
for payment comes out of it. It waited out a pause and then the whole timeout again for
the datagram (here 2.5 s for a 1.5 s timeout on the old code)."""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dtp.errors import DTPTimeoutError
from dtp.metering import MeteringConfig
from dtp.paid import PaidSocket, ServicePolicy
from tests.paid_twins import hosted_ledgers
from tests.test_s30_paid_review import CLIENT, PORT, SERVER, SLA, WAIT, World, _spend_allowance

TIMEOUT = 1.5
PAYS_AFTER = 1.0  # the client takes in the server's receipt request only then
#: A client that signs a receipt only when the server asks for one
ON_REQUEST = MeteringConfig(every_bytes=0, every_ms=0)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with hosted_ledgers(tmp_path, SERVER, CLIENT, PORT, SLA) as ledgers:
        yield World(*ledgers, tmp_path)


@pytest.mark.parametrize("how", ["recv_datagram", "recv_datagrams"])
def test_the_pause_for_payment_comes_out_of_the_datagram_timeout(world: World, how: str) -> None:
    out: queue.Queue[Any] = queue.Queue()

    def handler(sock: PaidSocket) -> None:
        _spend_allowance(sock)
        began = time.monotonic()
        try:
            if how == "recv_datagram":
                sock.recv_datagram(TIMEOUT)
            else:
                sock.recv_datagrams(8, TIMEOUT)
            out.put(("returned", time.monotonic() - began, True))
        except DTPTimeoutError:
            paid = sock.gate.serving(*sock._paid.engine.conn.usage)
            out.put(("DTPTimeoutError", time.monotonic() - began, paid))

    policy = ServicePolicy(allowance=100, pause_timeout=WAIT, request_interval=1.0)
    with world.serve(handler, policy) as server:
        client = world.connect_as(CLIENT, PORT, 1_000_000, metering=ON_REQUEST, timeout=WAIT)
        with client:
            # nothing of the client's runs meanwhile (its timer thread would answer the
            # server's request within a fraction of a second): the pause lasts as long
            with client._engine.lock:
                time.sleep(PAYS_AFTER)
            client.settimeout(0.1)
            deadline = time.monotonic() + WAIT
            while out.empty() and time.monotonic() < deadline:
                try:
                    if not client.recv(65536):
                        break
                except DTPTimeoutError:
                    pass
            outcome, took, paid = out.get(timeout=WAIT)
        server.close()
    assert outcome == "DTPTimeoutError"
    assert paid  # the pause ended within the timeout: the wait for the datagram followed
    # (the old code took TIMEOUT + the pause: about 2.5 s)
    assert took < TIMEOUT + PAYS_AFTER / 2, took
