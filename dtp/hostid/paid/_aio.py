"""Paid connections by host ID on asyncio, re-exported from :mod:`dtp.hostid.paid._asyncio`
and :mod:`dtp.hostid.paid._asyncio_server`."""

from dtp.hostid.paid._asyncio import PaidCallback, PaidReader, PaidWriter
from dtp.hostid.paid._asyncio_server import PaidAioServer, serve

__all__ = ["PaidAioServer", "PaidCallback", "PaidReader", "PaidWriter", "serve"]
