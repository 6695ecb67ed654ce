"""Benchmark rows for the control plane: receipt verification and LocalLedger cycles.

Registered in bench/workloads.py; each returns a :class:`bench.workloads.Workload`.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.workload import Workload
from dtp.identity import _ed25519 as ed25519
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Sla
from dtp.ledger.local import LocalLedger
from dtp.payments.receipts import Receipt, ReceiptScope, check_receipt

__all__ = ["ledger_open_close", "receipt_verify"]

_BATCH = 200
_SLA = Sla(10, 5, 1000)


def receipt_verify() -> Workload:
    """Receipts a server checks per second: decode the in-band bytes, check nonce and fee,
    verify the Ed25519 signature; peer: `cryptography` Ed25519 verify of 100-byte messages."""
    client = HostIdentity.generate()
    scope = ReceiptScope(*("0x" + os.urandom(32).hex() for _ in range(3)))
    encoded = [
        Receipt(scope, 1024 * i, i, 10 * i + 5 * i, i).sign(client).encode()
        for i in range(1, _BATCH + 1)
    ]
    key = client.ed25519_public

    def ours() -> object:
        # every pass verifies for real: the batch repeats, and the verifier remembers the
        # signatures it verified (a server's memo for the same receipt checked twice)
        ed25519._verified.clear()
        for raw in encoded:
            check_receipt(
                Receipt.decode(raw),
                scope=scope,
                sla=_SLA,
                public_key=key,
                deposited=10**12,
            )
        return None

    private = Ed25519PrivateKey.generate()
    public = private.public_key()
    messages = [os.urandom(100) for _ in range(_BATCH)]
    signed = [(private.sign(m), m) for m in messages]

    def peer() -> object:
        for signature, message in signed:
            public.verify(signature, message)
        return None

    return Workload(
        "receipt_verify",
        "receipts/s",
        _BATCH,
        ours,
        peer,
        bar=0.7,
        note="decode + fee/nonce checks + Ed25519 verify vs cryptography Ed25519 verify alone",
    )


def _cycle_ledger(ledger: LocalLedger) -> tuple[LocalLedger, object]:
    server, client = HostIdentity.generate(), HostIdentity.generate()
    host = ledger.create_host(server, b"\x01" * 32)
    ledger.add_service(server, host, 7, "raw", _SLA)
    cap = ledger.create_spending_cap(client, 10**12)
    ledger.faucet(client.sui_address, 10**15)

    def cycle() -> object:
        opened = ledger.open_connection(client, host, 7, cap, 1000)
        ledger.close_connection(client, opened.connection_id)
        ledger.close_connection(server, opened.connection_id)
        return None

    return ledger, cycle


def ledger_open_close() -> Workload:
    """LocalLedger open + close (both sides) per second on a WAL file; peer: `:memory:`."""
    directory = tempfile.mkdtemp(prefix="dtp-bench-ledger-")
    on_file, ours = _cycle_ledger(LocalLedger(os.path.join(directory, "bench.sqlite")))
    in_memory, peer = _cycle_ledger(LocalLedger(":memory:"))

    def close() -> None:
        on_file.close()
        in_memory.close()
        shutil.rmtree(directory, ignore_errors=True)

    return Workload(
        "ledger_open_close",
        "cycles/s",
        1,
        ours,
        peer,
        bar=None,
        note="report only: LocalLedger open+close+close on a WAL file vs the same on :memory:",
        close=close,
    )
