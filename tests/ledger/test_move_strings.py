"""Every ``vector<u8>`` a Move function turns into a String with ``string::utf8`` aborts
in ``std::string`` on LocalLedger as on Sui when it is not UTF-8, where the Move code calls
it: ``host::add_service``'s kind (after the authority and ``EServiceExists`` checks) and
``broadcast::create``'s channel (after ``EInvalidSlot``): in that order, not refused
before the call as InvalidArgument.

LocalLedger's money rules: bad input to the transaction builder is refused with a
typed error."""

from __future__ import annotations

import inspect
from pathlib import Path

import pysui.sui.sui_grpc.suimsgs.sui.rpc.v2 as sui_prot
import pytest

from dtp.errors import ChainError, InvalidArgument
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Sla
from dtp.ledger.local import LocalLedger
from dtp.ledger.sui import execution_error
from tests.ledger.move_parity import (
    NOT_UTF8,
    OTHER,
    SERVER,
    SLA,
    sui_string_abort,
)


@pytest.fixture
def ledger(tmp_path: Path) -> LocalLedger:
    ledger = LocalLedger(tmp_path / "ledger.sqlite", clock_ms=0)
    for who in (SERVER, OTHER):
        ledger.faucet(who.sui_address, 100_000)
    return ledger


def _is_string_abort(error: ChainError) -> bool:
    sui = sui_string_abort()
    return type(error) is ChainError and (error.name, error.module, error.code) == (
        sui.name,
        sui.module,
        sui.code,
    )


def test_a_service_kind_that_is_not_utf8_aborts_in_std_string(ledger: LocalLedger) -> None:
    host = ledger.create_host(SERVER, b"\x01" * 32)
    ledger.add_service(SERVER, host, 7, "raw", SLA)
    before = ledger.dump()
    with pytest.raises(ChainError) as info:
        ledger.add_service(SERVER, host, 8, NOT_UTF8, SLA)  # type: ignore[arg-type]
    assert _is_string_abort(info.value) and "UTF-8" in str(info.value)
    assert ledger.dump() == before
    # the checks Move makes first win over it
    with pytest.raises(ChainError) as info:
        ledger.add_service(OTHER, host, 8, NOT_UTF8, SLA)  # type: ignore[arg-type]
    assert info.value.qualified_name == "host::ENotAuthority"
    with pytest.raises(ChainError) as info:
        ledger.add_service(SERVER, host, 7, NOT_UTF8, SLA)  # type: ignore[arg-type]
    assert info.value.qualified_name == "host::EServiceExists"
    # text, as str or as its UTF-8 bytes, is the kind
    ledger.add_service(SERVER, host, 9, "café".encode(), Sla(1, 1, 1))  # type: ignore[arg-type]
    assert ledger.get_host(host).services[9].kind == "café"


def test_a_channel_that_is_not_utf8_aborts_in_std_string(ledger: LocalLedger) -> None:
    before = ledger.dump()
    with pytest.raises(ChainError) as info:
        ledger.create_broadcast(SERVER, NOT_UTF8, 10, 1000)  # type: ignore[arg-type]
    assert _is_string_abort(info.value)
    assert not isinstance(info.value, InvalidArgument)
    assert ledger.dump() == before
    with pytest.raises(ChainError) as info:
        ledger.create_broadcast(SERVER, NOT_UTF8, 0, 1000)  # type: ignore[arg-type]
    assert info.value.qualified_name == "broadcast::EInvalidSlot"
    b = ledger.create_broadcast(SERVER, "ch ✓", 10, 1000)
    assert ledger.get_broadcast(b).channel == "ch ✓"


SENDER = "0x" + "11" * 32


@pytest.mark.parametrize("field", ["module", "function"])
def test_a_name_with_a_lone_surrogate_is_invalid_argument(field: str) -> None:
    # such a name has no UTF-8 form: build_tx raised a bare UnicodeEncodeError
    ledger = LocalLedger(":memory:", clock_ms=0)
    names = {"module": "escrow", "function": "top_up", field: "top\udc80up"}
    with pytest.raises(InvalidArgument, match="not valid Unicode"):
        ledger.build_tx(SENDER, names["module"], names["function"], [])


STD = "0x" + "0" * 63 + "1"  # the Move standard library's package, as Sui writes it


PACKAGE = "0x" + "ab" * 32


def test_a_foreign_abort_names_the_full_package_id_as_sui_does(tmp_path: Path) -> None:
    signer = HostIdentity.from_private_bytes(b"\x33" * 32, b"\x33" * 32)
    ledger = LocalLedger(tmp_path / "ledger.sqlite", clock_ms=0)
    try:
        ledger.faucet(signer.sui_address, 100_000)
        with pytest.raises(ChainError) as info:
            ledger.create_ticket_sale(signer, b"\xff\xfe", 10, 1, 0, 1000)
    finally:
        ledger.close()
    error = sui_prot.ExecutionError(
        kind=sui_prot.ExecutionErrorExecutionErrorKind.MOVE_ABORT,
        abort=sui_prot.MoveAbort(
            abort_code=1, location=sui_prot.MoveLocation(package=STD, module="string")
        ),
    )
    sui = execution_error(error, [PACKAGE], "tickets::create")
    where = f"Transaction aborted in {STD}::string with code 1: "
    assert str(sui).startswith(where)
    assert str(info.value).startswith(where), str(info.value)  # was "0x1::string"
    assert (info.value.name, info.value.module, info.value.code) == ("MoveAbort", "string", 1)


@pytest.mark.parametrize(
    ("method", "argument"),
    [("create_ticket_sale", "title"), ("add_service", "kind"), ("create_broadcast", "channel")],
)
def test_the_utf8_arguments_of_the_local_ledger_say_they_take_bytes(
    method: str, argument: str
) -> None:
    annotation = inspect.signature(getattr(LocalLedger, method)).parameters[argument].annotation
    assert annotation == "str | bytes"


def test_bytes_given_for_a_kind_and_a_channel_are_taken_or_abort_in_std_string(
    tmp_path: Path,
) -> None:
    signer = HostIdentity.from_private_bytes(b"\x33" * 32, b"\x33" * 32)
    ledger = LocalLedger(tmp_path / "ledger.sqlite", clock_ms=0)
    try:
        ledger.faucet(signer.sui_address, 100_000)
        host = ledger.create_host(signer, b"\x01" * 32)
        ledger.add_service(signer, host, 7, "café".encode(), Sla(10, 5, 1000))
        assert ledger.get_host(host).services[7].kind == "café"
        for call in (
            lambda: ledger.add_service(signer, host, 8, b"\xff", Sla(10, 5, 1000)),
            lambda: ledger.create_broadcast(signer, b"\xff", 10, 1000),
        ):
            with pytest.raises(ChainError) as info:
                call()
            assert str(info.value).startswith(f"Transaction aborted in {STD}::string")
    finally:
        ledger.close()
