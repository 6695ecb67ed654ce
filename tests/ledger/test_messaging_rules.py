"""The mailbox and response-escrow ledger rules: tests/scenarios/messaging.toml run on
LocalLedger (with MIST conservation after every step), the Move mirror of those
scenarios, the error table against the Move sources, and the acknowledgement bytes."""

from __future__ import annotations

import json
import re
import tomllib
from typing import Any

import pytest
from pysui.sui.sui_bcs import bcs

from dtp.errors import MOVE_ERRORS, ChainError, InvalidReceipt, NotAuthorized
from dtp.identity.keys import HostIdentity
from dtp.ledger.interface import (
    RESPONSE_ESCROW_PAID,
    response_ack_message,
)
from dtp.ledger.local import LocalLedger
from dtp.ledger.sui import _tx as sui_tx
from tests.ledger.messaging_tx_cases import SUI_CASES
from tests.ledger.sui_tx_cases import CTX, SENDER
from tests.support.golden_tx import regenerate_main, write_golden
from tests.support.paths import ROOT

SCENARIOS = tomllib.loads((ROOT / "tests/scenarios/messaging.toml").read_text())[
    "messaging_scenario"
]
MOVE_TESTS = ROOT / "move/dtp/tests/messaging_scenario_tests.move"
ACTORS = {
    name: HostIdentity.from_private_bytes(bytes([s]) * 32, bytes([s]) * 32)
    for name, s in {"client": 0x11, "mallory": 0x22, "server": 0x33}.items()
}


def conserved(ledger: LocalLedger) -> None:
    audit = ledger.audit()
    assert audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"]


class Runner:
    def __init__(self, scenario: dict[str, Any]) -> None:
        self.s = scenario
        self.ledger = LocalLedger(":memory:", clock_ms=0)
        server = ACTORS["server"]
        self.host = self.ledger.create_host(server, b"\x01" * 32)
        funds = scenario["setup"]["client_funds"]
        if funds:
            self.ledger.faucet(ACTORS["client"].sui_address, funds)
        self.escrow: str | None = None

    def op(self, step: dict[str, Any]) -> Any:
        ledger, op = self.ledger, step["op"]
        by = ACTORS.get(step.get("by", ""))
        if op == "mail_send":
            assert by is not None
            return ledger.mailbox_send(by, self.host, b"\x2a" * step["size"])
        if op == "deposit":
            assert by is not None
            self.escrow = ledger.response_escrow_deposit(
                by, ACTORS["server"].sui_address, b"req-1", step["amount"], step["deadline_ms"]
            )
            return None
        assert self.escrow is not None or op in ("advance_clock", "check")
        if op == "refund":
            assert by is not None and self.escrow is not None
            return ledger.response_escrow_refund(by, self.escrow)
        if op == "deliver":
            assert by is not None and self.escrow is not None
            return ledger.response_escrow_deliver(by, self.escrow, b"\x2a" * step["size"])
        if op == "claim_bad_sig":
            assert by is not None and self.escrow is not None
            return ledger.response_escrow_claim(by, self.escrow, b"\x07" * 32, b"\x00" * 64)
        if op == "advance_clock":
            return ledger.advance_clock(step["ms"])
        if op == "check":
            for actor, amount in step.get("balances", {}).items():
                assert ledger.balance(ACTORS[actor].sui_address) == amount, actor
            if "state" in step:
                assert self.escrow is not None
                assert ledger.get_response_escrow(self.escrow).state == step["state"]
            return None
        raise AssertionError(f"unknown op {op}")

    def run(self) -> None:
        for step in self.s["step"]:
            if "error" in step:
                before = self.ledger.dump()
                with pytest.raises(ChainError) as info:
                    self.op(step)
                assert info.value.qualified_name == step["error"]
                assert self.ledger.dump() == before
            else:
                value = self.op(step)
                if "returns" in step:
                    assert value == step["returns"]
            conserved(self.ledger)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s["name"])
def test_messaging_scenario(scenario: dict[str, Any]) -> None:
    Runner(scenario).run()


def test_scenarios_mirror_move_tests() -> None:
    source = MOVE_TESTS.read_text()
    pattern = re.compile(
        r"#\[test(?:, expected_failure\(abort_code = (\w+::\w+)\))?\]\s*\nfun (\w+)\(\)"
    )
    move = {name: error or None for error, name in pattern.findall(source)}
    assert sorted(move) == sorted(s["name"] for s in SCENARIOS)
    for s in SCENARIOS:
        assert move[s["name"]] == s["step"][-1].get("error"), s["name"]


def test_error_table_matches_move_sources() -> None:
    for module in ("mailbox", "response_escrow"):
        text = (ROOT / f"move/dtp/sources/{module}.move").read_text()
        declared = {
            name: int(code)
            for code, name in re.findall(r"#\[error\(code = (\d+)\)\]\s*const (\w+)", text)
        }
        table = {n: i.code for (m, n), i in MOVE_ERRORS.items() if m == module}
        assert declared == table, module
    codes = [info.code for info in MOVE_ERRORS.values()]
    assert len(codes) == len(set(codes))


def test_ack_message_layout_and_claim_with_real_ack() -> None:
    message = response_ack_message("0x" + "cd" * 32, "0x" + "ab" * 32, b"\x01" * 32)
    assert len(message) == 112 and message[:16] == b"\x0fDTP-RESPONSE-V2"
    assert message[16:48] == b"\xcd" * 32 and message[48:80] == b"\xab" * 32
    ledger = LocalLedger(":memory:", clock_ms=0)
    package = ledger.package_id
    client, server, mallory = ACTORS["client"], ACTORS["server"], ACTORS["mallory"]
    ledger.faucet(client.sui_address, 50)
    escrow = ledger.response_escrow_deposit(client, server.sui_address, b"r", 20, 100)
    digest = b"\x09" * 32
    forged = mallory.sign(response_ack_message(package, escrow, digest))
    with pytest.raises(InvalidReceipt):
        ledger.response_escrow_claim(server, escrow, digest, forged)
    # the requester's own signature, but for another deployment of the package, or in
    # version 1's layout (the escrow alone): refused alike
    elsewhere = client.sign(response_ack_message("0x" + "cd" * 32, escrow, digest))
    with pytest.raises(InvalidReceipt):
        ledger.response_escrow_claim(server, escrow, digest, elsewhere)
    v1 = b"\x0fDTP-RESPONSE-V1" + bytes.fromhex(escrow[2:].rjust(64, "0")) + digest
    with pytest.raises(InvalidReceipt):
        ledger.response_escrow_claim(server, escrow, digest, client.sign(v1))
    ack = client.sign(response_ack_message(package, escrow, digest))
    with pytest.raises(NotAuthorized):
        ledger.response_escrow_claim(mallory, escrow, digest, ack)
    assert ledger.response_escrow_claim(server, escrow, digest, ack) == 20
    state = ledger.get_response_escrow(escrow)
    assert state.state == RESPONSE_ESCROW_PAID and state.funds == 0 and state.amount == 20
    ledger.advance_clock(1000)
    with pytest.raises(ChainError) as closed:
        ledger.response_escrow_refund(client, escrow)
    assert closed.value.qualified_name == "response_escrow::EEscrowClosed"
    names = [e.name for e in ledger.events()[0]]
    assert names[-2:] == ["ResponseFeeDeposited", "ResponseFeeClaimed"]
    conserved(ledger)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"requester_public_key": b"\x00" * 31}, "response_escrow::EInvalidPublicKey"),
        (
            {"requester_public_key": ACTORS["mallory"].ed25519_public},
            "response_escrow::EKeyMismatch",
        ),
        ({"amount": 0}, "response_escrow::EZeroAmount"),
        ({"request_id": b"x" * 65}, "response_escrow::ERequestIdTooLong"),
        ({"amount": 10_000}, "sui::InsufficientCoinBalance"),
    ],
)
def test_deposit_checks(kwargs: dict[str, Any], error: str) -> None:
    ledger = LocalLedger(":memory:", clock_ms=0)
    client = ACTORS["client"]
    ledger.faucet(client.sui_address, 100)
    args: dict[str, Any] = {"request_id": b"r", "amount": 5, "deadline_ms": 10, **kwargs}
    with pytest.raises(ChainError) as info:
        ledger.response_escrow_deposit(client, ACTORS["server"].sui_address, **args)
    assert info.value.qualified_name == error
    conserved(ledger)


# -- SuiLedger: builders, golden bytes, event layouts -------------------------------------------

GOLDEN = ROOT / "tests/golden/messaging_transactions.json"


def build_messaging() -> dict[str, str]:
    return {
        name: sui_tx.MESSAGING_BUILDERS[name](CTX, *args).hex() for name, args in SUI_CASES.items()
    }


def test_messaging_builders_cover_the_new_ledger_methods() -> None:
    from dtp.ledger.interface import Ledger

    new = {
        "mailbox_send",
        "response_escrow_deposit",
        "response_escrow_claim",
        "response_escrow_deliver",
        "response_escrow_refund",
    }
    assert new <= set(vars(Ledger))
    assert set(sui_tx.MESSAGING_BUILDERS) == set(sui_tx.MESSAGING_TARGETS) == set(SUI_CASES) == new
    assert not set(sui_tx.MESSAGING_BUILDERS) & set(sui_tx.BUILDERS)


@pytest.mark.parametrize("name", sorted(SUI_CASES))
def test_messaging_golden_bytes(name: str) -> None:
    golden = json.loads(GOLDEN.read_text())["transactions"]
    assert build_messaging()[name] == golden[name], (
        "run python -m tests.ledger.test_messaging_rules --regenerate after a deliberate change"
    )
    data = bcs.TransactionData.from_bytes(bytes.fromhex(golden[name])).value
    calls = [c.value for c in data.TransactionKind.value.Command if c.enum_name == "MoveCall"]
    module, function = sui_tx.MESSAGING_TARGETS[name]
    assert (calls[-1].Module, calls[-1].Function) == (module, function)
    assert data.Sender.to_address_str() == SENDER.sui_address


def test_messaging_event_layouts_match_local_ledger_events() -> None:
    from dtp.ledger.sui import MESSAGING_EVENT_LAYOUTS
    from dtp.ledger.sui._codec import decode, encode

    ledger = LocalLedger(":memory:", clock_ms=0)
    client, server = ACTORS["client"], ACTORS["server"]
    host = ledger.create_host(server, b"\x01" * 32)
    ledger.faucet(client.sui_address, 100)
    ledger.mailbox_send(client, host, b"sealed")
    a = ledger.response_escrow_deposit(client, server.sui_address, b"a", 10, 100)
    b = ledger.response_escrow_deposit(client, server.sui_address, b"b", 10, 100)
    c = ledger.response_escrow_deposit(client, server.sui_address, b"c", 10, 100)
    ledger.response_escrow_claim(
        server,
        a,
        b"\x01" * 32,
        client.sign(response_ack_message(ledger.package_id, a, b"\x01" * 32)),
    )
    ledger.response_escrow_deliver(server, b, b"answer")
    ledger.advance_clock(200)
    ledger.response_escrow_refund(client, c)
    ledger.destroy_response_escrow(client, c)
    seen = set()
    for event in ledger.events()[0]:
        key = (event.module, event.name)
        if key not in MESSAGING_EVENT_LAYOUTS:
            continue
        layout = MESSAGING_EVENT_LAYOUTS[key]
        assert {f for f, _ in layout[1]} == set(event.fields), key
        assert decode(layout, encode(layout, event.fields)) == dict(event.fields)
        seen.add(key)
    assert seen == set(MESSAGING_EVENT_LAYOUTS)


def regenerate() -> None:
    """Rewrite tests/golden/messaging_transactions.json from the current builders."""
    write_golden(
        GOLDEN,
        (
            "the dtp.ledger.sui._tx messaging builders (mailbox, response_escrow) for the fixed "
            "inputs of tests/ledger/test_messaging_rules.py and "
            "tests/ledger/test_sui_transactions.py"
        ),
        build_messaging(),
    )


if __name__ == "__main__":
    regenerate_main(regenerate)
