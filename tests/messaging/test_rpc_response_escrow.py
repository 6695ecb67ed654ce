"""Prepaid response escrows are never lost or kept for good.

- A prepaid call that fails because the client closed (or the stream ended) leaves its
  escrow in ``prepay.unanswered`` for ``refund_due``, on both clients.
- A ledger error while a server checks response fees refuses or skips that one thing;
  it does not end the stream, failing every call in flight on it.
- ResponseFeePolicy forgets the escrow of a paid request that ended with no response
  (its handler failed, it was cancelled or timed out), so a server's memory does not
  grow with every failed paid request.
- A paid request cancelled while its prepaid response escrow is being checked (in a
  worker thread, which a cancel cannot stop) leaves no entry: a request naming the
  escrow again is not refused for it."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Mapping
from typing import Any

import pytest

import dtp.aio
from dtp.errors import ChainError
from dtp.identity.keys import HostIdentity
from dtp.ledger.local import LocalLedger
from dtp.messaging import errors as E
from dtp.messaging.rpc import AsyncRpcClient, AsyncRpcServer, ResponseFeePolicy, ResponsePrepay
from tests.messaging.conftest import Endpoint
from tests.messaging.rpc_world import Served, make_rpc
from tests.support.polling import wait_for


def test_a_prepaid_call_failed_by_close_keeps_its_escrow_for_refund() -> None:
    ledger = LocalLedger(":memory:", clock_ms=1_000)
    server_id, client_id = HostIdentity.generate(), HostIdentity.generate()
    ledger.faucet(client_id.sui_address, 1_000)
    policy = ResponseFeePolicy(ledger, server_id, min_amount=10)
    rpc = AsyncRpcServer(response_fees=policy)

    async def main() -> ResponsePrepay:
        started = asyncio.Event()
        release = asyncio.Event()

        async def slow(p: object) -> object:
            started.set()
            await release.wait()
            return p

        rpc.register("slow", slow)
        served: list[asyncio.Task[None]] = []

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            served.append(asyncio.current_task())  # type: ignore[arg-type]
            # (a plain socket proves no identity: the client's escrows are served only
            # to their requester)
            writer.peer_address = client_id.sui_address  # type: ignore[attr-defined]
            try:
                await rpc.serve_stream(reader, writer)
            finally:
                writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        prepay = ResponsePrepay(ledger, client_id, server_id.sui_address, 10)
        client = AsyncRpcClient(reader, writer, timeout=5, prepay=prepay)
        call = asyncio.ensure_future(client.call("slow", 1))
        await asyncio.wait_for(started.wait(), 5)
        await client.close()
        with pytest.raises(E.RpcConnectionLost):
            await call
        release.set()
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        await asyncio.gather(*served, return_exceptions=True)
        return prepay

    prepay = asyncio.run(main())
    assert len(prepay.unanswered) == 1
    ledger.advance_clock(10_000)
    assert prepay.refund_due() == 10
    assert ledger.balance(client_id.sui_address) == 1_000


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


@pytest.mark.parametrize(
    "failure",
    [OSError(28, "No space left on device"), TypeError("not a receipt store")],
    ids=["disk-full", "type-error"],
)
def test_a_failing_on_receipt_fails_its_request_not_the_stream(
    rpc_driver: Callable[..., Endpoint], failure: Exception
) -> None:
    """RequestPayments' on_receipt raising (a receipt store with the disk full) went up
    through the read loop: the connection closed, every call in flight failed. A fee
    check failing so is that request's internal error on both servers, whatever it
    raised (the asyncio server answered a TypeError as the caller's invalid params)."""
    from dtp.ledger._objects import Sla
    from dtp.messaging.rpc import RequestPayments
    from dtp.payments.receipts import Meter

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
            raise failure

    payments = RequestPayments(
        ledger.receipt_scope(opened.connection_id),
        sla,
        client_id.ed25519_public,
        100,
        on_receipt=keep,
    )
    s = rpc_driver(workers=4, payments=payments)
    meter = Meter(client_id, ledger.receipt_scope(opened.connection_id), sla, 100, every_requests=1)
    client = s.connect(timeout=5, meter=meter)
    slow = client.start("sleep", [0.5, "slow"])
    with pytest.raises(E.InternalError):
        client.call("echo", 1)  # its receipt could not be kept
    assert client.call("echo", 2) == 2
    assert slow.result(10) == "slow"


def _ledger() -> tuple[LocalLedger, HostIdentity, HostIdentity]:
    ledger = LocalLedger(":memory:", clock_ms=1_000)
    server_id, client_id = HostIdentity.generate(), HostIdentity.generate()
    ledger.faucet(client_id.sui_address, 100_000)
    return ledger, server_id, client_id


def _unanswered_entries(policy: ResponseFeePolicy) -> int:
    return sum(1 for digest, _ in policy.answered.values() if not digest)


@pytest.mark.parametrize("workers", [0, 4])
def test_failed_paid_requests_leave_no_entry(
    rpc_driver: Callable[..., Endpoint], workers: int
) -> None:
    """(``workers``: the blocking server's; the asyncio one runs each request as a task)"""
    ledger, server_id, client_id = _ledger()
    policy = ResponseFeePolicy(ledger, server_id, min_amount=10)
    s = rpc_driver(workers=workers, response_fees=policy)
    prepay = ResponsePrepay(ledger, client_id, server_id.sui_address, 10)
    client = s.connect(timeout=5, prepay=prepay)
    for i in range(5):
        with pytest.raises(E.InvalidParams):
            client.call("fail", i)
        with pytest.raises(E.InternalError):
            client.call("crash", i)
    assert client.call("echo", 1) == 1
    assert _unanswered_entries(policy) == 0
    assert len(policy.answered) + len(policy.acks) == 1  # the one answered call


class _SlowFirstCheck(ResponseFeePolicy):
    """The first escrow check waits for ``proceed`` (a slow ledger)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.entered = threading.Event()
        self.proceed = threading.Event()
        self.finished = threading.Event()
        self._first = True

    def admit(self, meta: Mapping[str, Any] | None, peer: str | None = None) -> str | None:
        first, self._first = self._first, False
        if not first:
            return super().admit(meta, peer)
        self.entered.set()
        self.proceed.wait(5)
        try:
            return super().admit(meta, peer)
        finally:
            self.finished.set()


def test_a_request_cancelled_during_its_fee_check_leaves_no_entry() -> None:
    ledger = LocalLedger(":memory:", clock_ms=1_000)
    server_id, client_id = HostIdentity.generate(), HostIdentity.generate()
    ledger.faucet(client_id.sui_address, 100_000)
    policy = _SlowFirstCheck(ledger, server_id, min_amount=10)
    rpc = AsyncRpcServer(response_fees=policy)
    rpc.register("echo", lambda p: p)

    async def main() -> None:
        server = await dtp.aio.start_server(rpc.serve_stream, "127.0.0.1", 0, identity=server_id)
        host, port = server.sockets[0].getsockname()[:2]
        reader, writer = await dtp.aio.open_connection(
            host, port, server_key=server_id.noise_public, identity=client_id
        )
        prepay = ResponsePrepay(ledger, client_id, server_id.sui_address, 10)
        client = AsyncRpcClient(reader, writer, timeout=5, prepay=prepay)
        try:
            first = asyncio.ensure_future(client.call("echo", 1))
            assert await asyncio.to_thread(policy.entered.wait, 5)
            first.cancel()  # (its CANCEL goes out)
            with contextlib.suppress(asyncio.CancelledError):
                await first
            # answered after the server took the CANCEL (the stream is in order)
            assert await client.call("echo", 2) == 2
            policy.proceed.set()
            assert await asyncio.to_thread(policy.finished.wait, 5)
            for _ in range(200):  # (the loop runs what the check's end leaves it)
                if len(policy.answered) + len(policy.acks) == 1:
                    break
                await asyncio.sleep(0.01)
            # only the answered call's entry: the cancelled one's escrow is free
            assert len(policy.answered) + len(policy.acks) == 1
        finally:
            policy.proceed.set()
            await client.close()
            writer.close()
            await writer.wait_closed()
            server.close()
            await server.wait_closed()

    asyncio.run(main())


def test_a_prepay_replaced_mid_call_settles_its_own_escrows(
    rpc_driver: Callable[..., Endpoint],
) -> None:
    """A call's escrow is acknowledged or refunded by the ResponsePrepay that made it,
    also when the client's ``prepay`` is replaced or taken away while the call is in
    flight (the fee engine files the escrow with its maker: ClientFees), so that a fee
    is acknowledged or refunded even with no ``prepay`` left on the client."""
    ledger, server_id, client_id = _ledger()
    policy = ResponseFeePolicy(ledger, server_id, min_amount=10)
    s = rpc_driver(response_fees=policy)
    first = ResponsePrepay(ledger, client_id, server_id.sui_address, 10)
    second = ResponsePrepay(ledger, client_id, server_id.sui_address, 10)
    caller = s.connect(timeout=10, prepay=first)
    client = getattr(caller, "client", caller)  # (the asyncio driver's own client)
    answered = caller.start("sleep", [0.3, "answered"])
    assert wait_for(lambda: len(policy.answered) == 1)  # admitted: in flight
    client.prepay = None
    assert answered.result(10) == "answered"
    assert wait_for(lambda: len(policy.acks) == 1)  # acknowledged with first's identity
    client.prepay = second
    caller.start("sleep", [30, "never"])
    assert wait_for(lambda: len(policy.answered) == 1)
    client.prepay = None
    caller.close()
    assert first.unanswered == []
    assert len(second.unanswered) == 1  # refunded by its maker once the deadline passes
    assert second.unanswered[0] not in policy.acks


def test_a_prepaid_call_that_timed_out_is_refunded_not_acknowledged(
    rpc_driver: Callable[..., Endpoint],
) -> None:
    """One rule on both clients: a prepaid call acknowledges only a response its caller
    gets (ClientFees.answered; its late response, if one crossed the CANCEL, is dropped
    by the protocol and would find no escrow: tests/messaging/test_rpc_fees_engine.py).
    A call past its deadline sends no ACK, its escrow is refunded once after the ledger
    deadline, and the call after it is acknowledged as usual. MIST is conserved."""
    ledger, server_id, client_id = _ledger()
    policy = ResponseFeePolicy(ledger, server_id, min_amount=10)
    s = rpc_driver(response_fees=policy)
    prepay = ResponsePrepay(ledger, client_id, server_id.sui_address, 10, grace_ms=200)
    caller = s.connect(timeout=10, prepay=prepay)
    with pytest.raises(E.RpcTimeout):
        caller.call("sleep", [0.3, "late"], timeout=0.1)
    [late] = prepay.unanswered
    assert caller.call("echo", "next") == "next"
    assert wait_for(lambda: len(policy.acks) == 1)  # (the echo's: acks travel after)
    assert late not in policy.acks and prepay.unanswered == [late]
    caller.close()
    assert policy.claim_all() == 10  # the echo's fee
    assert policy.deliver_unacknowledged() == 0  # no answer to the late call was kept
    assert prepay.refund_due() == 0  # not before the ledger deadline
    ledger.advance_clock(10_000)
    assert prepay.refund_due() == 10 and prepay.unanswered == []
    assert prepay.refund_due() == 0  # once
    assert ledger.balance(server_id.sui_address) == 10
    audit = ledger.audit()
    assert audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"]
