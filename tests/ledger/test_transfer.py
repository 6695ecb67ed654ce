"""``Ledger.transfer``: a plain transfer of SUI between addresses (``dtp transfer``), on
LocalLedger and on SuiLedger through the node stand-in, which checks and executes the
transaction as a node does. Both ledgers move the amount, refuse what the sender cannot
cover without moving anything, and refuse bad arguments with the same typed errors."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dtp.errors import InsufficientFunds, InvalidArgument, InvalidObjectId
from dtp.identity.keys import HostIdentity
from dtp.ledger.interface import Ledger
from dtp.ledger.local import LocalLedger
from dtp.ledger.sui import SuiConfig, SuiLedger
from dtp.ledger.sui._tx import GasData, OwnedRef, TxContext, transfer_sui
from dtp.testing.sui_node import SuiNodeStandIn
from dtp.testing.sui_node._ptb import parse_tx

SUI = 10**9
FUNDS = 10 * SUI


@dataclass
class Place:
    ledger: Ledger
    sender: HostIdentity
    node: SuiNodeStandIn | None

    def gas_paid(self, before: int, after: int, moved: int) -> int:
        """The gas a transfer of ``moved`` cost the sender, from its balances."""
        return before - after - moved


@pytest.fixture(params=["local", "sui"])
def place(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Place]:
    sender = HostIdentity.generate()
    if request.param == "local":
        local = LocalLedger(tmp_path / "ledger.db")
        local.faucet(sender.sui_address, FUNDS)
        yield Place(local, sender, None)
        assert local.audit()["minted"] == local.audit()["balances"]  # (nothing made or lost)
        local.close()
        return
    with SuiNodeStandIn(clock_ms=0) as node:
        node.faucet(sender.sui_address, FUNDS)
        ledger = SuiLedger(SuiConfig(node.url, node.package_id))
        yield Place(ledger, sender, node)
        ledger.close()
        node.state.check()


def test_a_transfer_moves_the_amount_to_the_recipient(place: Place) -> None:
    recipient = HostIdentity.generate().sui_address
    place.ledger.transfer(place.sender, recipient, 3 * SUI)
    assert place.ledger.balance(recipient) == 3 * SUI
    left = place.ledger.balance(place.sender.sui_address)
    gas = place.gas_paid(FUNDS, left, 3 * SUI)
    if place.node is None:
        assert gas == 0  # (LocalLedger charges no gas)
    else:
        # the sender paid the transaction's gas besides, within its budget; the
        # recipient holds one coin of the amount
        assert 0 < gas <= place.ledger.config.gas_budget  # type: ignore[attr-defined]
        assert place.ledger.gas_coin_count(recipient) == 1
    # and the recipient can spend it on: back to the sender
    again = HostIdentity.generate()
    place.ledger.transfer(place.sender, again.sui_address, 2 * SUI)
    place.ledger.transfer(again, place.sender.sui_address, SUI)
    assert place.ledger.balance(again.sui_address) <= SUI


def test_a_transfer_the_sender_cannot_cover_moves_nothing(place: Place) -> None:
    recipient = HostIdentity.generate().sui_address
    with pytest.raises(InsufficientFunds, match=place.sender.sui_address):
        place.ledger.transfer(place.sender, recipient, FUNDS + 1)
    assert place.ledger.balance(place.sender.sui_address) == FUNDS  # (no gas either)
    assert place.ledger.balance(recipient) == 0
    # an address that holds nothing at all
    broke = HostIdentity.generate()
    with pytest.raises(InsufficientFunds):
        place.ledger.transfer(broke, recipient, 1)
    assert place.ledger.balance(recipient) == 0


def test_both_ledgers_refuse_bad_arguments_alike(place: Place) -> None:
    to = HostIdentity.generate().sui_address
    for bad in ("0xnothex", "", "0x" + "1" * 65, "12"):
        with pytest.raises(InvalidObjectId):
            place.ledger.transfer(place.sender, bad, 1)
    for amount in (0, -1, 2**64, True, 1.5):
        with pytest.raises(InvalidArgument, match="amount"):
            place.ledger.transfer(place.sender, to, amount)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="signer"):
        place.ledger.transfer(None, to, 1)  # type: ignore[arg-type]
    assert place.ledger.balance(place.sender.sui_address) == FUNDS


def test_a_transfer_to_oneself_keeps_the_amount(place: Place) -> None:
    place.ledger.transfer(place.sender, place.sender.sui_address, SUI)
    left = place.ledger.balance(place.sender.sui_address)
    assert left == FUNDS if place.node is None else FUNDS - SUI < left < FUNDS


def test_the_sui_transaction_is_a_split_and_a_transfer_with_no_move_call() -> None:
    sender, to = "0x" + "a" * 64, "0x" + "b" * 64
    gas = GasData((OwnedRef("0x" + "c" * 64, 7, "1" * 32),), 1_000, 50_000_000)
    raw = transfer_sui(TxContext("0x" + "d" * 64, sender, gas), to, 123_456)
    parsed = parse_tx(raw)
    assert parsed.sender == sender and parsed.gas_budget == 50_000_000
    split, send = parsed.commands
    assert (split.kind, split.coin and split.coin.kind) == ("split", "gas")
    assert send.kind == "transfer" and send.objects[0].kind == "nested"
    amount, recipient = (parsed.inputs[a.index] for a in (split.amounts[0], send.address))
    assert amount == struct.pack("<Q", 123_456) and recipient == bytes.fromhex(to[2:])
    with pytest.raises(InvalidArgument):
        transfer_sui(TxContext("0x" + "d" * 64, sender, gas), to, 2**64)
