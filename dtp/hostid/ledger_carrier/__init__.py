"""The ledger carrier: DTP records as Pipe payloads on the ledger (``carrier``), and the
bridge that gives the I/O drivers a socket over it (``bridge``); docs/ledger-carrier.md."""
