"""SuiLedger's calls of the applications, as mixins: broadcasts and tickets, messaging
(payments, mailbox, response escrow, retention), and the payment models."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from dtp.errors import ObjectNotFound, move_error
from dtp.ledger._economics import Subscription
from dtp.ledger._objects import (
    OpenedConnection,
    check_signer,
    check_transfer_amount,
    normalize_id,
)
from dtp.ledger.interface import ResponseEscrow
from dtp.ledger.sui import _tx as sui_tx
from dtp.ledger.sui._client import NodeObject
from dtp.ledger.sui._codec import RESPONSE_ESCROW_LAYOUT, decode
from dtp.ledger.sui._effects import TxOutcome, short_type
from dtp.ledger.sui._tx import SharedRef, TxContext

if TYPE_CHECKING:
    from dtp.identity.keys import HostIdentity
from dtp.ledger.sui._ledger import SuiLedgerCore, signer_key


class BroadcastCalls(SuiLedgerCore):
    """Broadcasts and their ticket sales (``dtp::broadcast``, ``dtp::tickets``)."""

    # -- broadcast -------------------------------------------------------------------------

    def create_broadcast(
        self, signer: HostIdentity, channel: str | bytes, slot_price: int, slot_ms: int
    ) -> str:
        check_signer(signer)
        sui_tx.as_bytes(channel, "channel")
        self._amount(slot_price, "slot_price")
        self._amount(slot_ms, "slot_ms")
        out = self._execute(
            signer,
            "broadcast::create",
            lambda ctx: sui_tx.create_broadcast(ctx, channel, slot_price, slot_ms),
        )
        return out.created_of("Broadcast") or str(out.event("BroadcastCreated")["broadcast"])

    def _broadcast_call(
        self,
        signer: HostIdentity,
        broadcast_id: str,
        function: str,
        build: Callable[[TxContext, SharedRef], bytes],
        spend: int = 0,
    ) -> TxOutcome:
        b = self._shared(broadcast_id, "Broadcast")
        return self._execute(signer, f"broadcast::{function}", lambda ctx: build(ctx, b), spend)

    def broadcast_contribute(self, signer: HostIdentity, broadcast_id: str, amount: int) -> None:
        check_signer(signer)
        self._amount(amount, "the contribution")
        self._broadcast_call(
            signer,
            broadcast_id,
            "contribute",
            lambda ctx, b: sui_tx.broadcast_contribute(ctx, b, amount),
            spend=amount,
        )

    def broadcast_transmit(self, signer: HostIdentity, broadcast_id: str, data: bytes) -> int:
        check_signer(signer)
        payload = sui_tx.as_bytes(data, "data")
        out = self._broadcast_call(
            signer,
            broadcast_id,
            "transmit",
            lambda ctx, b: sui_tx.broadcast_transmit(ctx, b, payload),
        )
        return int(out.event("BroadcastTransmitted")["seq"])

    def broadcast_claim(self, signer: HostIdentity, broadcast_id: str) -> int:
        check_signer(signer)
        out = self._broadcast_call(signer, broadcast_id, "claim", sui_tx.broadcast_claim)
        return int(out.event("BroadcastClaimed")["amount"])

    def broadcast_cancel(self, signer: HostIdentity, broadcast_id: str) -> None:
        check_signer(signer)
        self._broadcast_call(signer, broadcast_id, "cancel", sui_tx.broadcast_cancel)

    def broadcast_withdraw(self, signer: HostIdentity, broadcast_id: str) -> int:
        check_signer(signer)
        out = self._broadcast_call(signer, broadcast_id, "withdraw", sui_tx.broadcast_withdraw)
        return int(out.event("ContributionRefunded")["amount"])

    def broadcast_leave(self, signer: HostIdentity, broadcast_id: str) -> int:
        check_signer(signer)
        out = self._broadcast_call(signer, broadcast_id, "leave", sui_tx.broadcast_leave)
        return int(out.event("ContributionRefunded")["amount"])

    def broadcast_heartbeat(self, signer: HostIdentity, broadcast_id: str) -> None:
        check_signer(signer)
        self._broadcast_call(signer, broadcast_id, "heartbeat", sui_tx.broadcast_heartbeat)

    def create_ticket_sale(
        self,
        signer: HostIdentity,
        title: str | bytes,
        ticket_price: int,
        min_tickets: int,
        max_tickets: int,
        deadline_ms: int,
    ) -> str:
        check_signer(signer)
        sui_tx.as_bytes(title, "title")
        for value, what in (
            (ticket_price, "ticket_price"),
            (min_tickets, "min_tickets"),
            (max_tickets, "max_tickets"),
            (deadline_ms, "deadline_ms"),
        ):
            self._amount(value, what)
        out = self._execute(
            signer,
            "tickets::create",
            lambda ctx: sui_tx.create_ticket_sale(
                ctx, title, ticket_price, min_tickets, max_tickets, deadline_ms
            ),
        )
        return str(out.event("TicketSaleCreated")["sale"])

    def create_ticketed_broadcast(
        self,
        signer: HostIdentity,
        sale_id: str,
        channel: str | bytes,
        slot_price: int,
        slot_ms: int,
    ) -> str:
        check_signer(signer)
        sui_tx.as_bytes(channel, "channel")
        self._amount(slot_price, "slot_price")
        self._amount(slot_ms, "slot_ms")
        sale = self._model_ref(sale_id, "TicketSale")
        out = self._execute(
            signer,
            "broadcast::create_ticketed",
            lambda ctx: sui_tx.create_ticketed_broadcast(ctx, sale, channel, slot_price, slot_ms),
        )
        return out.created_of("Broadcast") or str(out.event("BroadcastCreated")["broadcast"])

    def buy_tickets(self, signer: HostIdentity, sale_id: str, count: int) -> None:
        check_signer(signer)
        self._amount(count, "count")
        sale = self.get_ticket_sale(sale_id)
        ref = self._model_ref(sale_id, "TicketSale")
        payment = self._amount(count * sale.ticket_price, "the payment")
        self._execute(
            signer,
            "tickets::buy",
            lambda ctx: sui_tx.buy_tickets(ctx, ref, count, payment),
            spend=payment,
        )

    def _sale_call(
        self, signer: HostIdentity, sale_id: str, fn: str, build: Callable[..., bytes]
    ) -> TxOutcome:
        ref = self._model_ref(sale_id, "TicketSale")
        return self._execute(signer, f"tickets::{fn}", lambda ctx: build(ctx, ref))

    def go_on_air(self, signer: HostIdentity, sale_id: str) -> int:
        check_signer(signer)
        out = self._sale_call(signer, sale_id, "go_on_air", sui_tx.go_on_air)
        return int(out.event("TicketedEventOnAir")["revenue"])

    def cancel_ticket_sale(self, signer: HostIdentity, sale_id: str) -> None:
        check_signer(signer)
        self._sale_call(signer, sale_id, "cancel", sui_tx.cancel_ticket_sale)

    def refund_tickets(self, signer: HostIdentity, sale_id: str) -> int:
        check_signer(signer)
        out = self._sale_call(signer, sale_id, "refund", sui_tx.refund_tickets)
        return int(out.event("TicketsRefunded")["amount"])


class MessagingCalls(SuiLedgerCore):
    """Payments, sealed messages, prepaid responses and retained records (``dtp::payment``,
    ``dtp::mailbox``, ``dtp::response_escrow``, ``dtp::retention``)."""

    # -- mailbox and response escrow --------------------------------------------------------

    def _response_escrow_object(self, escrow_id: str) -> NodeObject:
        obj = self._node.get_object(normalize_id(escrow_id))
        if short_type(obj.type, self._packages) != "dtp::response_escrow::ResponseEscrow":
            raise ObjectNotFound(f"Object {obj.object_id} is a {obj.type}, not a ResponseEscrow.")
        return obj

    def _response_escrow_ref(self, escrow_id: str) -> SharedRef:
        return self._shared_ref(
            escrow_id, "ResponseEscrow", lambda: self._response_escrow_object(escrow_id)
        )

    def pay(self, signer: HostIdentity, recipient: str, amount: int, memo: bytes = b"") -> None:
        check_signer(signer)
        self._amount(amount, "the amount")
        to = normalize_id(recipient, "recipient address")
        raw = sui_tx.as_bytes(memo, "memo")
        self._execute(signer, "payment::pay", lambda ctx: sui_tx.pay(ctx, to, amount, raw), amount)

    def transfer(self, signer: HostIdentity, recipient: str, amount: int) -> None:
        check_signer(signer)
        to = normalize_id(recipient, "recipient address")
        check_transfer_amount(amount)
        # (the pool leases coins covering the budget and the amount, or raises
        # InsufficientFunds saying what the address holds: nothing is sent then)
        self._execute(signer, "transfer", lambda ctx: sui_tx.transfer_sui(ctx, to, amount), amount)

    def mailbox_send(self, signer: HostIdentity, host_id: str, payload: bytes) -> None:
        check_signer(signer)
        raw = sui_tx.as_bytes(payload, "payload")
        host = self._shared(host_id, "Host")
        self._execute(signer, "mailbox::send", lambda ctx: sui_tx.mailbox_send(ctx, host, raw))

    def response_escrow_deposit(
        self,
        signer: HostIdentity,
        server: str,
        request_id: bytes,
        amount: int,
        deadline_ms: int,
        requester_public_key: bytes | None = None,
    ) -> str:
        check_signer(signer)
        # in LocalLedger's order and words (sui_tx names the server "server")
        normalize_id(server, "address")
        request = sui_tx.as_bytes(request_id, "request_id")
        key = signer_key(signer, requester_public_key, "requester_public_key")
        self._amount(deadline_ms, "the deadline")
        self._amount(amount, "the response fee")
        out = self._execute(
            signer,
            "response_escrow::deposit",
            lambda ctx: sui_tx.response_escrow_deposit(
                ctx, server, request, key, deadline_ms, amount
            ),
            spend=amount,
        )
        return str(out.event("ResponseFeeDeposited")["escrow"])

    def response_escrow_claim(
        self, signer: HostIdentity, escrow_id: str, response_hash: bytes, signature: bytes
    ) -> int:
        check_signer(signer)
        digest = sui_tx.as_bytes(response_hash, "response_hash")
        sig = sui_tx.as_bytes(signature, "signature")
        e = self._response_escrow_ref(escrow_id)
        out = self._execute(
            signer,
            "response_escrow::claim",
            lambda ctx: sui_tx.response_escrow_claim(ctx, e, digest, sig),
        )
        return int(out.event("ResponseFeeClaimed")["amount"])

    def response_escrow_deliver(self, signer: HostIdentity, escrow_id: str, response: bytes) -> int:
        check_signer(signer)
        raw = sui_tx.as_bytes(response, "response")
        e = self._response_escrow_ref(escrow_id)
        out = self._execute(
            signer,
            "response_escrow::deliver",
            lambda ctx: sui_tx.response_escrow_deliver(ctx, e, raw),
        )
        return int(out.event("ResponseDelivered")["amount"])

    def response_escrow_refund(self, signer: HostIdentity, escrow_id: str) -> int:
        check_signer(signer)
        e = self._response_escrow_ref(escrow_id)
        out = self._execute(
            signer, "response_escrow::refund", lambda ctx: sui_tx.response_escrow_refund(ctx, e)
        )
        return int(out.event("ResponseFeeRefunded")["amount"])

    def get_response_escrow(self, escrow_id: str) -> ResponseEscrow:
        obj = self._response_escrow_object(escrow_id)
        d = decode(RESPONSE_ESCROW_LAYOUT, obj.contents)
        return ResponseEscrow.from_fields(obj.object_id, obj.version, d)

    def create_retention_terms(
        self,
        signer: HostIdentity,
        host_id: str,
        port: int,
        retention_ms: int,
        storage_price_per_byte: int,
    ) -> str:
        check_signer(signer)
        self._check_port(port)
        self._amount(retention_ms, "retention_ms")
        self._amount(storage_price_per_byte, "storage_price_per_byte")
        host = self._shared(host_id, "Host")
        out = self._execute(
            signer,
            "retention::create_terms",
            lambda ctx: sui_tx.create_retention_terms(
                ctx, host, port, retention_ms, storage_price_per_byte
            ),
        )
        return str(out.event("RetentionTermsCreated")["terms"])

    def retire_retention_terms(self, signer: HostIdentity, terms_id: str) -> None:
        check_signer(signer)
        terms = self.get_retention_terms(terms_id)
        ref = self._model_ref(terms_id, "RetentionTerms")
        host = self._shared(terms.host, "Host")
        self._execute(
            signer,
            "retention::retire_terms",
            lambda ctx: sui_tx.retire_retention_terms(ctx, ref, host),
        )

    def replace_retention_terms(
        self,
        signer: HostIdentity,
        terms_id: str,
        retention_ms: int,
        storage_price_per_byte: int,
    ) -> str:
        check_signer(signer)
        self._amount(retention_ms, "retention_ms")
        self._amount(storage_price_per_byte, "storage_price_per_byte")
        terms = self.get_retention_terms(terms_id)
        ref = self._model_ref(terms_id, "RetentionTerms")
        host = self._shared(terms.host, "Host")
        out = self._execute(
            signer,
            "retention::replace_terms",
            lambda ctx: sui_tx.replace_retention_terms(
                ctx, ref, host, retention_ms, storage_price_per_byte
            ),
        )
        return str(out.event("RetentionTermsCreated")["terms"])

    def send_retained(
        self, signer: HostIdentity, pipe_id: str, terms_id: str, inner: int, data: bytes
    ) -> str:
        check_signer(signer)
        # before len(): the deposit is for the bytes sent (len() of an array('I') counts
        # items, and retention::send aborts EWrongDeposit unless deposit == bytes * price)
        payload = sui_tx.as_bytes(data, "data")
        self._amount(inner, "inner")
        pipe = self.get_pipe(pipe_id)
        pipe_ref = self._owned(signer, pipe_id, "Pipe")
        tc = self._shared(pipe.connection, "TransportControl")
        terms = self.get_retention_terms(terms_id)
        terms_ref = self._model_ref(terms_id, "RetentionTerms")
        deposit = self._amount(terms.deposit_for(len(payload)), "the storage deposit")
        first = [pipe_ref]

        def build(ctx: TxContext) -> bytes:
            # sent again after a congestion cancellation, the pipe is at a new version (a
            # cancelled transaction still bumps its owned inputs): read it again
            ref = first.pop() if first else self._owned(signer, pipe_id, "Pipe")
            return sui_tx.send_retained(ctx, ref, tc, terms_ref, inner, payload, deposit)

        out = self._execute(signer, "retention::send", build, spend=deposit)
        return str(out.event("RecordRetained")["record"])

    def confirm_consumed(self, signer: HostIdentity, record_id: str) -> None:
        check_signer(signer)
        ref = self._model_ref(record_id, "RetainedRecord")
        self._execute(signer, "retention::confirm", lambda ctx: sui_tx.confirm_consumed(ctx, ref))

    def delete_retained(self, signer: HostIdentity, record_id: str) -> int:
        check_signer(signer)
        ref = self._model_ref(record_id, "RetainedRecord")
        out = self._execute(
            signer, "retention::delete", lambda ctx: sui_tx.delete_retained(ctx, ref)
        )
        return int(out.event("RecordDeleted")["refunded"])


class PaymentModelCalls(SuiLedgerCore):
    """Subscriptions and sponsor pools (``dtp::subscription``, ``dtp::sponsor``;
    docs/escrow.md §13-16)."""

    # -- payment models (docs/escrow.md §13-16) ---------------------------------------------

    def create_subscription_offer(
        self,
        signer: HostIdentity,
        host_id: str,
        port: int,
        price_per_epoch: int,
        period_epochs: int = 1,
    ) -> str:
        check_signer(signer)
        self._check_port(port)
        self._amount(price_per_epoch, "price_per_epoch")
        self._amount(period_epochs, "period_epochs")
        host = self._shared(host_id, "Host")
        out = self._execute(
            signer,
            "subscription::create_offer",
            lambda ctx: sui_tx.create_subscription_offer(
                ctx, host, port, price_per_epoch, period_epochs
            ),
        )
        return str(out.event("SubscriptionOfferCreated")["offer"])

    def subscribe(self, signer: HostIdentity, offer_id: str, epochs: int) -> str:
        check_signer(signer)
        self._amount(epochs, "epochs")
        offer = self.get_subscription_offer(offer_id)
        ref = self._model_ref(offer_id, "SubscriptionOffer")
        payment = self._amount(epochs * offer.price_per_epoch, "the payment")
        out = self._execute(
            signer,
            "subscription::subscribe",
            lambda ctx: sui_tx.subscribe(ctx, ref, epochs, payment),
            spend=payment,
        )
        return str(out.event("Subscribed")["subscription"])

    def _sub_refs(self, subscription_id: str) -> tuple[Subscription, SharedRef, SharedRef]:
        sub = self.get_subscription(subscription_id)
        return (
            sub,
            self._model_ref(subscription_id, "Subscription"),
            self._model_ref(sub.offer, "SubscriptionOffer"),
        )

    def renew_subscription(self, signer: HostIdentity, subscription_id: str, epochs: int) -> int:
        check_signer(signer)
        self._amount(epochs, "epochs")
        sub, ref, offer = self._sub_refs(subscription_id)
        payment = self._amount(epochs * sub.price_per_epoch, "the payment")
        out = self._execute(
            signer,
            "subscription::renew",
            lambda ctx: sui_tx.renew_subscription(ctx, ref, offer, epochs, payment),
            spend=payment,
        )
        return int(out.event("SubscriptionRenewed")["expires_epoch"])

    def claim_subscription(self, signer: HostIdentity, subscription_id: str) -> int:
        check_signer(signer)
        _, ref, offer = self._sub_refs(subscription_id)
        out = self._execute(
            signer,
            "subscription::claim",
            lambda ctx: sui_tx.claim_subscription(ctx, ref, offer),
        )
        return int(out.event("SubscriptionClaimed")["amount"])

    def withdraw_subscription_offer(self, signer: HostIdentity, offer_id: str) -> None:
        check_signer(signer)
        ref = self._model_ref(offer_id, "SubscriptionOffer")
        self._execute(
            signer,
            "subscription::withdraw_offer",
            lambda ctx: sui_tx.withdraw_subscription_offer(ctx, ref),
        )

    def refund_subscription(self, signer: HostIdentity, subscription_id: str) -> int:
        check_signer(signer)
        _, ref, offer = self._sub_refs(subscription_id)
        out = self._execute(
            signer,
            "subscription::refund",
            lambda ctx: sui_tx.refund_subscription(ctx, ref, offer),
        )
        return int(out.event("SubscriptionRefunded")["amount"])

    def open_subscribed_connection(
        self,
        signer: HostIdentity,
        subscription_id: str,
        cap_id: str,
        deposit: int = 0,
        client_public_key: bytes | None = None,
        host_id: str | None = None,
    ) -> OpenedConnection:
        check_signer(signer)
        self._amount(deposit, "the deposit")
        key = signer_key(signer, client_public_key, "client_public_key")
        sub, ref, offer = self._sub_refs(subscription_id)
        if host_id is None:
            host_id = self.get_subscription_offer(sub.offer).host
        host = self._shared(host_id, "Host")
        cap = self._shared(cap_id, "SpendingCap")
        out = self._execute(
            signer,
            "subscription::open_connection",
            lambda ctx: sui_tx.open_subscribed_connection(ctx, ref, offer, host, cap, deposit, key),
            spend=deposit,
        )
        return self._opened(out)

    def end_subscribed_connection(
        self,
        signer: HostIdentity,
        connection_id: str,
        subscription_id: str | None = None,
        escrow_id: str | None = None,
        cap_id: str | None = None,
    ) -> int:
        check_signer(signer)
        tc = self.get_connection(connection_id)
        subscription_id = subscription_id or tc.subscription
        if subscription_id is None:
            # (Move would need a subscription to be given: refused here, as LocalLedger does)
            raise move_error(
                "subscription",
                "ENotSubscribed",
                f"connection {tc.id} was not opened with a subscription",
            )
        _, ref, offer = self._sub_refs(subscription_id)
        tc_ref = self._shared(tc.id, "TransportControl")
        escrow = self._shared(escrow_id or tc.escrow, "Escrow")
        cap = self._shared(cap_id or tc.spending_cap, "SpendingCap")
        out = self._execute(
            signer,
            "subscription::end_connection",
            lambda ctx: sui_tx.end_subscribed_connection(ctx, ref, offer, tc_ref, escrow, cap),
        )
        return int(out.event("SubscribedConnectionEnded")["refunded"])

    def create_sponsor_pool(
        self, signer: HostIdentity, host_id: str, port: int, share_bps: int, *, max_pledge: int
    ) -> str:
        check_signer(signer)
        self._check_port(port)
        self._amount(share_bps, "share_bps")
        self._amount(max_pledge, "max_pledge")
        host = self._shared(host_id, "Host")
        out = self._execute(
            signer,
            "sponsor::create",
            lambda ctx: sui_tx.create_sponsor_pool(ctx, host, port, share_bps, max_pledge),
        )
        return str(out.event("SponsorPoolCreated")["pool"])

    def set_sponsor_max_pledge(self, signer: HostIdentity, pool_id: str, max_pledge: int) -> None:
        check_signer(signer)
        self._amount(max_pledge, "max_pledge")
        ref = self._model_ref(pool_id, "SponsorPool")
        self._execute(
            signer,
            "sponsor::set_max_pledge",
            lambda ctx: sui_tx.set_sponsor_max_pledge(ctx, ref, max_pledge),
        )

    def fund_sponsor_pool(self, signer: HostIdentity, pool_id: str, amount: int) -> None:
        check_signer(signer)
        self._amount(amount, "the amount")
        ref = self._model_ref(pool_id, "SponsorPool")
        self._execute(
            signer,
            "sponsor::fund",
            lambda ctx: sui_tx.fund_sponsor_pool(ctx, ref, amount),
            spend=amount,
        )

    def withdraw_sponsor_pool(self, signer: HostIdentity, pool_id: str, amount: int) -> None:
        check_signer(signer)
        self._amount(amount, "the amount")
        ref = self._model_ref(pool_id, "SponsorPool")
        self._execute(
            signer,
            "sponsor::withdraw",
            lambda ctx: sui_tx.withdraw_sponsor_pool(ctx, ref, amount),
        )

    def open_sponsored_connection(
        self,
        signer: HostIdentity,
        pool_id: str,
        cap_id: str,
        deposit: int,
        client_public_key: bytes | None = None,
        host_id: str | None = None,
    ) -> OpenedConnection:
        check_signer(signer)
        self._amount(deposit, "the deposit")
        key = signer_key(signer, client_public_key, "client_public_key")
        ref = self._model_ref(pool_id, "SponsorPool")
        host = self._shared(host_id or self.get_sponsor_pool(pool_id).host, "Host")
        cap = self._shared(cap_id, "SpendingCap")
        out = self._execute(
            signer,
            "sponsor::open_connection",
            lambda ctx: sui_tx.open_sponsored_connection(ctx, ref, host, cap, deposit, key),
            spend=deposit,
        )
        return self._opened(out)

    def reimburse(
        self,
        signer: HostIdentity,
        pool_id: str,
        connection_id: str,
        escrow_id: str | None = None,
    ) -> int:
        check_signer(signer)
        ref = self._model_ref(pool_id, "SponsorPool")
        tc = self.get_connection(connection_id)
        tc_ref = self._shared(tc.id, "TransportControl")
        escrow = self._shared(escrow_id or tc.escrow, "Escrow")
        out = self._execute(
            signer,
            "sponsor::reimburse",
            lambda ctx: sui_tx.reimburse(ctx, ref, tc_ref, escrow),
        )
        return int(out.event("SponsorReimbursed")["amount"])
