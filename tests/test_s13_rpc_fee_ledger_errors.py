"""A ledger error while a server checks response fees refuses or skips that one thing;
it no longer ends the stream, failing every call in flight on it."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from dtp.chain.local import LocalLedger
from dtp.errors import ChainError
from dtp.keys import HostIdentity
from dtp.messaging import errors as E
from dtp.messaging.rpc import ResponseFeePolicy, ResponsePrepay
from tests.test_messaging_rpc import Served, make_rpc


def test_a_ledger_error_checking_an_ack_does_not_end_the_stream() -> None:
    """The ACK of one call is checked against its escrow on the ledger; a ChainError
    there went up through the read loop and closed the connection: the other call in
    flight ended in RpcConnectionLost."""
    ledger = LocalLedger(":memory:", clock_ms=1_000)
    server_id, client_id = HostIdentity.generate(), HostIdentity.generate()
    ledger.faucet(client_id.sui_address, 1_000)
    policy = ResponseFeePolicy(ledger, server_id, min_amount=10)
    read = ledger.get_response_escrow
    reads = 0
    failed = threading.Event()

    def flaky(escrow_id: str) -> Any:
        nonlocal reads
        reads += 1
        if reads == 3:  # the admits of the two calls, then the first ACK's check
            failed.set()
            raise ChainError("ledger unreachable")
        return read(escrow_id)

    ledger.get_response_escrow = flaky  # type: ignore[method-assign]
    s = Served(make_rpc(workers=4, response_fees=policy))
    try:
        prepay = ResponsePrepay(ledger, client_id, server_id.sui_address, 10)
        client = s.connect(timeout=5, prepay=prepay)
        slow = client.start("sleep", [0.5, "slow"])
        assert client.call("echo", 1) == 1
        assert failed.wait(5)
        assert slow.result() == "slow"
        assert client.call("echo", 2) == 2
    finally:
        s.close()


def test_a_ledger_clock_error_refuses_the_request() -> None:
    ledger = LocalLedger(":memory:", clock_ms=1_000)
    server_id, client_id = HostIdentity.generate(), HostIdentity.generate()
    ledger.faucet(client_id.sui_address, 1_000)
    policy = ResponseFeePolicy(ledger, server_id, min_amount=10)
    escrow_id = ledger.response_escrow_deposit(client_id, server_id.sui_address, b"r", 10, 60_000)

    def broken_clock() -> int:
        raise ChainError("ledger unreachable")

    ledger.clock_ms = broken_clock  # type: ignore[method-assign]
    with pytest.raises(E.PaymentRequired):
        policy.admit({"re": escrow_id})
