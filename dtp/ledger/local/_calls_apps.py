"""LocalLedger's calls of the applications, as mixins: broadcasts and tickets, messaging
(mailbox, response escrow, retention), and the payment models."""

from __future__ import annotations

from dtp.errors import ObjectNotFound, move_error
from dtp.identity.keys import HostIdentity
from dtp.ledger._economics import EconomicsObject, economics_object_from_fields
from dtp.ledger._objects import OpenedConnection, as_bytes, check_fields, check_signer, normalize_id
from dtp.ledger.interface import ResponseEscrow
from dtp.ledger.local import rules
from dtp.ledger.local._call_arguments import u64
from dtp.ledger.local._store import LocalStore
from dtp.ledger.local._stored import SHAPE_ERRORS, SqlStore


class BroadcastCalls(LocalStore):
    """Broadcasts and their ticket sales (``dtp::broadcast``, ``dtp::tickets``)."""

    # -- broadcast -------------------------------------------------------------------------------

    def create_broadcast(
        self, signer: HostIdentity, channel: str | bytes, slot_price: int, slot_ms: int
    ) -> str:
        result = self._call(
            signer,
            "broadcast",
            "create",
            as_bytes(channel, "channel"),
            u64(slot_price, "slot_price"),
            u64(slot_ms, "slot_ms"),
        )
        return str(result.value)

    def create_ticketed_broadcast(
        self,
        signer: HostIdentity,
        sale_id: str,
        channel: str | bytes,
        slot_price: int,
        slot_ms: int,
    ) -> str:
        result = self._call(
            signer,
            "broadcast",
            "create_ticketed",
            self._id(sale_id),
            as_bytes(channel, "channel"),
            u64(slot_price, "slot_price"),
            u64(slot_ms, "slot_ms"),
        )
        return str(result.value)

    def broadcast_contribute(self, signer: HostIdentity, broadcast_id: str, amount: int) -> None:
        self._call(
            signer,
            "broadcast",
            "contribute",
            self._id(broadcast_id),
            u64(amount, "the contribution"),
        )

    def broadcast_transmit(self, signer: HostIdentity, broadcast_id: str, data: bytes) -> int:
        result = self._call(
            signer, "broadcast", "transmit", self._id(broadcast_id), as_bytes(data, "data")
        )
        return int(result.value)

    def broadcast_claim(self, signer: HostIdentity, broadcast_id: str) -> int:
        return int(self._call(signer, "broadcast", "claim", self._id(broadcast_id)).value)

    def broadcast_cancel(self, signer: HostIdentity, broadcast_id: str) -> None:
        self._call(signer, "broadcast", "cancel", self._id(broadcast_id))

    def broadcast_withdraw(self, signer: HostIdentity, broadcast_id: str) -> int:
        return int(self._call(signer, "broadcast", "withdraw", self._id(broadcast_id)).value)

    def broadcast_leave(self, signer: HostIdentity, broadcast_id: str) -> int:
        return int(self._call(signer, "broadcast", "leave", self._id(broadcast_id)).value)

    def broadcast_heartbeat(self, signer: HostIdentity, broadcast_id: str) -> None:
        self._call(signer, "broadcast", "heartbeat", self._id(broadcast_id))

    def create_ticket_sale(
        self,
        signer: HostIdentity,
        title: str | bytes,
        ticket_price: int,
        min_tickets: int,
        max_tickets: int,
        deadline_ms: int,
    ) -> str:
        result = self._call(
            signer,
            "tickets",
            "create",
            as_bytes(title, "title"),
            u64(ticket_price, "ticket_price"),
            u64(min_tickets, "min_tickets"),
            u64(max_tickets, "max_tickets"),
            u64(deadline_ms, "deadline_ms"),
        )
        return str(result.value)

    def buy_tickets(self, signer: HostIdentity, sale_id: str, count: int) -> None:
        sale = self.get_ticket_sale(sale_id)
        payment = u64(u64(count, "count") * sale.ticket_price, "the payment")
        self._call(signer, "tickets", "buy", self._id(sale_id), count, payment)

    def go_on_air(self, signer: HostIdentity, sale_id: str) -> int:
        return int(self._call(signer, "tickets", "go_on_air", self._id(sale_id)).value)

    def cancel_ticket_sale(self, signer: HostIdentity, sale_id: str) -> None:
        self._call(signer, "tickets", "cancel", self._id(sale_id))

    def refund_tickets(self, signer: HostIdentity, sale_id: str) -> int:
        return int(self._call(signer, "tickets", "refund", self._id(sale_id)).value)


class MessagingCalls(LocalStore):
    """Sealed messages, prepaid responses and retained records (``dtp::mailbox``,
    ``dtp::response_escrow``, ``dtp::retention``)."""

    # -- mailbox and response escrow ------------------------------------------------------------

    def mailbox_send(self, signer: HostIdentity, host_id: str, payload: bytes) -> None:
        self._call(signer, "mailbox", "send", self._id(host_id), as_bytes(payload, "payload"))

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
        key = signer.ed25519_public if requester_public_key is None else requester_public_key
        result = self._call(
            signer,
            "response_escrow",
            "deposit",
            self._id(server, "address"),
            as_bytes(request_id, "request_id"),
            as_bytes(key, "requester_public_key"),
            u64(deadline_ms, "the deadline"),
            u64(amount, "the response fee"),
        )
        return str(result.value)

    def response_escrow_claim(
        self, signer: HostIdentity, escrow_id: str, response_hash: bytes, signature: bytes
    ) -> int:
        result = self._call(
            signer,
            "response_escrow",
            "claim",
            self._id(escrow_id),
            as_bytes(response_hash, "response_hash"),
            as_bytes(signature, "signature"),
        )
        return int(result.value)

    def response_escrow_deliver(self, signer: HostIdentity, escrow_id: str, response: bytes) -> int:
        result = self._call(
            signer,
            "response_escrow",
            "deliver",
            self._id(escrow_id),
            as_bytes(response, "response"),
        )
        return int(result.value)

    def response_escrow_refund(self, signer: HostIdentity, escrow_id: str) -> int:
        return int(self._call(signer, "response_escrow", "refund", self._id(escrow_id)).value)

    def get_response_escrow(self, escrow_id: str) -> ResponseEscrow:
        object_id = normalize_id(escrow_id)

        def read() -> ResponseEscrow:
            row = SqlStore(self._db).load(object_id)
            if row is None or row[0] != rules.OBJECT_TYPES["ResponseEscrow"]:
                raise ObjectNotFound(f"No ResponseEscrow with ID {object_id} exists.")
            _type, _owner, version, d = row
            try:
                escrow = ResponseEscrow.from_fields(object_id, version, d)
                # from_fields copies the fields as stored: their types are checked here
                check_fields(escrow)
                return escrow
            except SHAPE_ERRORS as exc:
                raise rules.wrong_shape(f"object {object_id}", exc) from exc

        return self._read_one(read)

    def create_retention_terms(
        self,
        signer: HostIdentity,
        host_id: str,
        port: int,
        retention_ms: int,
        storage_price_per_byte: int,
    ) -> str:
        result = self._call(
            signer,
            "retention",
            "create_terms",
            self._id(host_id),
            self._port(port),
            u64(retention_ms, "retention_ms"),
            u64(storage_price_per_byte, "storage_price_per_byte"),
        )
        return str(result.value)

    def retire_retention_terms(self, signer: HostIdentity, terms_id: str) -> None:
        terms = self.get_retention_terms(terms_id)
        self._call(signer, "retention", "retire_terms", self._id(terms_id), self._id(terms.host))

    def replace_retention_terms(
        self,
        signer: HostIdentity,
        terms_id: str,
        retention_ms: int,
        storage_price_per_byte: int,
    ) -> str:
        terms = self.get_retention_terms(terms_id)
        result = self._call(
            signer,
            "retention",
            "replace_terms",
            self._id(terms_id),
            self._id(terms.host),
            u64(retention_ms, "retention_ms"),
            u64(storage_price_per_byte, "storage_price_per_byte"),
        )
        return str(result.value)

    def send_retained(
        self, signer: HostIdentity, pipe_id: str, terms_id: str, inner: int, data: bytes
    ) -> str:
        payload = as_bytes(data, "data")  # before len(): the deposit is for what is sent
        pipe = self.get_pipe(pipe_id)
        terms = self.get_retention_terms(terms_id)
        deposit = u64(terms.deposit_for(len(payload)), "the storage deposit")
        result = self._call(
            signer,
            "retention",
            "send",
            self._id(pipe_id),
            self._id(pipe.connection),
            self._id(terms_id),
            u64(inner, "inner"),
            payload,
            deposit,
        )
        return str(result.value)

    def confirm_consumed(self, signer: HostIdentity, record_id: str) -> None:
        self._call(signer, "retention", "confirm", self._id(record_id))

    def delete_retained(self, signer: HostIdentity, record_id: str) -> int:
        return int(self._call(signer, "retention", "delete", self._id(record_id)).value)


class PaymentModelCalls(LocalStore):
    """Payments, subscriptions and sponsor pools (``dtp::payment``, ``dtp::subscription``,
    ``dtp::sponsor``; docs/escrow.md §13-16)."""

    # -- payment ---------------------------------------------------------------------------------

    def pay(self, signer: HostIdentity, recipient: str, amount: int, memo: bytes = b"") -> None:
        self._call(
            signer,
            "payment",
            "pay",
            u64(amount, "the amount"),
            self._id(recipient, "recipient address"),
            as_bytes(memo, "memo"),
        )

    # -- payment models (docs/escrow.md §13-16) -----------------------------------------------

    def _model(self, object_id: str, struct: str) -> EconomicsObject:
        object_id = normalize_id(object_id)

        def read() -> EconomicsObject:
            row = SqlStore(self._db).load(object_id)
            if row is None or row[0] != rules.OBJECT_TYPES[struct]:
                raise ObjectNotFound(f"No {struct} with ID {object_id} exists.")
            _type, _owner, version, data = row
            try:
                model = economics_object_from_fields(struct, object_id, version, data)
                # it copies the fields as stored: their types are checked here
                check_fields(model)
                return model
            except SHAPE_ERRORS as exc:
                # the struct is one it builds (the type matched): the data is at fault
                raise rules.wrong_shape(f"object {object_id}", exc) from exc

        return self._read_one(read)

    def create_subscription_offer(
        self,
        signer: HostIdentity,
        host_id: str,
        port: int,
        price_per_epoch: int,
        period_epochs: int = 1,
    ) -> str:
        result = self._call(
            signer,
            "subscription",
            "create_offer",
            self._id(host_id),
            self._port(port),
            u64(price_per_epoch, "price_per_epoch"),
            u64(period_epochs, "period_epochs"),
        )
        return str(result.value)

    def subscribe(self, signer: HostIdentity, offer_id: str, epochs: int) -> str:
        offer = self.get_subscription_offer(offer_id)
        payment = u64(u64(epochs, "epochs") * offer.price_per_epoch, "the payment")
        result = self._call(
            signer, "subscription", "subscribe", self._id(offer_id), epochs, payment
        )
        return str(result.value)

    def renew_subscription(self, signer: HostIdentity, subscription_id: str, epochs: int) -> int:
        sub = self.get_subscription(subscription_id)
        payment = u64(u64(epochs, "epochs") * sub.price_per_epoch, "the payment")
        result = self._call(
            signer,
            "subscription",
            "renew",
            self._id(subscription_id),
            self._id(sub.offer),
            epochs,
            payment,
        )
        return int(result.value)

    def claim_subscription(self, signer: HostIdentity, subscription_id: str) -> int:
        sub = self.get_subscription(subscription_id)
        result = self._call(
            signer, "subscription", "claim", self._id(subscription_id), self._id(sub.offer)
        )
        return int(result.value)

    def withdraw_subscription_offer(self, signer: HostIdentity, offer_id: str) -> None:
        self._call(signer, "subscription", "withdraw_offer", self._id(offer_id))

    def refund_subscription(self, signer: HostIdentity, subscription_id: str) -> int:
        sub = self.get_subscription(subscription_id)
        result = self._call(
            signer, "subscription", "refund", self._id(subscription_id), self._id(sub.offer)
        )
        return int(result.value)

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
        sub = self.get_subscription(subscription_id)
        host = host_id if host_id is not None else self.get_subscription_offer(sub.offer).host
        key = (
            signer.ed25519_public
            if client_public_key is None
            else as_bytes(client_public_key, "client_public_key")
        )
        result = self._call(
            signer,
            "subscription",
            "open_connection",
            self._id(subscription_id),
            self._id(sub.offer),
            self._id(host),
            self._id(cap_id),
            key,
            u64(deposit, "the deposit"),
        )
        return self._opened(result)

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
            raise move_error(
                "subscription",
                "ENotSubscribed",
                f"connection {tc.id} was not opened with a subscription",
            )
        sub = self.get_subscription(subscription_id)
        result = self._call(
            signer,
            "subscription",
            "end_connection",
            self._id(subscription_id),
            self._id(sub.offer),
            self._id(tc.id),
            self._id(escrow_id or tc.escrow),
            self._id(cap_id or tc.spending_cap),
        )
        return int(result.value)

    def create_sponsor_pool(
        self, signer: HostIdentity, host_id: str, port: int, share_bps: int, *, max_pledge: int
    ) -> str:
        result = self._call(
            signer,
            "sponsor",
            "create",
            self._id(host_id),
            self._port(port),
            u64(share_bps, "share_bps"),
            u64(max_pledge, "max_pledge"),
        )
        return str(result.value)

    def set_sponsor_max_pledge(self, signer: HostIdentity, pool_id: str, max_pledge: int) -> None:
        self._call(
            signer, "sponsor", "set_max_pledge", self._id(pool_id), u64(max_pledge, "max_pledge")
        )

    def fund_sponsor_pool(self, signer: HostIdentity, pool_id: str, amount: int) -> None:
        self._call(signer, "sponsor", "fund", self._id(pool_id), u64(amount, "the amount"))

    def withdraw_sponsor_pool(self, signer: HostIdentity, pool_id: str, amount: int) -> None:
        self._call(signer, "sponsor", "withdraw", self._id(pool_id), u64(amount, "the amount"))

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
        host = host_id if host_id is not None else self.get_sponsor_pool(pool_id).host
        key = (
            signer.ed25519_public
            if client_public_key is None
            else as_bytes(client_public_key, "client_public_key")
        )
        result = self._call(
            signer,
            "sponsor",
            "open_connection",
            self._id(pool_id),
            self._id(host),
            self._id(cap_id),
            key,
            u64(deposit, "the deposit"),
        )
        return self._opened(result)

    def reimburse(
        self,
        signer: HostIdentity,
        pool_id: str,
        connection_id: str,
        escrow_id: str | None = None,
    ) -> int:
        escrow = escrow_id if escrow_id is not None else self.get_connection(connection_id).escrow
        result = self._call(
            signer,
            "sponsor",
            "reimburse",
            self._id(pool_id),
            self._id(connection_id),
            self._id(escrow),
        )
        return int(result.value)
