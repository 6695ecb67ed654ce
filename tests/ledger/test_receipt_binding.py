"""What a receipt is bound to (docs/escrow.md §6, format version 2): the claim rule pays a
receipt only for the escrow, the package and the chain it was signed for, and never one
with nonce 0; a version-1 receipt is refused -- on LocalLedger and on the Sui node
stand-in alike."""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dtp.errors import InvalidReceipt, ObjectNotFound, ReplayedReceipt, UnsupportedReceiptVersion
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import OpenedConnection, Sla
from dtp.ledger.interface import Ledger
from dtp.ledger.local import LocalLedger
from dtp.ledger.local._tx import decode_tx
from dtp.ledger.receipt import Receipt, ReceiptScope, fee
from tests.support.sui_network import SuiNetwork, real_node_configured, sui_network

SLA = Sla(price_per_kib=10, price_per_request=5, min_deposit=1000)
DEPOSIT = 10_000
SUI = 10**10
USAGE = (10240, 4)  # 120 MIST


@dataclass
class Chain:
    """A ledger with a host, its paid service and a funded client with a cap."""

    ledger: Ledger
    server: HostIdentity
    client: HostIdentity
    host: str
    cap: str

    @classmethod
    def on(cls, ledger: Ledger, fund: Callable[[str, int], Any]) -> Chain:
        server, client = HostIdentity.generate(), HostIdentity.generate()
        for who in (server, client):
            fund(who.sui_address, SUI)
        host = ledger.create_host(server, server.noise_public, [])
        ledger.add_service(server, host, 7, "raw", SLA)
        return cls(ledger, server, client, host, ledger.create_spending_cap(client, SUI))

    def open(self) -> OpenedConnection:
        return self.ledger.open_connection(self.client, self.host, 7, self.cap, DEPOSIT)

    def receipt(self, scope: ReceiptScope, nonce: int = 1) -> Receipt:
        return Receipt(scope, *USAGE, fee(SLA, *USAGE), nonce).sign(self.client)

    def refused(self, escrow_id: str, receipt: Receipt) -> InvalidReceipt:
        """``claim`` refuses ``receipt`` on ``escrow_id`` and the escrow pays nothing."""
        before = self.ledger.get_escrow(escrow_id)
        with pytest.raises(InvalidReceipt) as refused:
            self.ledger.claim(self.server, escrow_id, receipt)
        after = self.ledger.get_escrow(escrow_id)
        assert (after.claimed, after.balance, after.latest_nonce) == (
            before.claimed,
            before.balance,
            before.latest_nonce,
        )
        return refused.value


@pytest.fixture(params=["local", "sui"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sui" and real_node_configured():
        pytest.skip("two chains of one package need the stand-in (a real node is one chain)")
    yield request.param


def _chains(kind: str, tmp_path: Path, count: int) -> Iterator[list[Chain]]:
    """``count`` chains of one kind: LocalLedger files, or Sui node stand-ins of one
    package ID (the worst case: on Sui two chains share a package ID only if forks)."""
    if kind == "local":
        ledgers = [LocalLedger(tmp_path / f"chain{i}.sqlite") for i in range(count)]
        try:
            yield [Chain.on(ledger, ledger.faucet) for ledger in ledgers]
        finally:
            for ledger in ledgers:
                ledger.close()
        return
    with contextlib.ExitStack() as stack:
        first = stack.enter_context(sui_network())
        networks: list[SuiNetwork] = [first] + [
            stack.enter_context(sui_network(package=first.package_id)) for _ in range(count - 1)
        ]
        ledgers_sui = [network.ledger() for network in networks]
        try:
            yield [Chain.on(led, net.fund) for led, net in zip(ledgers_sui, networks, strict=True)]
        finally:
            for led in ledgers_sui:
                led.close()


@pytest.fixture
def chain(backend: str, tmp_path: Path) -> Iterator[Chain]:
    gen = _chains(backend, tmp_path, 1)
    yield next(gen)[0]
    gen.close()


def test_a_receipt_is_claimed_for_its_own_escrow_only(chain: Chain) -> None:
    """Two connections of one client to one server: a receipt signed for one escrow (its
    own scope, or relabelled with the other's) is refused by the other."""
    a, b = chain.open(), chain.open()
    scope_a = chain.ledger.receipt_scope(a.connection_id)
    assert scope_a == ReceiptScope(chain.ledger.package_id, a.escrow_id, a.connection_id)
    receipt_a = chain.receipt(scope_a)
    assert chain.refused(b.escrow_id, receipt_a).name == "EBadSignature"
    # the same signature over a scope naming the other escrow (and its connection)
    scope_b = chain.ledger.receipt_scope(b.connection_id)
    relabelled = Receipt(scope_b, *USAGE, receipt_a.total_amount, 1, receipt_a.signature)
    assert chain.refused(b.escrow_id, relabelled).name == "EBadSignature"
    # signed for escrow a but naming connection b: the escrow pays for its own connection
    mixed = chain.receipt(ReceiptScope(chain.ledger.package_id, a.escrow_id, b.connection_id))
    assert chain.refused(a.escrow_id, mixed).name == "EBadSignature"
    assert chain.ledger.claim(chain.server, a.escrow_id, receipt_a) == receipt_a.total_amount
    assert chain.ledger.claim(chain.server, b.escrow_id, chain.receipt(scope_b)) == 120


def test_a_receipt_for_another_package_is_refused(chain: Chain) -> None:
    """The same escrow and connection under another deployment of the package."""
    opened = chain.open()
    scope = chain.ledger.receipt_scope(opened.connection_id)
    for package in ("0x" + "ee" * 32, "0x2"):
        other = ReceiptScope(package, opened.escrow_id, opened.connection_id)
        assert chain.refused(opened.escrow_id, chain.receipt(other)).name == "EBadSignature"
    assert chain.ledger.claim(chain.server, opened.escrow_id, chain.receipt(scope)) == 120


def test_nonce_zero_is_never_claimed(chain: Chain) -> None:
    """Nonces start at 1: nonce 0 fails the replay check on a fresh escrow (the client
    side does not even sign one: Receipt.sign refuses)."""
    opened = chain.open()
    scope = chain.ledger.receipt_scope(opened.connection_id)
    with pytest.raises(ValueError, match="never claimable"):
        chain.receipt(scope, nonce=0)
    signed = chain.receipt(scope, nonce=1)
    zero = Receipt(scope, *USAGE, signed.total_amount, 0, signed.signature)
    refused = chain.refused(opened.escrow_id, zero)
    assert isinstance(refused, ReplayedReceipt) and refused.name == "EReplayedReceipt"
    assert chain.ledger.claim(chain.server, opened.escrow_id, signed) == 120


def test_a_version_1_receipt_is_refused(chain: Chain) -> None:
    """What a client of the release before signs: DTP-RECEIPT-V1 || connection || totals
    || nonce. Its bytes in-band are refused by their version; its signature, put to a
    claim, does not verify over the version-2 message."""
    opened = chain.open()
    amount = fee(SLA, *USAGE)
    v1_message = (
        bytes([14])
        + b"DTP-RECEIPT-V1"
        + bytes.fromhex(opened.connection_id[2:])
        + struct.pack("<QQQQ", *USAGE, amount, 1)
    )
    v1_signature = chain.client.sign(v1_message)
    v1_encoded = b"\x01" + v1_message[15:] + v1_signature
    with pytest.raises(UnsupportedReceiptVersion) as unsupported:
        Receipt.decode(v1_encoded)
    assert unsupported.value.version == 1
    scope = chain.ledger.receipt_scope(opened.connection_id)
    as_v2 = Receipt(scope, *USAGE, amount, 1, v1_signature)
    assert chain.refused(opened.escrow_id, as_v2).name == "EBadSignature"


def test_a_receipt_of_another_chain_is_refused(backend: str, tmp_path: Path) -> None:
    """Two chains (two LocalLedger files; two stand-ins standing for one package ID):
    a receipt signed on one names an escrow the other does not have, and no escrow of
    the other takes it."""
    gen = _chains(backend, tmp_path, 2)
    here, there = next(gen)
    try:
        mine, theirs = here.open(), there.open()
        receipt = here.receipt(here.ledger.receipt_scope(mine.connection_id))
        with pytest.raises(ObjectNotFound):
            there.ledger.claim(there.server, mine.escrow_id, receipt)
        # signed by there's client for here's escrow: no escrow of there's verifies it
        theirs_signed = there.receipt(here.ledger.receipt_scope(mine.connection_id))
        assert there.refused(theirs.escrow_id, theirs_signed).name == "EBadSignature"
        assert here.ledger.claim(here.server, mine.escrow_id, receipt) == 120
    finally:
        gen.close()


def test_a_replayed_open_on_another_local_ledger_takes_no_receipt_of_the_first(
    tmp_path: Path,
) -> None:
    """LocalLedger transactions carry no gas, so the very same signed transactions can
    run on two ledger files and create the same connection and escrow IDs on both: what
    binds a receipt to its ledger file there is the file's own package ID."""
    first, second = LocalLedger(tmp_path / "a.sqlite"), LocalLedger(tmp_path / "b.sqlite")
    try:
        assert first.package_id != second.package_id
        sent: list[bytes] = []
        real = first._execute

        def recording(tx: Any, tx_bytes: bytes, signature: bytes | None) -> Any:
            sent.append(tx_bytes)
            return real(tx, tx_bytes, signature)

        first._execute = recording  # type: ignore[method-assign]
        here = Chain.on(first, first.faucet)
        for who in (here.server, here.client):
            second.faucet(who.sui_address, SUI)
        opened = here.open()
        signers = {who.sui_address: who for who in (here.server, here.client)}

        for tx_bytes in sent:  # the same signed transactions, on the second file
            signer = signers[decode_tx(tx_bytes).sender]
            second.execute(tx_bytes, signer.sign_transaction(tx_bytes))
        assert second.get_escrow(opened.escrow_id).connection == opened.connection_id
        receipt = here.receipt(first.receipt_scope(opened.connection_id))
        there = Chain(second, here.server, here.client, here.host, here.cap)
        assert there.refused(opened.escrow_id, receipt).name == "EBadSignature"
        assert first.claim(here.server, opened.escrow_id, receipt) == 120
        # signed for the second file's package, it is paid there
        again = here.receipt(second.receipt_scope(opened.connection_id))
        assert second.claim(here.server, opened.escrow_id, again) == 120
    finally:
        first.close()
        second.close()


def test_a_local_ledger_file_keeps_its_package_id(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    with_id = LocalLedger(path)
    package = with_id.package_id
    assert package.startswith("0x") and len(package) == 66
    with_id.close()
    again = LocalLedger(path)
    try:
        assert again.package_id == package
    finally:
        again.close()
    assert LocalLedger(":memory:").package_id != package
