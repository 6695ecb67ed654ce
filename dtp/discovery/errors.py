"""Errors of :mod:`dtp.discovery`, under :class:`dtp.errors.DTPError`.

- :class:`LanDiscoveryError`: LAN discovery could not do what it was asked (no
  interface to announce on, the mDNS sockets could not be opened, a registration that
  did not finish in time).
- :class:`LanRecordError`: a DNS-SD TXT record that breaks the format of
  docs/messaging.md §6.1. A browser never raises it: it leaves such a record out and
  counts it (``Browser.refused``); :func:`~dtp.discovery._records.decode_txt` raises it.
"""

from __future__ import annotations

from dtp.errors import DTPError, RemoteProtocolError

__all__ = ["LanDiscoveryError", "LanRecordError"]


class LanDiscoveryError(DTPError):
    """LAN discovery (mDNS) cannot announce or browse as asked."""


class LanRecordError(LanDiscoveryError, RemoteProtocolError):
    """A peer's TXT record is not one of ours: :attr:`reason` names the rule it broke
    (``"truncated"``, ``"version"``, ``"missing"``, ``"key"``, ``"value"``,
    ``"size"``), the message says where."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
