"""Three changes on the money and trust paths: datagrams metered on paid
connections (a datagram the allowance can never cover must close the connection after
the pause timeout, whatever other threads do meanwhile), and the memo of this
process's own transaction signatures (it must never vouch for a signature that does
not verify). Real handshakes by host ID on 127.0.0.1, real LocalLedger files."""

from __future__ import annotations

import contextlib
import functools
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import dtp.socket
from dtp.errors import DTPError, PaymentRequired, WrongSigner
from dtp.hostid.paid import PaidSocket, ServicePolicy
from dtp.identity import keys
from dtp.identity.keys import HostIdentity, InvalidSignature, verify_transaction
from dtp.ledger._objects import Sla
from dtp.ledger.local import LocalLedger
from tests.support.paid_twins import hosted_ledgers, ident

SLA = Sla(price_per_kib=10, price_per_request=5, min_deposit=5000)
PORT = 7
SERVER = ident(0xB1)
CLIENT = ident(0xB2)
WAIT = 30.0  # bound on anything the test waits for (a hang would be unbounded)
# 100 MIST on credit: about 9.5 KiB, so a 15,000-byte datagram (147 MIST) never fits
STINGY = ServicePolicy(allowance=100, pause_timeout=1.0)
TOO_BIG = 15_000


# -- datagrams: a wait for credit that can never come ends --------------------------------


def test_a_datagram_no_credit_covers_closes_while_another_thread_reads(tmp_path: Path) -> None:
    """A handler sends a datagram larger than any credit the allowance gives while
    another of its threads reads the stream the (paying) client writes to. The send
    must end with PaymentRequired after the pause timeout. (It waited for as long as the
    client wrote: each read found the usage without the datagram served, and that reset
    the gate's pause clock, which the datagram's wait relied on to ever close.)"""
    outcome: queue.Queue[BaseException | None] = queue.Queue()

    def handler(sock: PaidSocket) -> None:
        def push() -> None:
            try:
                sock.send_datagram(bytes(TOO_BIG))
            except DTPError as exc:
                outcome.put(exc)
                return
            outcome.put(None)

        pusher = threading.Thread(target=push, daemon=True)
        pusher.start()
        with contextlib.suppress(DTPError):
            while sock.recv(4096):
                pass
        pusher.join(WAIT)

    with hosted_ledgers(tmp_path, SERVER, CLIENT, PORT, SLA) as (ledger, server_ledger, host):
        served = dtp.socket.serve(
            host,
            PORT,
            handler,
            ledger=server_ledger,
            identity=SERVER,
            receipts=tmp_path / "receipts.db",
            policy=STINGY,
        )
        connect = functools.partial(
            dtp.socket.create_connection,
            f"dtp://{host}:{PORT}",
            timeout=WAIT,
            ledger=ledger,
            identity=CLIENT,
            deposit=200_000,
        )
        with served, connect() as sock:
            deadline = time.monotonic() + WAIT
            ended: DTPError | None = None
            while time.monotonic() < deadline:
                try:
                    sock.sendall(b"x" * 10)  # read by the handler, paid for by receipts
                except DTPError as exc:
                    ended = exc
                    break
                time.sleep(0.02)
            try:
                error = outcome.get(timeout=5.0)
            except queue.Empty:
                pytest.fail(f"the datagram's send still waited after {WAIT} s")
    assert isinstance(error, PaymentRequired)
    assert ended is not None


# -- the memo of own transaction signatures -----------------------------------------------


class _BadSigner(HostIdentity):
    """An identity whose Sui signatures carry a flipped bit (as a test of a ledger's
    refusal might make one): they never verify."""

    def _sui_sign(self, digest: bytes) -> bytes:
        signature = bytearray(super()._sui_sign(digest))
        signature[1] ^= 1
        return bytes(signature)


def _bad_signer() -> HostIdentity:
    return _BadSigner.from_private_bytes(bytes([0xB3]) * 32, bytes([0xB4]) * 32)


def test_the_memo_does_not_vouch_for_a_subclass_signature_that_does_not_verify() -> None:
    """A HostIdentity subclass that signs differently: its signature is checked, not
    taken from the memo as one known to verify (it was: the memo trusted anything
    sign_transaction returned, whatever ``_sui_sign`` made)."""
    tx = b"\x05" * 48
    signature = _bad_signer().sign_transaction(tx)
    with pytest.raises(InvalidSignature):
        verify_transaction(tx, signature)


def test_a_local_ledger_refuses_a_bad_subclass_signature(tmp_path: Path) -> None:
    """The same through a LocalLedger call: its transaction, badly signed, is refused
    as WrongSigner and changes nothing (it ran, as if signed)."""
    bad = _bad_signer()
    ledger = LocalLedger(tmp_path / "ledger.db")
    try:
        with pytest.raises(WrongSigner):
            ledger.create_host(bad, bad.noise_public)
    finally:
        ledger.close()


def test_a_plain_identity_still_skips_its_own_check() -> None:
    """The memo still serves HostIdentity itself (the speed-up stays)."""
    tx = b"\x06" * 48
    signature = SERVER.sign_transaction(tx)
    assert (keys.transaction_digest(tx), signature) in keys._OWN_TX_SIGNATURES
    assert verify_transaction(tx, signature) == SERVER.sui_address


@pytest.fixture(autouse=True)
def _empty_memo() -> Iterator[None]:
    yield
    keys._OWN_TX_SIGNATURES.clear()
