"""DTP for Python: TCP-like, end-to-end encrypted connections between hosts named by
Sui object IDs, with an on-chain firewall, fees in escrow, messaging and a replicated
graph store.

The package exports nothing but ``__version__`` itself (``import dtp`` stays cheap for
the ``dtp`` command); users import from the modules, as README.md shows:

- ``dtp.socket`` (blocking: ``create_server``, ``create_connection``, ``serve``) and
  ``dtp.aio`` (asyncio: ``start_server``, ``open_connection``, ``serve``): connections,
  by address or by host ID (``dtp://0x<host id>:<port>``);
- ``dtp.identity.keys.HostIdentity``: a host's or client's Sui (Ed25519) and Noise
  (X25519) keys;
- ``dtp.ledger.local.LocalLedger`` (embedded, SQLite) and ``dtp.ledger.sui.SuiLedger``
  (a Sui node): the ledger, either opened from a ledger spec by
  ``dtp.ledger.open_ledger`` (``"local"``, ``"testnet"``...); ``dtp.ledger.objects`` has
  its objects (``Sla``, ...);
- ``dtp.payments.receipts`` (``Meter``, ``Receipt``, ``ReceiptScope``): per-byte and
  per-request fees; ``dtp.payments`` has the rest of the money layer (metering,
  settlement, receipt store);
- ``dtp.errors``: every exception the package raises;
- ``dtp.discovery.lan`` (``announce``, ``browse``): finding DTP endpoints on the LAN
  over mDNS, with no ledger;
- ``dtp.messaging`` (RPC, pub/sub, sealed messages, broadcast, discovery on the ledger),
  ``dtp.graph`` (the replicated graph), ``dtp.hostid.udp`` (UDP through DTP) and
  ``dtp.daemon`` (the services daemon, ``dtp daemon``).

Docs: README.md and docs/*.md in the source tree; docs/architecture.md has the layers.
The module paths of earlier versions are retired (CHANGES.md has the table, old to new).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
