"""A SuiLedger whose node is a recorder (FakeNode): every call it gets and every transaction
it is asked to execute are kept, and reads answer a few fixed objects (HOST, PIPE, TERMS)
-- for the tests that bad arguments are refused before any I/O, or reach the node as
built. The ``sui`` fixture is that ledger and its node."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pysui.sui.sui_grpc.suimsgs.sui.rpc.v2 as sui_prot
import pytest

from dtp.errors import ObjectNotFound
from dtp.identity.keys import HostIdentity
from dtp.ledger.sui import MESSAGING_EVENT_LAYOUTS, SuiConfig, SuiLedger
from dtp.ledger.sui._client import NodeObject
from dtp.ledger.sui._codec import EVENT_LAYOUTS, OBJECT_LAYOUTS, encode
from dtp.ledger.sui._economics import ECONOMICS_EVENT_LAYOUTS, ECONOMICS_OBJECT_LAYOUTS
from dtp.ledger.sui._tx import OwnedRef

PACKAGE = "0x" + "d7" * 32
SIGNER = HostIdentity.from_private_bytes(bytes([0x71]) * 32, bytes([0x72]) * 32)
GAS = OwnedRef("0x" + "9a" * 32, 7, "4vJ9JU1bJJE96FWSJKvHsmmFADCg4gpZQff4P3bkLKi")
DIGEST = "11111111111111111111111111111111"
HOST = "0x" + "a1" * 32
CONN = "0x" + "a3" * 32
ESCROW = "0x" + "a4" * 32
PIPE = "0x" + "a6" * 32
TERMS = "0x" + "c1" * 32
ZERO = "0x" + "00" * 32
ALL_EVENTS = {**EVENT_LAYOUTS, **ECONOMICS_EVENT_LAYOUTS, **MESSAGING_EVENT_LAYOUTS}


def _shared(object_id: str, type_: str, layout: Any, fields: dict[str, Any]) -> NodeObject:
    return NodeObject(
        object_id, 5, DIGEST, "shared", 3, f"{PACKAGE}::{type_}", encode(layout, fields)
    )


class FakeNode:
    """Stands where SuiLedger's SuiNode is: records every call it gets (``calls``) and
    the transaction bytes it is asked to execute (``sent``)."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.sent: list[bytes] = []
        self.next_events: list[tuple[str, str, dict[str, Any]]] = []
        sla = {
            "price_per_kib": 0,
            "price_per_request": 0,
            "min_deposit": 0,
            "half_close_timeout_ms": 600_000,
        }
        self.objects = {
            HOST: _shared(
                HOST,
                "host::Host",
                OBJECT_LAYOUTS["Host"],
                {
                    "id": HOST,
                    "version": 1,
                    "authority": SIGNER.sui_address,
                    "noise_static_key": SIGNER.noise_public,
                    "endpoints": [],
                    "services": {"id": "0x" + "a7" * 32, "size": 0},
                    "firewall": {
                        "mode": 0,
                        "allow": {"id": "0x" + "a8" * 32, "size": 0},
                        "deny": {"id": "0x" + "a9" * 32, "size": 0},
                        "max_connections_per_client": 0,
                        "max_bytes_per_sec": 0,
                        "max_requests_per_sec": 0,
                    },
                },
            ),
            PIPE: NodeObject(
                PIPE,
                9,
                DIGEST,
                SIGNER.sui_address,
                None,
                f"{PACKAGE}::pipe::Pipe",
                encode(
                    OBJECT_LAYOUTS["Pipe"],
                    {
                        "id": PIPE,
                        "connection": CONN,
                        "owner": SIGNER.sui_address,
                        "inners": [{"index": 0, "next_seq": 0, "acked": 0}],
                    },
                ),
            ),
            CONN: _shared(
                CONN,
                "transport_control::TransportControl",
                OBJECT_LAYOUTS["TransportControl"],
                {
                    "id": CONN,
                    "version": 1,
                    "host": HOST,
                    "port": 7,
                    "client": SIGNER.sui_address,
                    "server": ZERO,
                    "sla": sla,
                    "escrow": ESCROW,
                    "spending_cap": ZERO,
                    "state": {"kind": "Open"},
                    "opened_at_ms": 0,
                    "settled": False,
                    "subscription": None,
                    "sponsor": None,
                },
            ),
            TERMS: _shared(
                TERMS,
                "retention::RetentionTerms",
                ECONOMICS_OBJECT_LAYOUTS["RetentionTerms"],
                {
                    "id": TERMS,
                    "version": 1,
                    "host": HOST,
                    "port": 7,
                    "retention_ms": 1000,
                    "storage_price_per_byte": 10,
                    "retired": False,
                },
            ),
        }

    def get_object(self, object_id: str, *, contents: bool = True) -> NodeObject:
        self.calls.append("get_object")
        if object_id not in self.objects:
            raise ObjectNotFound(f"no {object_id}")
        return self.objects[object_id]

    def table_entries(self, table_id: str) -> dict[str, int]:
        self.calls.append("table_entries")
        return {}

    def table_keys(self, table_id: str) -> list[str]:
        self.calls.append("table_keys")
        return []

    def table_values(self, table_id: str) -> dict[str, bytes]:
        self.calls.append("table_values")
        return {}

    def table_fields(
        self, table_id: str, key_length: int, *, values: bool = True
    ) -> dict[bytes, bytes]:
        self.calls.append("table_fields")
        return {}

    def gas_coins(self, owner: str) -> list[tuple[OwnedRef, int]]:
        self.calls.append("gas_coins")
        return [(GAS, 10**12)]

    def epoch_info(self) -> tuple[int, int]:
        self.calls.append("epoch_info")
        return 1, 1000

    def execute(self, tx_bytes: bytes, signature: bytes) -> Any:
        self.calls.append("execute")
        self.sent.append(bytes(tx_bytes))
        events = [
            sui_prot.Event(
                sender=SIGNER.sui_address,
                event_type=f"{PACKAGE}::{module}::{name}",
                contents=sui_prot.Bcs(value=encode(ALL_EVENTS[(module, name)], fields)),
            )
            for module, name, fields in self.next_events
        ]
        return sui_prot.ExecutedTransaction(
            digest="Digest111",
            effects=sui_prot.TransactionEffects(status=sui_prot.ExecutionStatus(success=True)),
            events=sui_prot.TransactionEvents(events=events),
        )

    def close(self) -> None:
        pass


@pytest.fixture
def sui() -> Iterator[tuple[SuiLedger, FakeNode]]:
    ledger = SuiLedger(SuiConfig("http://127.0.0.1:9", PACKAGE, timeout=5))
    ledger._node.close()  # never opened: no I/O happens before the first call
    node = FakeNode()
    ledger._node = node  # type: ignore[assignment]
    yield ledger, node
    ledger.close()
