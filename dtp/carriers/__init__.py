"""Carriers move DTP records between hosts: ``tcp`` (direct), ``ledger`` (records as
Pipe payloads on the ledger, for hosts that hide their IP address) and ``memory``
(tests and simulations, with loss, duplication and reordering)."""
