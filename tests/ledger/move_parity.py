"""Identities, an SLA and a string that is not UTF-8 for the tests that LocalLedger aborts
where the Move code does, and what SuiLedger raises for ``std::string``'s abort."""

from __future__ import annotations

import pysui.sui.sui_grpc.suimsgs.sui.rpc.v2 as sui_prot

from dtp.errors import ChainError
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Sla
from dtp.ledger.sui import execution_error
from tests.ledger.sui_tx_cases import PACKAGE

SLA = Sla(10, 5, 1000)
NOT_UTF8 = b"\xff\xfe"


def ident(seed: int) -> HostIdentity:
    return HostIdentity.from_private_bytes(bytes([seed]) * 32, bytes([seed]) * 32)


SERVER, CLIENT, OTHER = ident(0x33), ident(0x11), ident(0x44)


def sui_string_abort() -> ChainError:
    """What SuiLedger raises for ``std::string::EInvalidUTF8`` (code 1 of ``0x1::string``)."""
    error = sui_prot.ExecutionError(
        kind=sui_prot.ExecutionErrorExecutionErrorKind.MOVE_ABORT,
        abort=sui_prot.MoveAbort(
            abort_code=1,
            location=sui_prot.MoveLocation(package="0x" + "0" * 63 + "1", module="string"),
        ),
    )
    return execution_error(error, [PACKAGE], "tickets::create")
