"""The built-in ledgers' state-changing calls of :class:`~dtp.ledger.interface.Ledger`.
Each is stated once, with its declaration (:class:`~dtp.ledger.interface.Ledger`,
:class:`~dtp.ledger._economics.PaymentModels`, :class:`~dtp.ledger._coordination.Coordination`,
:class:`~dtp.ledger._deletion.Deletions`): it checks its arguments (the signer, then each
argument as the method takes it, then what it reads) and comes to one
:class:`~dtp.ledger._move_call.MoveCall`, which LocalLedger runs on its rows and SuiLedger
sends as a transaction (``_move``). :class:`LedgerCalls` makes them the built-in ledgers'."""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from dtp.ledger._coordination import Coordination
from dtp.ledger._deletion import Deletions
from dtp.ledger._economics import PaymentModels
from dtp.ledger._move_call import MoveCall
from dtp.ledger.interface import Ledger, PendingOpen

if TYPE_CHECKING:
    from dtp.identity.keys import HostIdentity

__all__ = ["LedgerCalls"]

_F = TypeVar("_F", bound=Callable[..., Any])


def _made(method: _F) -> _F:
    """A call stated with its declaration, made a built-in ledger's own method: the same
    code, documentation and signature, but not marked abstract, and not the default a
    ledger without it inherits (which callers tell by identity: dtp.payments._refunder
    leaves a connection undeleted on a ledger whose destroy_connection is Deletions')."""
    fn = cast(types.FunctionType, method)
    made = types.FunctionType(
        fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__
    )
    made.__kwdefaults__ = fn.__kwdefaults__
    made.__annotations__ = fn.__annotations__
    made.__doc__ = fn.__doc__
    made.__qualname__ = fn.__qualname__
    made.__module__ = fn.__module__
    return cast(_F, made)


class LedgerCalls(Ledger):
    """The calls of :class:`~dtp.ledger.interface.Ledger` made through ``_move``, which
    each built-in ledger gives."""

    def prepare_open_connection(
        self,
        signer: HostIdentity,
        host_id: str,
        port: int,
        cap_id: str,
        deposit: int,
        client_public_key: bytes | None = None,
    ) -> PendingOpen | None:
        call = self._client_open(signer, (host_id, port, cap_id), deposit, client_public_key)
        return self._prepared(signer, call)

    def _prepared(self, signer: HostIdentity, call: MoveCall) -> PendingOpen | None:
        """The open ``call`` signed now, to execute later, with the IDs it creates; None
        where the ledger cannot tell them ahead (SuiLedger: its gas coins are leased when
        the transaction is sent)."""
        return None

    # -- the calls, each stated once with its declaration ---------------------------------
    # Named here, ahead of Ledger in the built-in ledgers' order, as their own methods (a
    # ledger's own transaction methods are those of the classes before Ledger: each
    # checks its signer before any I/O, tests/ledger/test_sui_arguments.py).

    create_host = _made(Ledger.create_host)
    set_authority = _made(Ledger.set_authority)
    set_noise_static_key = _made(Ledger.set_noise_static_key)
    set_endpoints = _made(Ledger.set_endpoints)
    set_firewall_mode = _made(Ledger.set_firewall_mode)
    allow = _made(Ledger.allow)
    disallow = _made(Ledger.disallow)
    deny = _made(Ledger.deny)
    undeny = _made(Ledger.undeny)
    set_client_limits = _made(Ledger.set_client_limits)
    add_service = _made(Ledger.add_service)
    update_service = _made(Ledger.update_service)
    remove_service = _made(Ledger.remove_service)
    create_spending_cap = _made(Ledger.create_spending_cap)
    set_max_per_epoch = _made(Ledger.set_max_per_epoch)
    open_connection = _made(Ledger.open_connection)
    open_session_connection = _made(Ledger.open_session_connection)
    top_up = _made(Ledger.top_up)
    claim = _made(Ledger.claim)
    close_connection = _made(Ledger.close_connection)
    finalize = _made(Ledger.finalize)
    settle = _made(Ledger.settle)
    settle_with_receipt = _made(Ledger.settle_with_receipt)
    create_pipe = _made(Ledger.create_pipe)
    pipe_send = _made(Ledger.pipe_send)
    pipe_sync = _made(Ledger.pipe_sync)
    destroy_pipe = _made(Ledger.destroy_pipe)
    create_broadcast = _made(Ledger.create_broadcast)
    broadcast_contribute = _made(Ledger.broadcast_contribute)
    broadcast_transmit = _made(Ledger.broadcast_transmit)
    broadcast_claim = _made(Ledger.broadcast_claim)
    broadcast_cancel = _made(Ledger.broadcast_cancel)
    broadcast_withdraw = _made(Ledger.broadcast_withdraw)
    broadcast_leave = _made(Ledger.broadcast_leave)
    broadcast_heartbeat = _made(Ledger.broadcast_heartbeat)

    pay = _made(Ledger.pay)
    mailbox_send = _made(Ledger.mailbox_send)
    response_escrow_deposit = _made(Ledger.response_escrow_deposit)
    response_escrow_claim = _made(Ledger.response_escrow_claim)
    response_escrow_deliver = _made(Ledger.response_escrow_deliver)
    response_escrow_refund = _made(Ledger.response_escrow_refund)

    create_subscription_offer = _made(PaymentModels.create_subscription_offer)
    subscribe = _made(PaymentModels.subscribe)
    renew_subscription = _made(PaymentModels.renew_subscription)
    claim_subscription = _made(PaymentModels.claim_subscription)
    withdraw_subscription_offer = _made(PaymentModels.withdraw_subscription_offer)
    refund_subscription = _made(PaymentModels.refund_subscription)
    open_subscribed_connection = _made(PaymentModels.open_subscribed_connection)
    end_subscribed_connection = _made(PaymentModels.end_subscribed_connection)
    create_sponsor_pool = _made(PaymentModels.create_sponsor_pool)
    set_sponsor_max_pledge = _made(PaymentModels.set_sponsor_max_pledge)
    create_ticketed_broadcast = _made(PaymentModels.create_ticketed_broadcast)
    create_ticket_sale = _made(PaymentModels.create_ticket_sale)
    buy_tickets = _made(PaymentModels.buy_tickets)
    go_on_air = _made(PaymentModels.go_on_air)
    cancel_ticket_sale = _made(PaymentModels.cancel_ticket_sale)
    refund_tickets = _made(PaymentModels.refund_tickets)
    create_retention_terms = _made(PaymentModels.create_retention_terms)
    retire_retention_terms = _made(PaymentModels.retire_retention_terms)
    replace_retention_terms = _made(PaymentModels.replace_retention_terms)
    send_retained = _made(PaymentModels.send_retained)
    confirm_consumed = _made(PaymentModels.confirm_consumed)
    delete_retained = _made(PaymentModels.delete_retained)

    create_registry = _made(Coordination.create_registry)
    registry_admit = _made(Coordination.registry_admit)
    registry_revoke = _made(Coordination.registry_revoke)
    acquire_lease = _made(Coordination.acquire_lease)
    renew_lease = _made(Coordination.renew_lease)
    release_lease = _made(Coordination.release_lease)
    registry_put = _made(Coordination.registry_put)
    registry_remove = _made(Coordination.registry_remove)

    destroy_connection = _made(Deletions.destroy_connection)
    destroy_response_escrow = _made(Deletions.destroy_response_escrow)
    leave_ticket_sale = _made(Deletions.leave_ticket_sale)
    destroy_ticket_sale = _made(Deletions.destroy_ticket_sale)
