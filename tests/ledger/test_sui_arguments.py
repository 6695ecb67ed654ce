"""SuiLedger checks its arguments as LocalLedger does, before it asks the node anything.

Byte arguments are bytes-like (an int is never taken for that many zero bytes, text
is refused before the node is asked for objects and gas); one endpoint given as a str
is one endpoint, not one per character (and None is refused); a tuple for an Sla, None
for a Receipt or a signer are typed errors; ``send_retained`` prices the storage
deposit on the buffer's bytes, whatever its item size (else retention::send aborts
EWrongDeposit, gas spent); text that is not UTF-8 (lone surrogates from argv) is
refused as such in both ledgers. The node here is a stand-in that serves canned objects
and gas and keeps the transaction bytes it is given: they are real pysui BCS, read back
to check what was sent.
"""

from __future__ import annotations

import inspect
from array import array
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from pysui.sui.sui_bcs import bcs

from dtp.errors import InvalidArgument
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Sla
from dtp.ledger.interface import Ledger
from dtp.ledger.local import LocalLedger
from dtp.ledger.sui import SuiLedger
from dtp.ledger.sui import _tx as sui_tx
from dtp.ledger.sui._codec import decode
from dtp.payments.receipts import Receipt, ReceiptScope
from tests.support.recording_sui_node import CONN, ESCROW, HOST, PIPE, SIGNER, TERMS, ZERO, FakeNode
from tests.support.recording_sui_node import sui as sui  # the fixture

OTHER = HostIdentity.from_private_bytes(bytes([0x73]) * 32, bytes([0x74]) * 32)
BCAST = "0x" + "a5" * 32
SLA = Sla(10, 5, 100)
# what sui_tx.encode_bytes refuses (bytes(32) == 32 zero bytes was the case that mattered)
NOT_BYTES: list[Any] = [32, 0, 1.5, True, [1, 2], (b"a",)]


def pure_inputs(tx_bytes: bytes) -> list[bytes]:
    """The pure inputs of a serialized ``TransactionData::V1``, as raw BCS."""
    data = bcs.TransactionData.deserialize(tx_bytes)
    kind = data.value.TransactionKind.value
    return [bytes(i.value) for i in kind.Inputs if i.enum_name == "Pure"]


def refused_before_io(node: FakeNode, call: Callable[[], Any]) -> str:
    """``call`` raises InvalidArgument without the node being asked anything."""
    with pytest.raises(InvalidArgument) as info:
        call()
    assert node.calls == [] and node.sent == []
    return str(info.value)


def sui_byte_calls(led: SuiLedger, bad: Any) -> dict[str, Callable[[], Any]]:
    """Every SuiLedger call with a ``vector<u8>`` argument, given ``bad`` there."""
    s = SIGNER
    receipt = Receipt(ReceiptScope(led.package_id, ESCROW, CONN), 1024, 0, 10, 1, bad)
    return {
        "create_host noise_static_key": lambda: led.create_host(s, bad),
        "create_host endpoint": lambda: led.create_host(s, s.noise_public, ["a:1", bad]),
        "set_noise_static_key": lambda: led.set_noise_static_key(s, HOST, bad),
        "set_endpoints endpoint": lambda: led.set_endpoints(s, HOST, [bad]),
        "add_service kind": lambda: led.add_service(s, HOST, 8, bad, SLA),
        "open_connection key": lambda: led.open_connection(s, HOST, 7, ZERO, 0, bad),
        "claim signature": lambda: led.claim(s, ESCROW, receipt),
        "settle_with_receipt signature": lambda: led.settle_with_receipt(s, CONN, receipt),
        "pipe_send data": lambda: led.pipe_send(s, PIPE, 0, bad),
        "create_broadcast channel": lambda: led.create_broadcast(s, bad, 1, 1000),
        "broadcast_transmit data": lambda: led.broadcast_transmit(s, BCAST, bad),
        "mailbox_send payload": lambda: led.mailbox_send(s, HOST, bad),
        "response_escrow_deposit request_id": lambda: led.response_escrow_deposit(
            s, OTHER.sui_address, bad, 10, 10**6
        ),
        "response_escrow_deposit key": lambda: led.response_escrow_deposit(
            s, OTHER.sui_address, b"r", 10, 10**6, bad
        ),
        "response_escrow_claim hash": lambda: led.response_escrow_claim(s, ESCROW, bad, b"s"),
        "response_escrow_claim signature": lambda: led.response_escrow_claim(s, ESCROW, b"h", bad),
        "response_escrow_deliver": lambda: led.response_escrow_deliver(s, ESCROW, bad),
        "create_ticket_sale title": lambda: led.create_ticket_sale(s, bad, 1, 1, 2, 10**6),
        "send_retained data": lambda: led.send_retained(s, PIPE, TERMS, 0, bad),
        "open_subscribed_connection key": lambda: led.open_subscribed_connection(
            s, ZERO, ZERO, 0, bad
        ),
        "open_sponsored_connection key": lambda: led.open_sponsored_connection(
            s, ZERO, ZERO, 0, bad
        ),
        "pay memo": lambda: led.pay(s, OTHER.sui_address, 1, bad),
        "create_ticketed_broadcast channel": lambda: led.create_ticketed_broadcast(
            s, ZERO, bad, 1, 1000
        ),
    }


@pytest.mark.parametrize("bad", NOT_BYTES, ids=repr)
def test_byte_arguments_that_are_not_bytes_or_text_are_refused_before_io(
    sui: tuple[SuiLedger, FakeNode], bad: Any
) -> None:
    led, node = sui
    for name, call in sui_byte_calls(led, bad).items():
        text = refused_before_io(node, call)
        assert text.endswith(f"must be bytes or text, got {type(bad).__name__}."), (name, text)


def test_an_int_key_is_refused_as_local_ledger_refuses_it(
    sui: tuple[SuiLedger, FakeNode], tmp_path: Path
) -> None:
    # the reported case: 32 was signed and sent as 32 zero bytes
    led, node = sui
    text = refused_before_io(node, lambda: led.create_host(SIGNER, 32))  # type: ignore[arg-type]
    with LocalLedger(tmp_path / "l.sqlite") as local:
        local.faucet(SIGNER.sui_address, 10**9)
        with pytest.raises(InvalidArgument) as info:
            local.create_host(SIGNER, 32)  # type: ignore[arg-type]
    assert text == str(info.value) == "noise_static_key must be bytes or text, got int."


def test_text_and_buffers_are_sent_as_their_bytes(sui: tuple[SuiLedger, FakeNode]) -> None:
    led, node = sui
    node.next_events = [
        ("inner_pipe", "PipeDataSent", {"pipe": PIPE, "inner": 0, "seq": 0, "data": b""})
    ]
    led.pipe_send(SIGNER, PIPE, 0, "hé")  # type: ignore[arg-type]
    assert pure_inputs(node.sent[-1])[1] == sui_tx.encode_bytes("hé".encode())
    led.set_noise_static_key(SIGNER, HOST, "x" * 32)  # type: ignore[arg-type]
    assert pure_inputs(node.sent[-1])[0] == sui_tx.encode_bytes(b"x" * 32)
    wide = memoryview(array("H", [1, 2]))
    led.mailbox_send(SIGNER, HOST, wide)  # type: ignore[arg-type]
    assert pure_inputs(node.sent[-1])[0] == sui_tx.encode_bytes(b"\x01\x00\x02\x00")


@pytest.mark.parametrize("single", ["a:1", b"a:1", bytearray(b"x"), None, 5], ids=repr)
def test_endpoints_that_are_no_sequence_are_refused_before_io(
    sui: tuple[SuiLedger, FakeNode], tmp_path: Path, single: Any
) -> None:
    led, node = sui
    texts = {
        refused_before_io(node, lambda: led.set_endpoints(SIGNER, HOST, single)),
        refused_before_io(node, lambda: led.create_host(SIGNER, SIGNER.noise_public, single)),
    }
    with LocalLedger(tmp_path / "l.sqlite") as local:
        local.faucet(SIGNER.sui_address, 10**9)
        host = local.create_host(SIGNER, SIGNER.noise_public)
        with pytest.raises(InvalidArgument) as info:
            local.set_endpoints(SIGNER, host, single)
    assert texts == {str(info.value)}


def test_endpoints_from_any_iterable_are_sent_one_per_item(
    sui: tuple[SuiLedger, FakeNode],
) -> None:
    led, node = sui
    led.set_endpoints(SIGNER, HOST, (e for e in ["a:1", b"b:2"]))  # type: ignore[arg-type]
    assert decode(("vec", "bytes"), pure_inputs(node.sent[-1])[0]) == [b"a:1", b"b:2"]


@pytest.mark.parametrize("typecode", ["H", "I", "d"])
def test_send_retained_prices_the_deposit_on_the_bytes_sent(
    sui: tuple[SuiLedger, FakeNode], tmp_path: Path, typecode: str
) -> None:
    led, node = sui
    node.next_events = [
        (
            "retention",
            "RecordRetained",
            {
                "record": ZERO,
                "connection": CONN,
                "pipe": PIPE,
                "inner": 0,
                "seq": 0,
                "sender": SIGNER.sui_address,
                "receiver": ZERO,
                "deposit": 0,
                "delete_after_ms": 0,
                "reclaim_after_ms": 0,
            },
        )
    ]
    data = memoryview(array(typecode, [1, 2, 3]))
    led.send_retained(SIGNER, PIPE, TERMS, 0, data)  # type: ignore[arg-type]
    # sui_tx.send_retained's pure inputs: inner, data, the deposit split from gas
    _, sent, deposit = pure_inputs(node.sent[-1])
    assert sent == sui_tx.encode_bytes(data.tobytes())
    # retention::send requires deposit == data.length() * storage_price_per_byte (10)
    assert int.from_bytes(deposit, "little") == data.nbytes * 10
    # LocalLedger asks the same deposit for the same data
    with LocalLedger(tmp_path / "l.sqlite") as local:
        local.faucet(SIGNER.sui_address, 10**9)
        host = local.create_host(SIGNER, SIGNER.noise_public)
        local.add_service(SIGNER, host, 7, "raw", Sla(0, 0, 0))
        cap = local.create_spending_cap(SIGNER, 10**9)
        conn = local.open_connection(SIGNER, host, 7, cap, 0).connection_id
        pipe = local.create_pipe(SIGNER, conn, 1)
        terms = local.create_retention_terms(SIGNER, host, 7, 1000, 10)
        before = local.balance(SIGNER.sui_address)
        local.send_retained(SIGNER, pipe, terms, 0, data)  # type: ignore[arg-type]
        assert before - local.balance(SIGNER.sui_address) == data.nbytes * 10


def test_text_that_is_not_utf8_is_an_invalid_argument(
    sui: tuple[SuiLedger, FakeNode], tmp_path: Path
) -> None:
    lone = "caf\udce9"  # what Python makes of the argv bytes b"caf\xe9"
    with pytest.raises(InvalidArgument, match=r"^kind is not valid UTF-8\.$"):
        sui_tx.encode_bytes(lone, "kind")
    with pytest.raises(InvalidArgument, match=r"^endpoint is not valid UTF-8\.$"):
        sui_tx.encode_vec_bytes(["a:1", lone])
    led, node = sui
    assert refused_before_io(node, lambda: led.pipe_send(SIGNER, PIPE, 0, lone)) == (  # type: ignore[arg-type]
        "data is not valid UTF-8."
    )
    with LocalLedger(tmp_path / "l.sqlite") as local:
        local.faucet(SIGNER.sui_address, 10**9)
        with pytest.raises(InvalidArgument, match=r"^endpoint is not valid UTF-8\.$"):
            local.create_host(SIGNER, SIGNER.noise_public, [lone])
        host = local.create_host(SIGNER, SIGNER.noise_public)
        with pytest.raises(InvalidArgument, match=r"^kind is not valid UTF-8\.$"):
            local.add_service(SIGNER, host, 9, lone, SLA)
        assert local.get_host(host).services == {}


def _wrong_typed_calls(
    ledger: Any, host: str, escrow: str, connection: str
) -> dict[str, Callable[[], Any]]:
    return {
        "add_service sla": lambda: ledger.add_service(SIGNER, host, 9, "raw", (1, 1, 1)),
        "update_service sla": lambda: ledger.update_service(SIGNER, host, 7, None),
        "claim receipt": lambda: ledger.claim(SIGNER, escrow, None),
        "settle_with_receipt receipt": lambda: ledger.settle_with_receipt(
            SIGNER, connection, (1, 2, 3)
        ),
        "mailbox_send signer": lambda: ledger.mailbox_send(None, host, b"x"),
        "add_service signer": lambda: ledger.add_service("0x1", host, 9, "raw", SLA),
    }


def test_wrong_typed_sla_receipt_and_signer_are_refused_as_local_ledger_does(
    sui: tuple[SuiLedger, FakeNode], tmp_path: Path
) -> None:
    led, node = sui
    got = {
        name: refused_before_io(node, call)
        for name, call in _wrong_typed_calls(led, HOST, ESCROW, CONN).items()
    }
    assert got["add_service sla"] == "sla must be an Sla, got tuple."
    assert got["claim receipt"] == "receipt must be a Receipt, got NoneType."
    assert got["mailbox_send signer"] == "signer must be a HostIdentity, got NoneType."
    with LocalLedger(tmp_path / "l.sqlite") as local:
        local.faucet(SIGNER.sui_address, 10**9)
        host = local.create_host(SIGNER, SIGNER.noise_public)
        local.add_service(SIGNER, host, 7, "raw", SLA)
        cap = local.create_spending_cap(SIGNER, 10**9)
        opened = local.open_connection(SIGNER, host, 7, cap, 1000)
        for name, call in _wrong_typed_calls(
            local, host, opened.escrow_id, opened.connection_id
        ).items():
            with pytest.raises(InvalidArgument) as info:
                call()
            assert str(info.value) == got[name], name


def _signer_methods() -> list[str]:
    """SuiLedger's own transaction methods, those of its mixins included (an inherited
    default such as Ledger.prepare_open_connection does nothing at all)."""
    mro = SuiLedger.__mro__
    own: dict[str, object] = {}
    for cls in reversed(mro[: mro.index(Ledger)]):
        own.update(vars(cls))
    return sorted(
        name
        for name, fn in own.items()
        if inspect.isfunction(fn)
        and not name.startswith("_")
        and list(inspect.signature(fn).parameters)[1:2] == ["signer"]
    )


def test_every_transaction_method_checks_its_signer_before_io(
    sui: tuple[SuiLedger, FakeNode],
) -> None:
    led, node = sui
    methods = _signer_methods()
    assert len(methods) > 50 and "send_retained" in methods and "mailbox_send" in methods
    for name in methods:
        params = list(inspect.signature(getattr(SuiLedger, name)).parameters.values())[2:]
        # the signer is checked first: the other arguments need not name anything
        required = [p for p in params if p.default is inspect.Parameter.empty]
        args = [HOST for p in required if p.kind is not p.KEYWORD_ONLY]
        kwargs = {p.name: HOST for p in required if p.kind is p.KEYWORD_ONLY}
        for signer in (None, "0x1", b"key"):
            call = partial(getattr(led, name), signer, *args, **kwargs)
            text = refused_before_io(node, call)
            assert text == f"signer must be a HostIdentity, got {type(signer).__name__}.", name
