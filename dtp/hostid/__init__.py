"""Host-ID access: dtp:// addresses, ledger admission, paid connections and UDP flows by host ID (docs/architecture.md)."""
