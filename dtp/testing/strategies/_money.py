"""Strategies for money: SLAs, usages a deposit covers, and receipts -- valid ones and
ones with exactly one flaw, each paired with the Move error ``escrow::claim`` answers it
with (docs/escrow.md §6, its checks in order).

Receipts are made by :class:`~dtp.testing.receipts.ReceiptTerms` (what a receipt is
bound to), on :mod:`dtp.ledger.receipt`'s public API only, so they follow the wire
format as it changes.

    terms = ReceiptTerms.of(ledger, opened.connection_id, client)
    @given(receipt=valid_receipts(terms))
    def test_claims(receipt): ledger.claim(server, terms.escrow_id, receipt)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import Final

from dtp.ledger._objects import Sla
from dtp.ledger.receipt import U64_MAX, Receipt, fee
from dtp.testing.receipts import DEFAULT_PACKAGE, SCOPED_RECEIPTS, ReceiptTerms
from dtp.testing.strategies._hypothesis import st
from dtp.testing.strategies._identity import identities, object_ids

__all__ = [
    "SCOPED_RECEIPTS",
    "Flaw",
    "FlawedReceipt",
    "ReceiptTerms",
    "flawed_receipts",
    "receipt_terms",
    "slas",
    "usages",
    "valid_receipts",
]


def slas(
    *,
    max_price_per_kib: int = 10_000,
    max_price_per_request: int = 10_000,
    max_min_deposit: int = 10**9,
) -> st.SearchStrategy[Sla]:
    """Service terms: prices per KiB and per request (0 included: free bytes, free
    requests) and a minimum deposit."""
    return st.builds(
        Sla,
        st.integers(0, max_price_per_kib),
        st.integers(0, max_price_per_request),
        st.integers(0, max_min_deposit),
    )


@st.composite
def usages(draw: st.DrawFn, sla: Sla, deposit: int) -> tuple[int, int]:
    """``(total_bytes, total_requests)`` whose :func:`~dtp.ledger.receipt.fee` under
    ``sla`` is at most ``deposit`` (the edges -- nothing, exactly the deposit -- drawn
    often)."""
    requests_max = deposit // sla.price_per_request if sla.price_per_request else 1_000
    requests = draw(st.integers(0, min(requests_max, 10**6)))
    left = deposit - requests * sla.price_per_request
    bytes_max = left * 1024 // sla.price_per_kib if sla.price_per_kib else 1 << 30
    total_bytes = draw(
        st.one_of(st.just(0), st.just(bytes_max), st.integers(0, min(bytes_max, U64_MAX)))
    )
    return total_bytes, requests


def receipt_terms(
    *, sla: st.SearchStrategy[Sla] | None = None, max_deposit: int = 10**9
) -> st.SearchStrategy[ReceiptTerms]:
    """Terms of a connection no ledger holds (for checks off the ledger, such as
    :func:`dtp.payments.receipts.check_receipt` or a receipt's encoding): random IDs, a
    drawn client, an SLA and a deposit it meets, nothing claimed yet."""

    @st.composite
    def build(draw: st.DrawFn) -> ReceiptTerms:
        terms_sla = draw(sla if sla is not None else slas(max_min_deposit=max_deposit))
        deposited = draw(
            st.integers(terms_sla.min_deposit, max(terms_sla.min_deposit, max_deposit))
        )
        return ReceiptTerms(
            draw(object_ids()),
            draw(object_ids()),
            draw(identities()),
            terms_sla,
            deposited,
            package=draw(st.one_of(st.just(DEFAULT_PACKAGE), object_ids())),
        )

    return build()


@st.composite
def valid_receipts(draw: st.DrawFn, terms: ReceiptTerms) -> Receipt:
    """A receipt ``escrow::claim`` accepts under ``terms``: signed by the client, the
    next nonce or a later one, the exact fee of a usage at least the one claimed last and
    costing at most the deposit."""
    b0, r0 = _claimed_usage(terms, draw)
    extra_b, extra_r = draw(usages(terms.sla, terms.deposited - fee(terms.sla, b0, r0)))
    nonce = terms.latest_nonce + draw(st.one_of(st.just(1), st.integers(1, 1_000)))
    return terms.receipt(b0 + extra_b, r0 + extra_r, nonce=nonce)


def _claimed_usage(terms: ReceiptTerms, draw: st.DrawFn) -> tuple[int, int]:
    """A usage whose fee is what was claimed, or just above it and within the deposit
    (the one claimed, when known). Rejects the example when there is none."""
    if terms.claimed_usage is not None:
        return terms.claimed_usage
    sla, want = terms.sla, terms.claimed
    ppk, ppr = sla.price_per_kib, sla.price_per_request
    candidates = []
    if ppr:
        candidates.append((0, -(-want // ppr)))
        r = want // ppr
        if ppk:
            candidates.append((-(-(want - r * ppr) * 1024 // ppk), r))
    if ppk:
        candidates.append((-(-want * 1024 // ppk), 0))
    for usage in candidates:
        if want <= fee(sla, *usage) <= terms.deposited:
            return usage
    from hypothesis import reject

    reject()


class Flaw(enum.Enum):
    """What is wrong with a receipt. :attr:`error` is the Move error ``escrow::claim``
    gives for it: the checks run in the order of docs/escrow.md §6, so each flawed
    receipt is otherwise valid and fails on its flaw alone."""

    #: signed by someone other than the connection's client
    FORGED = "forged"
    #: a field changed after the client signed it
    TAMPERED = "tampered"
    #: one bit of the signature flipped
    BAD_SIGNATURE = "bad_signature"
    #: signed for another connection
    OTHER_CONNECTION = "other_connection"
    #: signed for another escrow of the same connection ID (scoped receipts only)
    OTHER_ESCROW = "other_escrow"
    #: signed for another deployment of the dtp package (scoped receipts only)
    OTHER_PACKAGE = "other_package"
    #: the amount is not the fee of the usage it states
    AMOUNT_MISMATCH = "amount_mismatch"
    #: the fee of its usage is beyond the deposit
    EXCEEDS_DEPOSIT = "exceeds_deposit"
    #: a nonce at or below the escrow's latest (needs a claim before)
    REPLAYED = "replayed"
    #: less than what was claimed already (needs a claim of more than 0 before)
    NOT_CUMULATIVE = "not_cumulative"

    @property
    def error(self) -> str:
        """The Move error name ``escrow::claim`` raises for this flaw."""
        return _ERRORS.get(self, "EBadSignature")


_ERRORS: Final = {
    Flaw.AMOUNT_MISMATCH: "EAmountMismatch",
    Flaw.EXCEEDS_DEPOSIT: "EReceiptExceedsDeposit",
    Flaw.REPLAYED: "EReplayedReceipt",
    Flaw.NOT_CUMULATIVE: "EReceiptNotCumulative",
}


@dataclass(frozen=True)
class FlawedReceipt:
    """A receipt with one :class:`Flaw` (``escrow::claim`` refuses it with
    ``flaw.error``)."""

    receipt: Receipt
    flaw: Flaw


def possible_flaws(terms: ReceiptTerms) -> list[Flaw]:
    """The flaws a receipt under ``terms`` can have: a replay needs an earlier claim, a
    non-cumulative receipt a claim of more than 0, an excess a price above 0, and
    another escrow or package needs receipts bound to them."""
    flaws = [Flaw.FORGED, Flaw.TAMPERED, Flaw.BAD_SIGNATURE, Flaw.OTHER_CONNECTION]
    if SCOPED_RECEIPTS:
        flaws += [Flaw.OTHER_ESCROW, Flaw.OTHER_PACKAGE]
    flaws.append(Flaw.AMOUNT_MISMATCH)
    if (terms.sla.price_per_kib or terms.sla.price_per_request) and terms.deposited < U64_MAX // 2:
        flaws.append(Flaw.EXCEEDS_DEPOSIT)
    if terms.latest_nonce >= 1:
        flaws.append(Flaw.REPLAYED)
    if terms.claimed > 0:
        flaws.append(Flaw.NOT_CUMULATIVE)
    return flaws


@st.composite
def flawed_receipts(
    draw: st.DrawFn, terms: ReceiptTerms, flaws: list[Flaw] | None = None
) -> FlawedReceipt:
    """A receipt that is valid under ``terms`` but for one flaw (of ``flaws``, by
    default every one :func:`possible_flaws` allows): ``escrow::claim`` refuses it with
    the flaw's error, and leaves the ledger as it was."""
    allowed = possible_flaws(terms)
    chosen = draw(st.sampled_from([f for f in (flaws or allowed) if f in allowed]))
    base = draw(valid_receipts(terms))
    b, r, nonce = base.total_bytes, base.total_requests, base.nonce
    if chosen is Flaw.FORGED:
        other = draw(identities().filter(lambda i: i.ed25519_public != terms.client.ed25519_public))
        receipt = terms.receipt(b, r, nonce=nonce, signer=other)
    elif chosen is Flaw.TAMPERED:
        # the usage raised after signing, the amount kept its fee: only the signature tells
        field = draw(st.sampled_from(["total_bytes", "total_requests", "nonce"]))
        receipt = replace(base, **{field: getattr(base, field) + 1})
    elif chosen is Flaw.BAD_SIGNATURE:
        bit = draw(st.integers(0, 511))
        sig = bytearray(base.signature)
        sig[bit // 8] ^= 1 << (bit % 8)
        receipt = replace(base, signature=bytes(sig))
    elif chosen is Flaw.OTHER_CONNECTION:
        other_id = draw(object_ids().filter(lambda o: o != terms.connection_id))
        receipt = replace(terms, connection_id=other_id).receipt(b, r, nonce=nonce)
    elif chosen is Flaw.OTHER_ESCROW:
        other_id = draw(object_ids().filter(lambda o: o != terms.escrow_id))
        receipt = replace(terms, escrow_id=other_id).receipt(b, r, nonce=nonce)
    elif chosen is Flaw.OTHER_PACKAGE:
        other_id = draw(object_ids().filter(lambda o: o != terms.package))
        receipt = replace(terms, package=other_id).receipt(b, r, nonce=nonce)
    elif chosen is Flaw.AMOUNT_MISMATCH:
        right = fee(terms.sla, b, r)
        wrong = draw(st.sampled_from([right + 1, right - 1] if right else [1, 2]))
        receipt = terms.receipt(b, r, wrong, nonce)
    elif chosen is Flaw.EXCEEDS_DEPOSIT:
        receipt = terms.receipt(*_beyond(terms), nonce=nonce)
    elif chosen is Flaw.REPLAYED:
        receipt = terms.receipt(b, r, nonce=draw(st.integers(1, terms.latest_nonce)))
    else:  # NOT_CUMULATIVE
        receipt = terms.receipt(*_below(terms, draw), nonce=nonce)
    return FlawedReceipt(receipt, chosen)


def _beyond(terms: ReceiptTerms) -> tuple[int, int]:
    """A usage whose fee is just beyond the deposit."""
    sla = terms.sla
    if sla.price_per_request:
        return 0, terms.deposited // sla.price_per_request + 1
    return (terms.deposited + 1) * 1024 // sla.price_per_kib + 1, 0


def _below(terms: ReceiptTerms, draw: st.DrawFn) -> tuple[int, int]:
    """A usage whose fee is below what was claimed (claimed > 0)."""
    below: tuple[int, int] = draw(usages(terms.sla, terms.claimed - 1))
    return below
