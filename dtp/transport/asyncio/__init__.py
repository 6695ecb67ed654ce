"""The asyncio transport: DTP connections to a carrier address, and the asyncio server,
as stream pairs (:class:`DTPStreamReader`, :class:`DTPStreamWriter`). Users import
:mod:`dtp.aio`, the face that also connects by host ID (:mod:`dtp.hostid._asyncio`)."""

from dtp.transport.asyncio._connect import open_connection
from dtp.transport.asyncio._server import DTPServer
from dtp.transport.asyncio._streams import DTPStreamReader, DTPStreamWriter

__all__ = ["DTPServer", "DTPStreamReader", "DTPStreamWriter", "open_connection"]
