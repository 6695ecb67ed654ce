"""Two costs cut from every ledger call and every paid admission, and what they must not
cost in safety: LocalLedger no longer verifies again a transaction signature a
HostIdentity of this process just made (dtp.identity.keys' own-signature memo), and a paid
server waiting for a client's open watches LocalLedger's change marker instead of
reading the connection again and again."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dtp.errors import WrongSigner
from dtp.hostid._admission import while_opening
from dtp.identity import _ed25519 as _ed25519
from dtp.identity import keys
from dtp.identity.keys import HostIdentity, InvalidSignature, verify_transaction
from dtp.ledger.local import LocalLedger


def ident(seed: int) -> HostIdentity:
    return HostIdentity.from_private_bytes(bytes([seed]) * 32, bytes([seed]) * 32)


ALICE, MALLORY = ident(0x41), ident(0x4D)


@pytest.fixture
def verifications(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The public keys Ed25519 verification was asked to check, in order."""
    seen: list[bytes] = []
    real = _ed25519.verify

    def counting(public: bytes, signature: bytes, message: bytes) -> bool:
        seen.append(bytes(public))
        return real(public, signature, message)

    monkeypatch.setattr(_ed25519, "verify", counting)
    return seen


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[LocalLedger]:
    handle = LocalLedger(tmp_path / "ledger.db")
    yield handle
    handle.close()


# -- own signatures ------------------------------------------------------------------------


def test_an_own_signature_is_taken_once_without_verifying(verifications: list[bytes]) -> None:
    tx = b"\x01" * 40
    signature = ALICE.sign_transaction(tx)
    assert verify_transaction(tx, signature) == ALICE.sui_address
    assert verifications == []
    # taken: the same pair again is verified for real (and still good)
    assert verify_transaction(tx, signature) == ALICE.sui_address
    assert verifications == [ALICE.ed25519_public]


def test_the_memo_never_passes_what_was_not_signed_here(verifications: list[bytes]) -> None:
    tx = b"\x02" * 40
    signature = ALICE.sign_transaction(tx)
    # the same signature over other bytes, and a changed bit: both verified, both refused
    with pytest.raises(InvalidSignature):
        verify_transaction(b"\x03" * 40, signature)
    flipped = bytearray(signature)
    flipped[7] ^= 1
    with pytest.raises(InvalidSignature):
        verify_transaction(tx, bytes(flipped))
    assert len(verifications) == 2
    # another key's signature over the same bytes names its own signer, verified
    other = MALLORY.sign_transaction(tx)
    keys._OWN_TX_SIGNATURES.clear()
    assert verify_transaction(tx, other) == MALLORY.sui_address
    assert len(verifications) == 3
    # what is not bytes is still refused as before, memo or not
    with pytest.raises(TypeError):
        verify_transaction(tx, 97)  # type: ignore[arg-type]


def test_the_memo_is_bounded() -> None:
    for i in range(keys._OWN_TX_SIGNATURES_MAX + 100):
        ALICE.sign_transaction(i.to_bytes(8, "little"))
    assert len(keys._OWN_TX_SIGNATURES) <= keys._OWN_TX_SIGNATURES_MAX
    # the newest is still there, and verifies without a check
    newest = (keys._OWN_TX_SIGNATURES_MAX + 99).to_bytes(8, "little")
    assert verify_transaction(newest, ALICE.sign_transaction(newest)) == ALICE.sui_address


def test_local_ledger_calls_skip_verifying_their_own_signature(
    ledger: LocalLedger, verifications: list[bytes]
) -> None:
    keys._OWN_TX_SIGNATURES.clear()
    cap = ledger.create_spending_cap(ALICE, 5)
    assert ledger.get_cap(cap).max_per_epoch == 5
    assert verifications == []
    assert not keys._OWN_TX_SIGNATURES  # each call took its own entry
    # raw bytes signed elsewhere (here: a signature the memo no longer holds) are checked
    tx = ledger.build_tx(ALICE.sui_address, "spending_cap", "create", [7])
    signature = ALICE.sign_transaction(tx)
    keys._OWN_TX_SIGNATURES.clear()
    ledger.execute(tx, signature)
    assert verifications == [ALICE.ed25519_public]


def test_local_ledger_calls_with_a_plain_identity_sign_nothing(
    ledger: LocalLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call with a HostIdentity in hand runs as its address without a signature made
    only to be found in the memo; the transaction is still recorded as the sender's, and
    its nonce still executes once."""
    signed: list[bytes] = []
    real = HostIdentity.sign_transaction

    def counting(self: HostIdentity, tx_bytes: bytes) -> bytes:
        signed.append(tx_bytes)
        return real(self, tx_bytes)

    monkeypatch.setattr(HostIdentity, "sign_transaction", counting)
    cap = ledger.create_spending_cap(ALICE, 5)
    assert ledger.get_cap(cap).owner == ALICE.sui_address
    assert signed == []
    # raw bytes still need a signature, checked against the sender
    tx = ledger.build_tx(ALICE.sui_address, "spending_cap", "create", [7])
    with pytest.raises(WrongSigner):
        ledger.execute(tx, MALLORY.sign_transaction(tx))
    ledger.execute(tx, ALICE.sign_transaction(tx))
    assert len(signed) == 2


def test_concurrent_signers_all_verify(ledger: LocalLedger) -> None:
    errors: list[BaseException] = []

    def sign_many(identity: HostIdentity) -> None:
        try:
            for _ in range(20):
                ledger.create_spending_cap(identity, 1)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=sign_many, args=(ident(0x50 + i),)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert ledger.audit()["minted"] == 0


# -- the change marker ---------------------------------------------------------------------


def test_change_marker_moves_with_every_commit_from_any_handle(
    ledger: LocalLedger, tmp_path: Path
) -> None:
    first = ledger.change_marker()
    assert ledger.change_marker() == first  # reading changes nothing
    ledger.get_cap(ledger.create_spending_cap(ALICE, 1))
    second = ledger.change_marker()
    assert second != first  # this handle's own commit
    ledger.epoch()
    assert ledger.change_marker() == second
    other = LocalLedger(tmp_path / "ledger.db")
    try:
        other.create_spending_cap(MALLORY, 1)
    finally:
        other.close()
    assert ledger.change_marker() != second  # another connection's commit


def watched(changed: Callable[[], object]) -> tuple[Callable[[], object], list[int]]:
    calls = [0]

    def counting() -> object:
        calls[0] += 1
        return changed()

    return counting, calls


def test_while_opening_reads_again_once_the_ledger_changed(
    ledger: LocalLedger, tmp_path: Path
) -> None:
    landed = threading.Event()
    reads = [0]

    def read() -> str | None:
        reads[0] += 1
        return "found" if landed.is_set() else None

    def land() -> None:
        time.sleep(0.3)
        landed.set()
        writer = LocalLedger(tmp_path / "ledger.db")
        try:
            writer.create_spending_cap(ALICE, 1)
        finally:
            writer.close()

    changed, looks = watched(ledger.change_marker)
    thread = threading.Thread(target=land)
    thread.start()
    started = time.monotonic()
    try:
        assert while_opening(read, 60.0, changed) == "found"
    finally:
        thread.join(60)
    assert time.monotonic() - started < 30
    # the marker was watched far more often than the connection was read
    assert looks[0] > reads[0] >= 2


def test_while_opening_still_reads_now_and_then_with_no_change(ledger: LocalLedger) -> None:
    """A landing the marker cannot see (here: none at all on the ledger) is found by the
    reads it still makes at least every _MAX_LOOK_S."""
    landed = threading.Event()
    timer = threading.Timer(0.2, landed.set)
    timer.start()
    try:
        found = while_opening(
            lambda: "found" if landed.is_set() else None, 60.0, ledger.change_marker
        )
    finally:
        timer.cancel()
    assert found == "found"


def test_while_opening_gives_up_after_the_grace(ledger: LocalLedger) -> None:
    started = time.monotonic()
    assert while_opening(lambda: None, 0.2, ledger.change_marker) is None
    assert 0.2 <= time.monotonic() - started < 30
