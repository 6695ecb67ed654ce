"""Paid connections by host ID on asyncio: what ``dtp.paid_aio`` held, re-exported from
:mod:`dtp.hostid.paid.asyncio_streams` and :mod:`dtp.hostid.paid.asyncio_server`."""

from dtp.hostid.paid.asyncio_server import PaidAioServer, serve
from dtp.hostid.paid.asyncio_streams import PaidCallback, PaidReader, PaidWriter

__all__ = ["PaidAioServer", "PaidCallback", "PaidReader", "PaidWriter", "serve"]
