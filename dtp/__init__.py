"""DTP for Python: TCP-like, end-to-end encrypted connections between hosts named by
Sui object IDs, with an on-chain firewall, fees in escrow, messaging and a replicated
graph store.

The package exports nothing but ``__version__`` itself (``import dtp`` stays cheap for
the ``dtp`` command); users import from the modules, as README.md shows:

- ``dtp.socket`` (blocking: ``create_server``, ``create_connection``, ``serve``) and
  ``dtp.aio`` (asyncio: ``start_server``, ``open_connection``, ``serve``): connections,
  by address or by host ID (``dtp://0x<host id>:<port>``);
- ``dtp.keys.HostIdentity``: a host's or client's Sui (Ed25519) and Noise (X25519) keys;
- ``dtp.chain.local.LocalLedger`` (embedded, SQLite) and ``dtp.chain.sui.SuiLedger``
  (a Sui node): the ledger, either opened from a ledger spec by
  ``dtp.chain.open_ledger`` (``"local"``, ``"testnet"``...); ``dtp.chain.objects`` has
  its objects (``Sla``, ...);
- ``dtp.escrow`` (``Meter``, ``Receipt``): per-byte and per-request fees;
- ``dtp.errors``: every exception the package raises;
- ``dtp.messaging`` (RPC, pub/sub, sealed messages, broadcast, discovery),
  ``dtp.graph`` (the replicated graph), ``dtp.udp`` (UDP through DTP) and
  ``dtp.daemon`` (the services daemon, ``dtp daemon``).

Docs: README.md and docs/*.md in the source tree.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
