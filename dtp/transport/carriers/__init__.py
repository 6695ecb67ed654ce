"""Carriers move DTP records between hosts: ``tcp`` (direct) and ``memory`` (tests and
simulations, with loss, duplication and reordering); the ledger carrier, for hosts that
hide their IP address, is :mod:`dtp.hostid.ledger_carrier`."""
