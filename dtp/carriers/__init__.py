"""Carriers move DTP records between hosts: ``tcp`` (direct), ``memory`` (tests and
simulations, with loss/duplication/reordering), and later ``ledger`` (through the
ledger, for hosts that hide their IP address)."""
