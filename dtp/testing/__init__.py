"""Tools for testing applications built on DTP (docs/testing.md).

Nothing here is imported by the rest of the package; each part is a module of its own,
so that importing one costs only what it needs:

- :mod:`dtp.testing.strategies` -- hypothesis strategies for what applications handle:
  identities, host IDs and ``dtp://`` addresses, SLAs, receipts (valid and subtly
  invalid), frames and records (well-formed and hostile), graph values, states and
  update streams, ledger operation sequences.
- :mod:`dtp.testing.network` -- a deterministic in-memory network: hosts on links with
  loss, duplication, reordering, delay, bandwidth and partitions, on a virtual clock and
  a seed, so that a failing run replays exactly (the asyncio API runs on it unchanged;
  blocking code runs on its real-time relay).
- :mod:`dtp.testing.machines` -- ``hypothesis.stateful`` machines to extend: the escrow
  rules (money conserved, no claim beyond a signed receipt, refunds after timeouts) and
  graph replicas that converge under any partition schedule.
- :mod:`dtp.testing.sui_node` -- the Sui node stand-in (``python -m dtp.testing.sui_node``).
- :mod:`dtp.testing.identities`, :mod:`dtp.testing.receipts`,
  :mod:`dtp.testing.ledger_world` -- numbered identities and their funding, receipts made
  for a connection, a small economy on a ledger with the escrow rules' checks.
- :mod:`dtp.testing.pairs`, :mod:`dtp.testing.services`, :mod:`dtp.testing.daemons` --
  connected client/server pairs (both APIs), a paid service, a pair of ``dtp daemon``
  processes; :mod:`dtp.testing._loops`, an event loop in a thread of its own.
- :mod:`dtp.testing.plugin` -- the pytest plugin (registered under ``pytest11``): the
  fixtures ``dtp_*`` and the ``--dtp-seed`` option.

The strategies and the machines need hypothesis, the plugin pytest (the ``testing``
extra: ``pip install 'dtp-sui[testing]'``), the node stand-in pysui (the ``sui`` extra); the
rest needs nothing beyond dtp itself. Without its extra a module raises
:class:`~dtp.errors.MissingExtra` naming it.
"""

from __future__ import annotations

__all__ = [
    "daemons",
    "identities",
    "ledger_world",
    "loops",
    "machines",
    "network",
    "pairs",
    "plugin",
    "receipts",
    "services",
    "strategies",
    "sui_node",
]
