"""The messaging story for ``dtp demo``: a paid JSON-RPC call on the embedded ledger, and
a sealed message to an offline host delivered once after it returns."""

from __future__ import annotations

import threading
from collections.abc import Callable

import dtp.socket
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import HALF_CLOSE_TIMEOUT_MS, Sla
from dtp.ledger.local import LocalLedger
from dtp.ledger.receipt import Receipt
from dtp.messaging.jsonrpc import JsonRpcClient, JsonRpcHandler, serve_jsonrpc
from dtp.messaging.rpc import RpcClient, RpcServer, ledger_payments
from dtp.messaging.sealed import SealedInbox, seal, send_sealed
from dtp.payments._refunds import collect_refund
from dtp.payments.metering import MeteringConfig
from dtp.payments.receipts import Meter, ReceiptScope

__all__ = ["demo_messaging_story"]


OFF = MeteringConfig(enabled=False)  # billed per request instead (RequestPayments)


def demo_messaging_story(say: Callable[[str], None]) -> None:
    """Run the story, narrating through ``say``."""
    ledger = LocalLedger(":memory:", clock_ms=0)
    provider, user = HostIdentity.generate(), HostIdentity.generate()
    sla = Sla(price_per_kib=0, price_per_request=25, min_deposit=100)
    host = ledger.create_host(provider, provider.noise_public)
    ledger.add_service(provider, host, 8545, "jsonrpc", sla)
    ledger.faucet(user.sui_address, 1_000)
    say(
        f"A JSON-RPC service on port 8545 of host {host[:10]}…: "
        f"{sla.price_per_request} MIST per request."
    )

    # the provider checks each connection's receipts against its own ledger connection
    earned: dict[str, Receipt] = {}  # connection ID -> latest receipt, to claim
    rpc = RpcServer(
        payments=ledger_payments(ledger, on_receipt=lambda r: earned.update({r.connection_id: r}))
    )
    serve_jsonrpc(rpc, JsonRpcHandler({"eth_blockNumber": lambda _: "0x10d4f"}))
    server = dtp.socket.create_server(
        ("127.0.0.1", 0), identity=provider, ledger=ledger, host_id=host, port=8545
    )
    ledger.set_endpoints(provider, host, [f"tcp://127.0.0.1:{server.address[1]}"])
    thread = threading.Thread(target=rpc.serve_forever, args=(server,), daemon=True)
    thread.start()
    sock = dtp.socket.create_connection(
        f"dtp://{host}:8545", ledger=ledger, identity=user, deposit=100, timeout=10, metering=OFF
    )
    try:
        assert sock.connection_id is not None and sock.escrow_id is not None
        say(f"The user connects to dtp://{host[:10]}…:8545, depositing 100 MIST in escrow.")
        scope = ReceiptScope(ledger.package_id, sock.escrow_id, sock.connection_id)
        meter = Meter(user, scope, sla, 100, every_requests=1)
        client = JsonRpcClient(RpcClient(sock, timeout=10, meter=meter))
        block = client.call("eth_blockNumber")
        say(f"eth_blockNumber over DTP -> {block} (the request carried a signed receipt).")
        paid = ledger.claim(provider, sock.escrow_id, earned[sock.connection_id])
        say(f"The provider claims the receipt: {paid} MIST for 1 request.")
    finally:
        sock.close()
        server.close()
        rpc.close()
    # This server settles nothing as the connection ends: the user takes back the rest
    # itself (docs/escrow.md §7 and §7.1). It half-closes, which leaves the server the
    # half-close timeout to claim; after it, the user alone may settle.
    ledger.close_connection(user, sock.connection_id)
    ledger.advance_clock(HALF_CLOSE_TIMEOUT_MS)
    back = collect_refund(ledger, user, sock.connection_id)
    say(
        f"The server settles nothing at the end: the user half-closes, and once the "
        f"{HALF_CLOSE_TIMEOUT_MS // 60_000}-minute timeout has passed (this ledger's clock "
        f"moved on) settles alone: {back} MIST unspent come back."
    )

    # a sealed message to a host that is offline
    bob = HostIdentity.generate()
    bob_host = ledger.create_host(bob, bob.noise_public)
    user_host = ledger.create_host(user, user.noise_public)
    message = seal(
        bob.noise_public,
        b"meet at noon",
        sender=user,
        sender_host=user_host,
        recipient_host=bob_host,
    )
    via = send_sealed(message, recipient_host=bob_host, ledger=ledger, signer=user)
    say(f"Bob is offline: a {len(message)}-byte sealed message (Noise X) goes to his {via}.")
    ledger.mailbox_send(user, bob_host, message)
    say("The same message is sent a second time by mistake.")
    inbox = SealedInbox(bob, bob_host, ledger)
    got = inbox.fetch()
    for m in got:
        who = "user" if m.sender_address == user.sui_address else m.sender_address
        say(f"Bob comes back and reads: {m.body.decode()!r} from the {who} (sender proven).")
    say(f"Delivered {len(got)} time(s); {inbox.duplicates} duplicate dropped.")
    audit = ledger.audit()
    say(
        f"Ledger audit: minted {audit['minted']} = balances {audit['balances']} + "
        f"escrows {audit['escrows']} + broadcasts {audit['broadcasts']} MIST."
    )
