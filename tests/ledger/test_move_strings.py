"""Every ``vector<u8>`` a Move function turns into a String with ``string::utf8`` aborts
in ``std::string`` on LocalLedger as on Sui when it is not UTF-8, where the Move code calls
it: ``host::add_service``'s kind (after the authority and ``EServiceExists`` checks) and
``broadcast::create``'s channel (after ``EInvalidSlot``). LocalLedger refused both before
the call as InvalidArgument; these tests failed on the old code.

LocalLedger's money rules: bad input to the transaction builder is refused with a
typed error."""

from __future__ import annotations

from pathlib import Path

import pytest

from dtp.chain.local import LocalLedger
from dtp.chain.objects import Sla
from dtp.errors import ChainError, InvalidArgument
from tests.ledger.test_payment_models_move_parity import (
    NOT_UTF8,
    OTHER,
    SERVER,
    SLA,
    _sui_string_abort,
)


@pytest.fixture
def ledger(tmp_path: Path) -> LocalLedger:
    ledger = LocalLedger(tmp_path / "ledger.sqlite", clock_ms=0)
    for who in (SERVER, OTHER):
        ledger.faucet(who.sui_address, 100_000)
    return ledger


def _is_string_abort(error: ChainError) -> bool:
    sui = _sui_string_abort()
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
