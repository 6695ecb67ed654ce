"""The client's metered payment as the transport's drivers see it: a
:class:`~dtp.transport._hooks.ConnectionHook` that a connection by host ID with a deposit
carries (``engine.hook`` / ``protocol.hook``). The rules are
:class:`dtp.payments._settlement.ClientPayment`'s; this names them as the hook does, and
holds the timings a paid connection needs of its driver (docs/architecture.md, one
deposit's path)."""

from __future__ import annotations

from dtp.payments._settlement import ClientPayment

__all__ = ["METERED_MAX_WAIT", "PAID_CLOSE_WAIT", "MeteredClient"]

# seconds a paid client's close waits for the server's end of the carrier, which closes
# once the server settled on the ledger: about what a ledger transaction takes, the one
# the client would otherwise send itself (its half-close) and pay the gas of. (A server
# that only admits closes its end as soon as it read the CLOSE: Reservations.ends_carriers)
PAID_CLOSE_WAIT = 3.0

# A metered client is looked at more often than a plain one (the timer's MAX_WAIT): a
# server about to close asks it for a final receipt and waits
# ServicePolicy.final_receipt_timeout (1 s) for one, and a client whose application did
# not read meanwhile answered at its next pass -- a second later, after the server had
# settled without it (the usage since the last receipt unpaid). A pass on an idle
# connection is one non-blocking read.
METERED_MAX_WAIT = 0.25


class MeteredClient(ClientPayment):
    """:class:`ClientPayment` as a :class:`~dtp.transport._hooks.ConnectionHook`: the
    hook's methods call its own (looked up at each call, so that a patched
    ``finish`` is the one called), but for :meth:`on_output`, which is :meth:`tick`
    itself (no call is added on a send path)."""

    max_timer_wait = METERED_MAX_WAIT
    close_wait = PAID_CLOSE_WAIT
    # a paid server settles only after a clean CLOSE: a linger that ran out does not
    # turn it into an error
    keeps_clean_close = True

    on_output = ClientPayment.tick

    def on_receipt_frame(self, data: bytes) -> None:
        """The server's RECEIPT frame: it asks for a receipt now."""
        self.on_server_receipt(data)

    def before_close(self) -> None:
        """The final receipt, ahead of CLOSE."""
        self.closing()

    def after_close(self) -> None:
        """The half-close on the ledger, unless the server settled already."""
        self.finish()
