"""Ready ``hypothesis.stateful`` machines to extend (docs/testing.md):
:class:`EscrowMachine` (the escrow rules: money conserved, no claim beyond a signed
receipt, refunds after timeouts) and :class:`GraphMachine` (graph replicas that
converge under any partition schedule). Subclass one, add rules of your own, and run
its ``TestCase``. Needs hypothesis (``pip install 'dtp-sui[testing]'``)."""

from __future__ import annotations

from dtp._extras import missing

try:  # first: without the testing extra, one error naming it
    import hypothesis  # noqa: F401
except ImportError as exc:
    raise missing("testing", "dtp.testing.machines", exc) from None

from dtp.testing.machines._escrow import EscrowMachine
from dtp.testing.machines._graph import GraphMachine

__all__ = ["EscrowMachine", "GraphMachine"]
