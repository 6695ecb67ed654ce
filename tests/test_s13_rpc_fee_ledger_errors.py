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


def test_a_failing_on_receipt_fails_its_request_not_the_stream() -> None:
    """RequestPayments' on_receipt raising (a receipt store with the disk full) went up
    through the read loop: the connection closed, every call in flight failed."""
    from dtp.chain.objects import Sla
    from dtp.escrow import Meter
    from dtp.messaging.rpc import RequestPayments

    ledger = LocalLedger(":memory:", clock_ms=0)
    server_id, client_id = HostIdentity.generate(), HostIdentity.generate()
    sla = Sla(price_per_kib=0, price_per_request=7, min_deposit=0)
    host = ledger.create_host(server_id, server_id.noise_public)
    ledger.add_service(server_id, host, 9, "echo", sla)
    cap = ledger.create_spending_cap(client_id, 10_000)
    ledger.faucet(client_id.sui_address, 1_000)
    opened = ledger.open_connection(client_id, host, 9, cap, 100)
    kept = 0

    def keep(receipt: object) -> None:
        nonlocal kept
        kept += 1
        if kept == 2:
            raise OSError(28, "No space left on device")

    payments = RequestPayments(
        opened.connection_id, sla, client_id.ed25519_public, 100, on_receipt=keep
    )
    s = Served(make_rpc(workers=4, payments=payments))
    try:
        meter = Meter(client_id, opened.connection_id, sla, 100, every_requests=1)
        client = s.connect(timeout=5, meter=meter)
        slow = client.start("sleep", [0.5, "slow"])
        with pytest.raises(E.InternalError):
            client.call("echo", 1)  # its receipt could not be kept
        assert client.call("echo", 2) == 2
        assert slow.result() == "slow"
    finally:
        s.close()
