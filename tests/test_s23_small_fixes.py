"""Small fixes of session 23, each tested where it fails without the fix.

1. dtp.aio's server: a connection that took its address's handshake slot and then could
   not be served (starting its task raised: connection_made aborts it) kept the slot for
   good; once that happened ``max_handshakes_per_address`` times, its address could
   never connect again. The slot is given back now.
2. ``ReceiptGate.payable()``: once the client's claims elsewhere spent its spending cap
   below the latest receipt (a cap shared with a connection to another server), the
   gate counted the cap's room as collectable -- but a cumulative receipt is claimed
   whole or not at all, and the ledger refuses it: credit the server served on and
   could not be paid for. It counts what is claimed already now.
3. RPC clients numbered their requests from 1: a client made on a stream another client
   used (``close()`` leaves the stream open) took that client's answers still on the way
   for its own -- ``call("echo", "fresh")`` returned the old call's result, or the
   server refused it as "already in progress". The first id is random now; the old
   answers are late ones, dropped.
4. ``RpcConnectionLost`` was not a ``ConnectionError``, unlike the transport's connection
   errors (``ConnectionClosed``, ``ConnectionLost``): ``except OSError`` missed it.
5. ``dtp demo``'s daemon step: an interrupt that landed inside ``subprocess.Popen``,
   after the fork, lost the Popen object, so the daemon it started was never stopped
   (it went on after the demo removed its directory and recreated part of it: a CI run
   of test_s14_demo_interrupt caught it). SIGINT and SIGTERM are now held from before
   the process is made until it is in the list the step stops.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import dtp.aio
import dtp.socket
from dtp.chain.local import LocalLedger
from dtp.chain.objects import Sla
from dtp.errors import DTPError
from dtp.escrow import Receipt, fee
from dtp.keys import HostIdentity
from dtp.messaging.errors import RpcConnectionLost
from dtp.messaging.protocol import RpcProtocol
from dtp.messaging.rpc import AsyncRpcClient, AsyncRpcServer, RpcClient, RpcServer
from dtp.paid import ServicePolicy, gate_for
from tests.transport.test_handshake_slots import aio_echo_once, aio_server, async_wait_for


def test_aio_a_connection_that_cannot_be_served_gives_its_address_slot_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        server = await aio_server(max_handshakes_per_address=1)
        async with server:
            slots = server._address_slots
            assert slots is not None
            real = server._start_serving
            failures: list[str | None] = []

            def fails_once(arrival: dtp.aio._Arrival) -> None:
                if not failures:
                    failures.append(arrival.key)
                    # (what a loop that no longer takes tasks raises)
                    raise RuntimeError("cannot start serving")
                real(arrival)

            server._start_serving = fails_once  # type: ignore[method-assign]
            with pytest.raises(DTPError):
                await aio_echo_once(server, b"first")
            assert failures == ["127.0.0.1"]
            assert await async_wait_for(lambda: slots.in_progress("127.0.0.1") == 0)
            # the address's one slot is free: the next connection is served at once
            assert await aio_echo_once(server, b"after") == b"after"
            assert server.busy_refused == 0

    with caplog.at_level(logging.ERROR):
        asyncio.run(main())


SLA = Sla(price_per_kib=10, price_per_request=5, min_deposit=1000)
PORT = 7400


def test_a_receipt_stays_collectable_when_the_client_spends_its_cap_elsewhere(
    tmp_path: Path,
) -> None:
    """Two providers' connections on one cap: the other provider's claim cannot make the
    first one's receipt uncollectable -- each deposit was reserved on the cap at its
    open (docs/escrow.md §4), and a claim charges the cap nothing."""
    ledger = LocalLedger(tmp_path / "ledger.db")
    client = HostIdentity.generate()
    provider_a, provider_b = HostIdentity.generate(), HostIdentity.generate()
    try:
        ledger.faucet(client.sui_address, 1 << 40)
        cap = ledger.create_spending_cap(client, 20_000)
        opened = {}
        for provider in (provider_a, provider_b):
            host = ledger.create_host(provider, provider.noise_public)
            ledger.add_service(provider, host, PORT, "svc", SLA)
            opened[provider] = ledger.prepare_open_connection(
                client, host, PORT, cap, 10_000
            ).execute()
        a, b = opened[provider_a], opened[provider_b]
        gate = gate_for(ledger, a.connection_id, ServicePolicy())
        usage = (600 * 1024, 1)
        amount = fee(SLA, *usage)  # 6005 MIST
        receipt_a = Receipt(a.connection_id, *usage, amount, 1).sign(client)
        gate.receive(receipt_a.encode())
        assert gate.payable() == amount

        # the other server claims as much on the same cap, and the client lowers it
        receipt_b = Receipt(b.connection_id, *usage, amount, 1).sign(client)
        assert ledger.claim(provider_b, b.escrow_id, receipt_b) == amount
        ledger.set_max_per_epoch(client, cap, 0)

        # the receipt the gate holds is collectable in whole, as it counted it
        assert ledger.claim(provider_a, a.escrow_id, receipt_a) == amount
        assert gate.payable() == amount
        assert gate.owed(*usage) == 0 and gate.serving(*usage)
    finally:
        ledger.close()


OLD_ANSWER = "the answer to the first client's call"


@pytest.mark.parametrize("workers", [0, 2])
def test_a_client_on_a_stream_another_client_used_gets_its_own_answers(workers: int) -> None:
    rpc = RpcServer(workers=workers)

    @rpc.method()
    def slow(_: object) -> str:
        time.sleep(0.3)
        return OLD_ANSWER

    @rpc.method()
    def echo(value: str) -> str:
        return value

    with dtp.socket.create_server(("127.0.0.1", 0), identity=HostIdentity.generate()) as srv:
        threading.Thread(target=rpc.serve, args=(srv,), daemon=True).start()
        with dtp.socket.create_connection(srv.address, 30, server_key=srv.noise_public_key) as s:
            old = RpcClient(s, timeout=30)
            old.start("slow")
            time.sleep(0.1)
            old.close()  # (the stream stays open: the call's answer is still to come)
            new = RpcClient(s, timeout=30)
            assert new.call("echo", "fresh") == "fresh"
            time.sleep(0.5)  # the old answer has come now
            assert new.call("echo", "again") == "again"
            new.close()
        rpc.close()


def test_an_asyncio_client_on_a_stream_another_client_used_gets_its_own_answers() -> None:
    rpc = AsyncRpcServer()

    @rpc.method()
    async def slow(_: object) -> str:
        await asyncio.sleep(0.3)
        return OLD_ANSWER

    @rpc.method()
    async def echo(value: str) -> str:
        return value

    async def main() -> None:
        identity = HostIdentity.generate()
        srv = await dtp.aio.start_server(rpc.serve_connection, "127.0.0.1", 0, identity=identity)
        host, port = srv.address
        reader, writer = await dtp.aio.open_connection(
            host, port, server_key=srv.noise_public_key, timeout=30
        )
        old = AsyncRpcClient(reader, writer, timeout=30)
        task = asyncio.create_task(old.call("slow"))
        await asyncio.sleep(0.1)
        await old.close()
        with pytest.raises(DTPError):
            await task
        await asyncio.sleep(0.5)  # the old answer came, unread
        new = AsyncRpcClient(reader, writer, timeout=30)
        assert await new.call("echo", "fresh") == "fresh"
        await new.close()
        writer.close()
        await writer.wait_closed()
        srv.close()
        await srv.wait_closed()

    asyncio.run(main())


def test_first_request_ids_differ_between_protocols_unless_given() -> None:
    firsts = {RpcProtocol().send_request("m") for _ in range(20)}
    assert len(firsts) > 1
    assert RpcProtocol(first_id=5).send_request("m") == 5
    for bad in (0, -1, 2**63, 1.0, True):
        with pytest.raises(ValueError, match="first_id"):
            RpcProtocol(first_id=bad)  # type: ignore[arg-type]


def test_a_lost_rpc_stream_is_a_connection_error_as_a_lost_connection_is() -> None:
    rpc = RpcServer()

    @rpc.method()
    def echo(value: str) -> str:
        return value

    with dtp.socket.create_server(("127.0.0.1", 0), identity=HostIdentity.generate()) as srv:
        threading.Thread(target=rpc.serve, args=(srv,), daemon=True).start()
        with dtp.socket.create_connection(srv.address, 30, server_key=srv.noise_public_key) as s:
            client = RpcClient(s, timeout=30)
            assert client.call("echo", "x") == "x"
            rpc.close()
            srv.close()
            s.close()
            with pytest.raises(ConnectionError) as caught:
                client.call("echo", "y")
            assert isinstance(caught.value, RpcConnectionLost)


def test_an_interrupt_while_a_demo_daemon_is_made_leaves_it_in_the_list_to_stop(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import dtp.daemon.demo_step as step

    made: list[subprocess.Popen[str]] = []
    real_popen = subprocess.Popen

    def popen_interrupted(*_args: object, **kwargs: object) -> subprocess.Popen[str]:
        # a real child, and the interrupt in the middle of making it (after the fork)
        child = real_popen([sys.executable, "-c", "import time; time.sleep(60)"], **kwargs)  # type: ignore[call-overload]
        made.append(child)
        signal.raise_signal(signal.SIGINT)
        return child

    monkeypatch.setattr(step.subprocess, "Popen", popen_interrupted)
    procs: list[subprocess.Popen[str]] = []
    # (Python's own SIGINT handler, whatever this process was started with: a suite run
    # in the background by a shell, as CI's may be, inherits SIGINT ignored)
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            step._start(tmp_path / "daemon.toml", procs)
        assert procs == made  # the caller's cleanup stops it
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, inherited)
        for child in made:
            step._stop(child)
    assert all(child.poll() is not None for child in made)
