"""The blocking transport: DTP connections driven by the calling thread, as :mod:`ssl`
sockets are (``engine``: one connection over its carrier; ``socket``: its streams;
``timers``: keepalives and idle timeouts; ``connect`` and ``server``: the two ends).
The public face
is :mod:`dtp.socket`; this package holds what its modules share."""

from __future__ import annotations

from collections.abc import Callable

from dtp.transport._hooks import PeerInfo

LINGER = 5.0  # seconds close() waits for queued data to leave

AcceptHook = Callable[[str], "bool | str | None"]
"""Server accept hook: gets the client's verified Sui address; return True/None to
accept, False or a reason string to refuse."""

AdmitHook = Callable[[PeerInfo], "bool | str | None"]
"""Server admission hook: gets a :class:`~dtp.hostid._admission.PeerInfo` (verified address,
the ledger connection ID and port the client named); same verdicts as AcceptHook."""
