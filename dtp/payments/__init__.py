"""The money layer, sans-I/O (docs/escrow.md): receipts and the client's meter
(:mod:`~dtp.payments.receipts`), the client's metering of a connection
(:mod:`~dtp.payments.metering`), the server's receipt gate (:mod:`~dtp.payments._gate`),
rate limits (:mod:`~dtp.payments._ratelimit`), the
durable receipt store and its writer (:mod:`~dtp.payments.receipt_store`,
:mod:`~dtp.payments._receipt_writer`), settlement (:mod:`~dtp.payments._settlement`) and a
paid server's receipts: its store's lifecycle, its settlements and their retries
(:mod:`~dtp.payments._serving`).

It imports the ledger and the layers below it, never the protocol or the transport
(docs/architecture.md, "Layout").
"""
