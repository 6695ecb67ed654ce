"""Node access for ``SuiLedger``: pysui 1.5.1's gRPC layer (``sui.rpc.v2`` stubs and
request classes) on a private asyncio loop, behind a synchronous facade.

Why not ``GrpcProtocolClient``: it is built from a ``PysuiConfiguration``, which can only
be loaded from ``~/.pysui/PysuiConfig.json`` (private keys in plain base64), and it always
opens a TLS channel. ``SuiLedger`` keeps keys out of files and must reach plain-text
localnets too, so it opens the ``grpclib`` channel itself (TLS for ``https://``, plain for
``http://``) and sends pysui's own request objects (``GetObject``, ``GetEpoch``,
``ExecuteTransaction``, ``ListEvents``…) through the generated stubs, as the client does.

Sync over async: one daemon thread per :class:`SuiNode` runs an event loop, started on the
first call (so constructing does no I/O and starts nothing); each call is submitted with
``asyncio.run_coroutine_threadsafe`` and waited for. A per-process loop (rather than
``asyncio.run`` per call) keeps the HTTP/2 channel open between calls and works when the
caller already runs an event loop. A call that timed out or lost its connection drops the
channel (the next call opens a new one); ``close()`` stops the loop and closes its channels,
and a later call starts a new loop. A node dropped without ``close()`` does the same when
it is garbage collected, without waiting for the loop.

Reads that fail transiently (the node unreachable, a reset connection, UNAVAILABLE, rate
limiting) are tried again a few times with jittered exponential backoff, within the
call's time budget; executing a transaction never is (see :meth:`SuiNode.execute`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import datetime
import logging
import random
import re
import threading
import urllib.parse
import weakref
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import pysui.sui.sui_grpc.suimsgs.sui.rpc.v2 as sui_prot
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError
from pysui.sui.sui_bcs import bcs
from pysui.sui.sui_grpc import pgrpc_requests as rq
from pysui.sui.sui_grpc.pgrpc_absreq import PGRPC_Request, Service

from dtp.errors import (
    ChainError,
    InsufficientFunds,
    InvalidTransaction,
    ObjectNotFound,
    WrongSigner,
    finite_float,
    shown,
)
from dtp.errors import LedgerUnavailable as _LedgerUnavailable
from dtp.identity._bcs import uleb128
from dtp.ledger._objects import EventFilter, normalize_id
from dtp.ledger.sui._codec import BcsDecodeError
from dtp.ledger.sui._tx import OwnedRef

__all__ = [
    "SUI_COIN_TYPE",
    "EventPage",
    "LedgerUnavailable",
    "MalformedResponse",
    "NodeObject",
    "SharedObjectCongestion",
    "SuiNode",
    "narrowing",
    "parse_endpoint",
]

SUI_COIN_TYPE: Final = "0x2::coin::Coin<0x2::sui::SUI>"
_OBJECT_FIELDS: Final = ["object_id", "version", "digest", "owner", "object_type", "contents"]
_EXEC_FIELDS: Final = ["digest", "effects", "events", "checkpoint", "timestamp"]
#: What grpclib says for an HTTP answer that is not 200 (it maps a 429 to UNAVAILABLE).
_HTTP_429: Final = ":status = '429'"
T = TypeVar("T")

logger = logging.getLogger(__name__)

#: The channel the running attempt of a call uses: set by ``SuiNode._guard`` in the
#: context of ``make()``'s task, read by ``SuiNode._stub``.
_CHANNEL: contextvars.ContextVar[Channel] = contextvars.ContextVar("dtp_sui_channel")
#: Seconds close() waits for the calls in flight to end, then for the loop thread.
_CLOSE_WAIT = 30.0
#: Seconds run() waits on its call at a time before checking that the loop still runs.
_WAIT_SLICE = 1.0

#: Backoff before the first retry of a read that failed transiently, in seconds; it
#: doubles with each further retry, up to ``_RETRY_DELAY_CAP``.
_RETRY_DELAY = 0.2
#: The same for a node that is rate limiting or overloaded: coming back after 0.2 s is
#: what it just refused.
_RATE_LIMITED_DELAY = 1.0
_RETRY_DELAY_CAP = 2.0


def _backoff(retry: int, rate_limited: bool) -> float:
    """Seconds to wait before retry number ``retry`` (1 for the first): exponential and
    capped, with half of it random, so clients that failed together do not all come back
    at the same instant, yet none comes back at once."""
    first = _RATE_LIMITED_DELAY if rate_limited else _RETRY_DELAY
    # the exponent is bounded: a float overflows long before a caller's retries run out
    delay = min(_RETRY_DELAY_CAP, first * 2.0 ** min(retry - 1, 32))
    return delay / 2 + random.uniform(0.0, delay / 2)


def _rate_limited(exc: GRPCError) -> bool:
    # RESOURCE_EXHAUSTED is also what Sui sends for overloaded validators; an HTTP 429 (a
    # proxy in front of the node) reaches here as UNAVAILABLE
    return exc.status == Status.RESOURCE_EXHAUSTED or (
        exc.status == Status.UNAVAILABLE and _HTTP_429 in (exc.message or "")
    )


class LedgerUnavailable(_LedgerUnavailable):
    """The Sui node cannot be reached (refused, unreachable, timed out, TLS failure) or
    will not serve now (overloaded, rate limiting this client): worth trying again later,
    except an ExecuteTransaction, whose outcome must be read first (it may have run).
    The Sui form of :class:`dtp.errors.LedgerUnavailable`, which is what to catch: code
    that catches it catches this one, as it catches a LocalLedger's."""

    module = "sui"


class SharedObjectCongestion(LedgerUnavailable):
    """Sui's congestion control cancelled the transaction, every time it was sent: the
    shared objects it writes are too busy. A cancelled transaction did not execute (only
    its gas was charged), so it is safe to send again, later. Still named
    ``"LedgerUnavailable"``: callers ride it out as they ride out an outage."""


class MalformedResponse(ChainError):
    """The Sui node answered, but not with what the call asked for (an undecodable
    message, a missing or malformed field): the node's fault, not the caller's."""

    name = "MalformedNodeResponse"
    module = "sui"


def _node_id(value: Any, what: str) -> str:
    # normalize_id raises InvalidObjectId, which tells the caller that *their* argument
    # was wrong; here the node sent it
    try:
        return normalize_id(value, what)
    except ChainError:
        raise MalformedResponse(f"The node sent {value!r} as an {what}.") from None


def _node_digest(value: Any, what: str) -> str:
    # checked when read: a bad digest would otherwise surface later as a ValueError or
    # TypeError from pysui's BCS layer while a transaction is being built
    if isinstance(value, str) and value:
        try:
            if len(bcs.Digest.from_str(value).serialize()) == 33:  # length byte + 32
                return value
        except (ValueError, TypeError):
            pass
    raise MalformedResponse(f"The node sent {value!r} as the digest of {what}.")


def _next_page(token: bytes | None, seen: set[bytes], what: str) -> bytes | None:
    """The next page token, refusing one the node already gave: a node that hands out
    the same page again would otherwise be asked for it until the call times out (and
    the entries of the repeated pages would be counted twice)."""
    if not token:
        return None
    token = bytes(token)
    if token in seen:
        raise MalformedResponse(f"The node repeated a page token of {what}.")
    seen.add(token)
    return token


def positive_seconds(value: object) -> bool:
    """Whether ``value`` is a usable number of seconds to wait: a finite int or float
    above 0, not a bool (``True`` is a mistake, not one second), and not an int too
    large for a float (``math.isfinite`` raised OverflowError for it, and asyncio's
    clock arithmetic would at every call)."""
    seconds = finite_float(value)
    return seconds is not None and seconds > 0


def parse_endpoint(url: str) -> tuple[str, int, bool]:
    """``(host, port, tls)`` of a gRPC endpoint: ``https://host[:port]`` (TLS, default
    443), ``http://host[:port]`` (plain text, default 9000) or ``host:port`` (TLS)."""
    if not isinstance(url, str):
        # (an AttributeError from .strip() would say nothing of which setting is wrong)
        raise ValueError(f"{shown(url)} is not a gRPC endpoint (http(s)://host[:port])")
    text = url.strip()
    if "://" not in text:
        text = "https://" + text
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not a gRPC endpoint (http(s)://host[:port])")
    tls = parts.scheme == "https"
    try:
        port = parts.port or (443 if tls else 9000)
    except ValueError:
        raise ValueError(f"{url!r} has an invalid port") from None
    return parts.hostname, port, tls


#: A Move identifier (a module or struct name), as a node's type filter takes it.
_MOVE_IDENTIFIER: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def narrowing(event_filter: EventFilter | None) -> dict[str, str]:
    """What of ``event_filter`` the node applies itself, as the keyword arguments of
    :meth:`SuiNode.list_events`: the sender, and the event type below the package
    (``"::module"``, ``"::module::Name"``) when the filter names its module (a full
    type ``dtp::module::Name``, or a name with a module). The caller still applies the
    whole filter; this only spares reading every event of the package to find a few
    (``dtp connections``). A value no node would take (not an address, not a Move
    identifier) is left to that filter, as before: it matches nothing."""
    if event_filter is None:
        return {}
    out: dict[str, str] = {}
    if event_filter.sender is not None:
        with contextlib.suppress(ChainError):
            out["sender"] = normalize_id(event_filter.sender, "address")
    module, name = event_filter.module, event_filter.type
    if name is not None and name.count("::") == 2:
        prefix, module_of_type, name = name.split("::")
        if prefix != "dtp" or (module is not None and module != module_of_type):
            return out  # (matches no event of the package: left to the filter)
        module = module_of_type
    elif name is not None and "::" in name:
        return out
    if module is not None and _MOVE_IDENTIFIER.fullmatch(module):
        out["event_type"] = f"::{module}"
        if name is not None and _MOVE_IDENTIFIER.fullmatch(name):
            out["event_type"] += f"::{name}"
    return out


@dataclass(frozen=True)
class NodeObject:
    """What ``SuiLedger`` needs of one object."""

    object_id: str
    version: int
    digest: str
    #: ``"shared"``, ``"immutable"``, ``"object"`` or the owning address.
    owner: str
    #: Initial shared version (shared objects only).
    initial_shared_version: int | None
    #: Full Move type, e.g. ``0x…::host::Host``.
    type: str
    #: BCS of the Move struct (empty if not requested).
    contents: bytes

    def owned_ref(self) -> OwnedRef:
        """As an ``ImmOrOwnedObject`` reference (:class:`MalformedResponse` if the node
        sent no usable digest or version)."""
        if self.version <= 0:
            # node_object() reads a missing version as 0, which no object has: signed and
            # sent, the transaction would be refused by the node (gas for nothing in a
            # retry loop), and the caller told that *their* object is wrong
            raise MalformedResponse(f"The node sent no version of the object {self.object_id}.")
        return OwnedRef(self.object_id, self.version, _node_digest(self.digest, self.object_id))


@dataclass(frozen=True)
class EventPage:
    """One ``ListEvents`` stream, as :meth:`SuiNode.scan_events` read it."""

    #: ``(event, resume cursor after it)``, oldest first.
    frames: list[tuple[Any, bytes]]
    #: The last watermark cursor (the ``after`` asked for when the node sent none).
    last: bytes | None
    #: Why the node ended the stream (``QueryEndReason``); None if it did not say.
    end: Any | None


def _owner_text(owner: Any) -> tuple[str, int | None]:
    kind = getattr(owner, "kind", None)
    if kind == sui_prot.OwnerOwnerKind.SHARED:
        return "shared", owner.version
    if kind == sui_prot.OwnerOwnerKind.IMMUTABLE:
        return "immutable", None
    if kind == sui_prot.OwnerOwnerKind.OBJECT:
        return "object", None
    address = getattr(owner, "address", None)
    return (_node_id(address, "owner address") if address else "unknown"), None


def node_object(obj: Any) -> NodeObject:
    """A :class:`NodeObject` from a ``sui.rpc.v2.Object``."""
    owner, isv = _owner_text(obj.owner)
    contents = obj.contents.value if obj.contents is not None and obj.contents.value else b""
    return NodeObject(
        _node_id(obj.object_id, "object ID"),
        int(obj.version or 0),
        str(obj.digest or ""),
        owner,
        isv,
        str(obj.object_type or ""),
        bytes(contents),
    )


def timestamp_ms(value: datetime.datetime | None) -> int:
    """Milliseconds since the Unix epoch of a protobuf timestamp (0 when absent)."""
    if value is None:
        return 0
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.UTC)
    return int(value.timestamp() * 1000)


class _Runner:
    """One private event loop, the daemon thread running it and the channels its calls
    use. A :class:`SuiNode` starts one on its first call and drops it in ``close()``; a
    call after that starts another, so no channel outlives the loop it was opened on.

    ``closed`` is set under ``SuiNode._lock``; the channels are touched on the loop's
    thread only (no lock needed there)."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        #: close() took this runner: no channel is opened on it any more.
        self.closed = False
        #: begin_stop() ran (it must queue the shutdown once: the loop closes after it).
        self._stopping = False
        self._stop_lock = threading.Lock()
        #: The shutdown's task: the loop holds its tasks only weakly.
        self._shutdown_task: asyncio.Task[None] | None = None
        #: The channel new attempts use; None until one needs it, or after it was dropped.
        self.channel: Channel | None = None
        #: Attempts in flight per channel, the current one or one dropped but still used.
        self.users: dict[Channel, int] = {}

    def acquire(self, make: Callable[[], Channel]) -> Channel:
        """The current channel (opened with ``make()`` if there is none), counted as used
        until :meth:`release`."""
        if self.channel is None:
            self.channel = make()
        channel = self.channel
        self.users[channel] = self.users.get(channel, 0) + 1
        return channel

    def drop(self, channel: Channel) -> None:
        """Stop handing out ``channel``: its connection may be stuck or lost. It is
        closed when its last user releases it (other calls may still be reading on it)."""
        if self.channel is channel:
            self.channel = None

    def release(self, channel: Channel) -> None:
        """One attempt is done with ``channel``; close it if it was dropped and this was
        its last user. ``Channel.close()`` only closes the transport: it never blocks."""
        left = self.users.get(channel, 1) - 1
        if left > 0:
            self.users[channel] = left
            return
        self.users.pop(channel, None)
        if channel is not self.channel:
            channel.close()

    def _run(self) -> None:
        try:
            self.loop.run_forever()
        finally:
            # closed here, by the thread that ran it, once it stopped: a finalizer cannot
            # wait to close it, and close() may give up waiting for this thread
            self.loop.close()

    def begin_stop(self) -> None:
        """Have the loop cancel its calls, close its channels and stop (see
        :meth:`_shutdown`), without waiting: the finalizer of a node dropped without
        ``close()`` runs this on whichever thread the garbage collector runs."""
        with self._stop_lock:
            if self._stopping:
                return
            self._stopping = True
        self.closed = True
        # only queues a callback and wakes the loop up: never blocks
        self.loop.call_soon_threadsafe(self._start_shutdown)

    def _start_shutdown(self) -> None:
        self._shutdown_task = self.loop.create_task(self._shutdown())

    async def _shutdown(self) -> None:
        # calls still in flight are cancelled, so their callers' run() returns (it raises
        # LedgerUnavailable) instead of waiting on a loop that no longer runs
        current = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not current]
        for task in tasks:
            task.cancel()
        if tasks:
            # bounded: a call that ignores its cancellation must not keep the loop and the
            # channels alive for ever (its caller's run() sees the loop stopped)
            await asyncio.wait(tasks, timeout=_CLOSE_WAIT)
        channels = {*self.users, *([self.channel] if self.channel is not None else [])}
        self.channel = None
        self.users.clear()
        for channel in channels:
            channel.close()
        # queued after the callbacks that close the transports' sockets (queued by the
        # closes above), so they run in the loop's last iteration
        self.loop.call_soon(self.loop.stop)

    def stop(self) -> None:
        """Cancel the calls in flight, close every channel, stop the loop and wait for its
        thread: up to ``_CLOSE_WAIT`` for the calls to end, as long again for the rest."""
        self.begin_stop()
        self.thread.join(timeout=2 * _CLOSE_WAIT)


class SuiNode:
    """Synchronous access to one Sui full node over gRPC."""

    def __init__(self, endpoint: str, *, timeout: float = 30.0, retries: int = 2) -> None:
        """Parse ``endpoint``; no thread, socket or loop is created until the first call.

        ``timeout``: seconds one call may spend waiting on the node, all its attempts
        together. ``retries``: how many times a read that failed transiently (node
        unreachable, connection reset, UNAVAILABLE, RESOURCE_EXHAUSTED or HTTP 429) is
        tried again, after a jittered exponential backoff (about 0.2 s, then doubling up
        to 2 s; from 1 s when the node is rate limiting); the sleeps come on top of
        ``timeout``. A call that used up ``timeout`` is not retried, nor is any other
        error, nor ever a transaction execution. ``0`` asks once."""
        self.endpoint = endpoint
        self.host, self.port, self.tls = parse_endpoint(endpoint)
        # NaN never fires in asyncio.wait_for and infinity waits forever: either would
        # let a silent node hang every call
        if not positive_seconds(timeout):
            raise ValueError(f"timeout must be a positive number of seconds, got {shown(timeout)}")
        # bool is an int, but retries=True is a mistake, not "once"
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be a non-negative integer, got {shown(retries)}")
        self.timeout = float(timeout)
        self.retries = retries
        self._lock = threading.Lock()
        #: Held by close() until its runner stopped: a close() racing another returns only
        #: once the loop thread ended (or the bounded wait ran out), not at once.
        self._close_lock = threading.Lock()
        self._runner: _Runner | None = None
        #: Stops the current runner if this node is garbage collected without close().
        self._finalizer: weakref.finalize[[], SuiNode] | None = None

    # -- the private loop -----------------------------------------------------------------

    # the current runner's parts, None before the first call and after close() (tests and
    # debugging look at them)
    @property
    def _thread(self) -> threading.Thread | None:
        runner = self._runner
        return runner.thread if runner is not None else None

    @property
    def _channel(self) -> Channel | None:
        runner = self._runner
        return runner.channel if runner is not None else None

    def _closed_error(self, what: str) -> LedgerUnavailable:
        return LedgerUnavailable(
            f"The connection to Sui node {self.endpoint} was closed during {what}."
        )

    def run(
        self, make: Callable[[], Coroutine[Any, Any, T]], what: str, *, executes: bool = False
    ) -> T:
        """Run ``make()`` on the private loop; translate transport errors. ``executes``:
        the call executes a transaction (its rejections name the transaction's faults)."""
        with self._lock:
            runner = self._runner
            if runner is None:
                runner = _Runner(f"dtp-sui-{self.host}:{self.port}")
                runner.thread.start()
                self._runner = runner
                # a node (or its SuiLedger) dropped without close() would keep the thread
                # and the connection until the process exits. The callback holds the
                # runner, never self (which would then never be collected); at exit the
                # daemon thread simply ends, as it did before
                self._finalizer = weakref.finalize(self, runner.begin_stop)
                self._finalizer.atexit = False
            # queued under the lock close() takes to drop the runner: a call is either
            # queued before close()'s shutdown (which then cancels it) or goes to a new
            # runner, never to a loop that is stopping (it would wait there for ever) or
            # closed (RuntimeError)
            future = asyncio.run_coroutine_threadsafe(
                self._guard(runner, make, what, executes), runner.loop
            )
        return self._wait(runner, future, what)

    def _wait(self, runner: _Runner, future: concurrent.futures.Future[T], what: str) -> T:
        """The outcome of ``future``, a call queued on ``runner``; :class:`LedgerUnavailable`
        if the runner was stopped before the call ended. Waited for in slices: a call
        that ignored its cancellation is never resolved once its loop stopped, and its
        caller would otherwise wait for ever."""
        while True:
            try:
                return future.result(timeout=_WAIT_SLICE)
            except concurrent.futures.CancelledError:
                # close() cancelled it: the caller gets an answer instead of waiting forever
                raise self._closed_error(what) from None
            except TimeoutError:
                if future.done():
                    raise  # the call's own error, not the slice running out
                # done() again after: it may have been resolved in the loop's last moments.
                # The future is not cancelled: that would queue a callback on the loop,
                # which is closed by now (a RuntimeError logged by concurrent.futures)
                if runner.closed and not runner.thread.is_alive() and not future.done():
                    raise self._closed_error(what) from None

    def _open_channel(self, runner: _Runner, what: str) -> Channel:
        """A channel for one attempt (see :meth:`_Runner.acquire`), on the loop thread."""
        if runner.closed:
            # close() took this runner after the call was queued: a channel opened now
            # would outlive its loop (close() closes only those it finds)
            raise self._closed_error(what)
        return runner.acquire(self._new_channel)

    def _new_channel(self) -> Channel:
        try:
            return Channel(host=self.host, port=self.port, ssl=self.tls)
        except OSError as exc:
            # the TLS context (CA bundle, ciphers) could not be set up: typed as when the
            # channel was opened inside the call
            raise LedgerUnavailable(
                f"Sui node {self.endpoint} is unreachable: no channel could be opened: {exc}"
            ) from exc

    async def _guard(
        self,
        runner: _Runner,
        make: Callable[[], Coroutine[Any, Any, T]],
        what: str,
        executes: bool = False,
    ) -> T:
        """``make()`` under the call's time budget, a read retried on transient failures.

        Each attempt calls ``make()`` afresh (a paged read starts again from its first
        page) on the runner's current channel. An attempt that timed out or lost its
        connection drops that channel: an HTTP/2 connection that stopped answering still
        looks open to grpclib, which would send every later call down it. The next
        attempt or call opens a new one; the old one is closed once no attempt uses it.
        close() during a backoff sleep cancels it like a call in flight (run() raises)."""
        loop = asyncio.get_running_loop()
        # one budget for all the attempts: a retry never makes the caller wait more than
        # ``timeout`` on the node, only the backoff sleeps on top
        budget = self.timeout
        attempts = 1 if executes else self.retries + 1
        attempt = 1
        while True:
            started = loop.time()
            rate_limited = False
            channel = self._open_channel(runner, what)
            # make() runs in a task of its own whose context says this channel: its
            # requests go down it even if another call drops it meanwhile. Set there, not
            # here, so nothing is reset here: a call abandoned on a stopped loop (it
            # ignored its cancellation) is closed by the GC outside its context, where a
            # reset raises ValueError
            context = contextvars.copy_context()
            context.run(_CHANNEL.set, channel)
            try:
                return await asyncio.wait_for(loop.create_task(make(), context=context), budget)
            except GRPCError as exc:
                error = self._grpc_error(exc, what, executes)
                rate_limited = _rate_limited(exc)
                if exc.status not in (Status.UNAVAILABLE, Status.RESOURCE_EXHAUSTED):
                    raise error from None
            except TimeoutError:
                # caught before OSError, its base class: the budget is spent, so this is
                # final (a retry would have no time left)
                runner.drop(channel)
                raise LedgerUnavailable(
                    f"Sui node {self.endpoint} did not answer {what} within {self.timeout} s."
                ) from None
            except (OSError, StreamTerminatedError, ConnectionError) as exc:
                runner.drop(channel)
                error = LedgerUnavailable(
                    f"Sui node {self.endpoint} is unreachable ({what}): {exc}"
                )
            except ChainError:
                raise
            except Exception as exc:
                # protobuf that does not parse (EOFError, ValueError…), a field of the wrong
                # kind: the node's answer, so a typed error rather than a crash of the caller
                raise MalformedResponse(
                    f"Sui node {self.endpoint} sent an answer to {what} that cannot be read: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            finally:
                runner.release(channel)
            budget -= loop.time() - started
            if attempt >= attempts or budget <= 0:
                raise error from None
            delay = _backoff(attempt, rate_limited)
            logger.debug(
                "Sui node %s: %s failed (attempt %d of %d): %s; retrying in %.2f s",
                self.endpoint,
                what,
                attempt,
                attempts,
                error,
                delay,
            )
            await asyncio.sleep(delay)
            attempt += 1

    def _grpc_error(self, exc: GRPCError, what: str, executes: bool = False) -> ChainError:
        message = exc.message or exc.status.name
        # checked first: a rate limiter's text may read like a rejection ("insufficient
        # quota")
        if _rate_limited(exc):
            return LedgerUnavailable(
                f"Sui node {self.endpoint} is rate limiting requests or overloaded ({what}): "
                f"{message}. Try again later, more slowly, or use another node."
            )
        if exc.status == Status.NOT_FOUND:
            return ObjectNotFound(f"{what}: {message}")
        if exc.status in (Status.UNAVAILABLE, Status.DEADLINE_EXCEEDED):
            return LedgerUnavailable(f"Sui node {self.endpoint} is unavailable ({what}): {message}")
        if not executes:
            # a read refused as INVALID_ARGUMENT is not a malformed *transaction* (the IDs
            # were checked before sending): a node of another version, say, refusing a
            # field mask path
            return ChainError(f"{what} failed ({exc.status.name}): {message}", name=exc.status.name)
        lowered = message.lower()
        # Sui's GasBalanceTooLow reads "Balance of gas object N is lower than the needed
        # amount: M" (no "insufficient"): the gas coins changed since they were read
        if (
            "insufficient" in lowered and ("balance" in lowered or "gas" in lowered)
        ) or "lower than the needed amount" in lowered:
            return InsufficientFunds(
                f"{what} was rejected: {message}", name="InsufficientCoinBalance", module="sui"
            )
        if "signature" in lowered or "owned by" in lowered or "not owned" in lowered:
            return WrongSigner(f"{what} was rejected: {message}")
        if "dependent package not found" in lowered:
            # (Sui's UserInputError::DependentPackageNotFound): the package ID this ledger
            # was given is not on the network the node serves
            return ObjectNotFound(
                f"{what} was rejected: {message} The dtp package this ledger calls is not "
                "on this network: check its ID (--sui-package, sui_package in the daemon "
                "config, DTP_SUI_PACKAGE, or what `dtp deploy` recorded for the network).",
                name="PackageNotFound",
                module="sui",
            )
        if "could not find the referenced object" in lowered:
            # an input deleted since it was read (Sui's UserInputError::ObjectNotFound)
            return ObjectNotFound(f"{what} was rejected: {message}")
        if exc.status == Status.INVALID_ARGUMENT:
            return InvalidTransaction(f"{what} was rejected: {message}")
        return ChainError(f"{what} failed ({exc.status.name}): {message}", name=exc.status.name)

    def _stub(self, service: Service) -> Any:
        channel = _CHANNEL.get()
        if service == Service.LEDGER:
            return sui_prot.LedgerServiceStub(channel)
        if service == Service.STATE:
            return sui_prot.StateServiceStub(channel)
        if service == Service.TRANSACTION:
            return sui_prot.TransactionExecutionServiceStub(channel)
        if service == Service.SIGNATURE:
            return sui_prot.SignatureVerificationServiceStub(channel)
        raise ValueError(f"service {service} is not used")

    async def _unary(self, request: PGRPC_Request) -> Any:
        fn, message = request.to_request(stub=self._stub(request.service))
        return await fn(message)

    def close(self) -> None:
        """Cancel the calls in flight (they raise :class:`LedgerUnavailable`), close the
        channels and stop the loop thread (idempotent). A later call starts a new loop.

        Returns once the loop thread ended, also when another thread's close() is
        stopping it. A call that ignores its cancellation is given up after
        ``_CLOSE_WAIT`` s (its caller then gets :class:`LedgerUnavailable` too); a loop
        that never comes back is waited for ``2 * _CLOSE_WAIT`` s at most."""
        with self._close_lock:
            with self._lock:
                runner, self._runner = self._runner, None
                finalizer, self._finalizer = self._finalizer, None
                if runner is None:
                    return
                # under the lock run() queues calls under: none is queued on this runner
                # after this, and one queued before opens no channel (see _open_channel)
                runner.closed = True
            if finalizer is not None:
                finalizer.detach()  # not needed any more, and it holds the runner
            runner.stop()

    # -- calls ----------------------------------------------------------------------------

    def get_object(self, object_id: str, *, contents: bool = True) -> NodeObject:
        """One object at its current version (``ObjectNotFound`` if absent)."""
        object_id = normalize_id(object_id)
        fields = _OBJECT_FIELDS if contents else _OBJECT_FIELDS[:-1]

        async def call() -> NodeObject:
            resp = await self._unary(rq.GetObject(object_id=object_id, field_mask=fields))
            if resp is None or resp.object is None:
                raise ObjectNotFound(f"No object with ID {object_id} exists on this network.")
            return node_object(resp.object)

        return self.run(call, f"GetObject {object_id}")

    def storage_paid(self, object_id: str) -> int:
        """The storage fee an object paid when last written (its ``storage_rebate``: what
        deleting it rebates, before the non-refundable part); ``ObjectNotFound`` if
        absent."""
        object_id = normalize_id(object_id)

        async def call() -> int:
            resp = await self._unary(
                rq.GetObject(object_id=object_id, field_mask=["object_id", "storage_rebate"])
            )
            if resp is None or resp.object is None:
                raise ObjectNotFound(f"No object with ID {object_id} exists on this network.")
            return int(resp.object.storage_rebate or 0)

        return self.run(call, f"GetObject {object_id}")

    def table_entries(self, table_id: str) -> dict[str, int]:
        """Entries of a ``Table<address, u64>`` (its dynamic fields)."""
        out: dict[str, int] = {}
        for key, value in self.table_values(table_id).items():
            if len(value) < 8:
                raise BcsDecodeError(
                    f"An entry of the table {table_id} is not an address and a u64 "
                    f"(32 and {len(value)} bytes)."
                )
            out[key] = int.from_bytes(value[:8], "little")
        return out

    def table_values(self, table_id: str) -> dict[str, bytes]:
        """Entries of a ``Table`` keyed by an address or an ID (its dynamic fields): each
        key as ``0x`` hex, each value as its BCS bytes, for the caller to decode."""
        fields = self.table_fields(table_id, 32)
        return {"0x" + name.hex(): value for name, value in fields.items()}

    def table_keys(self, table_id: str) -> list[str]:
        """The keys of a ``Table<address, _>`` (its dynamic fields' names), every page."""
        return ["0x" + name.hex() for name in self.table_fields(table_id, 32, values=False)]

    def table_fields(
        self, table_id: str, key_length: int, *, values: bool = True
    ) -> dict[bytes, bytes]:
        """Every entry of a ``Table`` whose keys' BCS is ``key_length`` bytes (an address
        or an ID: 32; a ``u16`` port: 2), read page by page: each key's BCS to its
        value's (empty when ``values`` is False: only the names are asked for). An entry
        keyed otherwise is not this table's: BcsDecodeError."""
        table_id = normalize_id(table_id)
        mask = ["name", "value"] if values else ["name"]

        async def call() -> dict[bytes, bytes]:
            out: dict[bytes, bytes] = {}
            token: bytes | None = None
            seen: set[bytes] = set()
            while True:
                resp = await self._unary(
                    rq.GetDynamicFields(table_id, page_size=1000, page_token=token, field_mask=mask)
                )
                for df in resp.dynamic_fields:
                    name = bytes(df.name.value or b"") if df.name is not None else b""
                    value = b""
                    if values and df.value is not None:
                        value = bytes(df.value.value or b"")
                    if len(name) != key_length:
                        raise BcsDecodeError(
                            f"An entry of the table {table_id} is not keyed by a "
                            f"{key_length}-byte key ({len(name)} bytes)."
                        )
                    out[name] = value
                token = _next_page(resp.next_page_token, seen, "ListDynamicFields")
                if not token:
                    return out

        return self.run(call, f"ListDynamicFields {table_id}")

    def gas_coins(self, owner: str) -> list[tuple[OwnedRef, int]]:
        """The SUI coins owned by ``owner``, with their balances, largest first."""
        owner = normalize_id(owner, "address")

        async def call() -> list[tuple[OwnedRef, int]]:
            out: list[tuple[OwnedRef, int]] = []
            token: bytes | None = None
            seen: set[bytes] = set()
            while True:
                resp = await self._unary(
                    rq.GetGas(
                        owner=owner,
                        field_mask=["object_id", "version", "digest", "balance"],
                        page_size=1000,
                        page_token=token,
                    )
                )
                for obj in resp.objects:
                    if not obj.digest or obj.version is None:
                        continue  # address-balance reservations are not coin objects
                    object_id = _node_id(obj.object_id, "object ID")
                    ref = OwnedRef(object_id, int(obj.version), _node_digest(obj.digest, object_id))
                    out.append((ref, int(obj.balance or 0)))
                token = _next_page(resp.next_page_token, seen, "ListOwnedObjects")
                if not token:
                    out.sort(key=lambda item: -item[1])
                    return out

        return self.run(call, f"ListOwnedObjects {owner}")

    def epoch_info(self) -> tuple[int, int]:
        """``(epoch, reference_gas_price)`` of the current epoch.

        A full node fills the epoch's ``reference_gas_price`` from its RPC indexes and
        leaves it out without them; the price is then read from the current system state
        (``system_state.reference_gas_price``, a second GetEpoch). Neither there (or 0,
        which no network accepts as a gas price): :class:`MalformedResponse` naming the
        field, rather than a gas price of 0 that makes every transaction fail. An answer
        without the epoch number is :class:`MalformedResponse` too (never taken as epoch 0)."""

        async def call() -> tuple[int, int]:
            resp = await self._unary(rq.GetEpoch(field_mask=["epoch", "reference_gas_price"]))
            if resp is None or resp.epoch is None:
                raise LedgerUnavailable(f"Sui node {self.endpoint} answered GetEpoch without one.")
            if resp.epoch.epoch is None:
                raise MalformedResponse(
                    f"Sui node {self.endpoint} answered GetEpoch without the field epoch."
                )
            price = resp.epoch.reference_gas_price
            if not price:
                state = await self._unary(
                    rq.GetEpoch(field_mask=["system_state.reference_gas_price"])
                )
                system = (
                    state.epoch.system_state
                    if state is not None and state.epoch is not None
                    else None
                )
                price = system.reference_gas_price if system is not None else None
                if not price:
                    raise MalformedResponse(
                        f"Sui node {self.endpoint} answered GetEpoch without the field "
                        "reference_gas_price (nor system_state.reference_gas_price): no "
                        "transaction can be priced."
                    )
            return int(resp.epoch.epoch), int(price)

        return self.run(call, "GetEpoch")

    def balance(self, owner: str) -> int:
        """Total SUI balance of ``owner`` (coins and address balance), in MIST."""
        owner = normalize_id(owner, "address")

        async def call() -> int:
            resp = await self._unary(rq.GetAddressCoinBalance(owner=owner))
            return int(resp.balance.balance or 0) if resp.balance is not None else 0

        return self.run(call, f"GetBalance {owner}")

    def execute(self, tx_bytes: bytes, signature: bytes) -> Any:
        """Execute a signed transaction; returns the ``ExecutedTransaction`` message."""

        async def call() -> Any:
            request = rq.ExecuteTransaction(
                tx_bytestr=bytes(tx_bytes), sig_array=[bytes(signature)], field_mask=_EXEC_FIELDS
            )
            resp = await self._unary(request)
            return resp.transaction

        # executes=True: never retried. ExecuteTransaction is not idempotent for the
        # caller: a request whose answer was lost (reset, UNAVAILABLE from a proxy after
        # forwarding it) may have executed, and sending it again could pay twice or fail
        # confusingly on now-spent objects; the caller reads the outcome first
        try:
            return self.run(call, "ExecuteTransaction", executes=True)
        except LedgerUnavailable as exc:
            # the request may have reached the node before the answer was lost: a
            # caller that simply sends it again may pay twice (an open, a top-up)
            raise LedgerUnavailable(
                f"{exc} The transaction may still have executed: read its outcome before "
                "sending it again."
            ) from None
        except MalformedResponse as exc:
            # an answer that cannot be read is an answer: the node had the transaction
            raise MalformedResponse(
                f"{exc} The transaction may still have executed: read its outcome before "
                "sending it again."
            ) from None

    def verify_signature(
        self,
        message: bytes,
        signature: bytes,
        address: str,
        *,
        jwks: Sequence[Mapping[str, str]] = (),
    ) -> tuple[bool, str]:
        """Whether ``signature`` (a serialized Sui signature of any scheme) signs the
        personal message ``message`` for ``address``, in the node's judgment
        (``SignatureVerificationService/VerifySignature``): ``(valid, the node's reason
        when not)``. A zkLogin proof is checked against its issuer's key: one of
        ``jwks`` (each ``{iss, kid, kty, e, n, alg}``) when given, else the node's
        current on-chain keys. The node does not compare a zkLogin proof's last epoch
        with the current one: its caller does (``epoch_info``)."""
        bcs_message = uleb128(len(message)) + bytes(message)  # BCS vector<u8>
        request = sui_prot.VerifySignatureRequest(
            message=sui_prot.Bcs(name="PersonalMessage", value=bcs_message),
            signature=sui_prot.UserSignature(
                bcs=sui_prot.Bcs(name="UserSignature", value=bytes(signature))
            ),
            address=normalize_id(address, "address"),
            jwks=[
                sui_prot.ActiveJwk(
                    id=sui_prot.JwkId(iss=jwk["iss"], kid=jwk["kid"]),
                    jwk=sui_prot.Jwk(kty=jwk["kty"], e=jwk["e"], n=jwk["n"], alg=jwk["alg"]),
                )
                for jwk in jwks
            ],
        )

        async def call() -> tuple[bool, str]:
            resp = await self._stub(Service.SIGNATURE).verify_signature(request)
            if resp is None or resp.is_valid is None:
                raise MalformedResponse(
                    f"Sui node {self.endpoint} answered VerifySignature without is_valid."
                )
            return bool(resp.is_valid), resp.reason or ""

        return self.run(call, "VerifySignature")

    def checkpoint_timestamp_ms(self, sequence: int) -> int:
        """The timestamp of a checkpoint, in ms."""

        async def call() -> int:
            resp = await self._unary(
                rq.GetCheckpoint(sequence=sequence, field_mask=["summary.timestamp"])
            )
            summary = resp.checkpoint.summary if resp.checkpoint is not None else None
            return timestamp_ms(summary.timestamp if summary is not None else None)

        return self.run(call, f"GetCheckpoint {sequence}")

    def list_events(
        self,
        package: str,
        after: bytes | None,
        limit: int,
        *,
        sender: str | None = None,
        event_type: str | None = None,
    ) -> tuple[list[tuple[Any, bytes]], bytes | None]:
        """Events whose type is defined by ``package``, after the ``after`` cursor, oldest
        first: ``([(event, resume cursor after it)], last watermark cursor)``. Narrowed
        by the node to those of transactions ``sender`` sent, and to the type
        ``package`` + ``event_type`` (``"::module"`` or ``"::module::Name"``), when given
        (:func:`narrowing`)."""
        page = self.scan_events(package, after, limit, sender=sender, event_type=event_type)
        return page.frames, page.last

    def scan_events(
        self,
        package: str,
        after: bytes | None,
        limit: int,
        *,
        sender: str | None = None,
        event_type: str | None = None,
    ) -> EventPage:
        """:meth:`list_events` with the reason the node gave for ending the stream."""
        package = normalize_id(package, "package ID")
        # one term, its literals ANDed (sui.rpc.v2 EventFilter: a DNF)
        literals = [
            sui_prot.EventLiteral(
                event_type=sui_prot.EventTypeFilter(event_type=package + (event_type or ""))
            )
        ]
        if sender is not None:
            literals.append(sui_prot.EventLiteral(sender=sui_prot.SenderFilter(address=sender)))
        event_filter = sui_prot.EventFilter(terms=[sui_prot.EventTerm(literals=literals)])

        async def call() -> EventPage:
            request = rq.ListEvents(
                event_filter=event_filter,
                options=sui_prot.QueryOptions(
                    limit=max(1, min(limit, 1000)),
                    after=after,
                    ordering=sui_prot.Ordering.ASCENDING,
                ),
            )
            fn, message = request.to_request(stub=self._stub(request.service))
            out: list[tuple[Any, bytes]] = []
            last = after
            end: sui_prot.QueryEndReason | None = None
            async for frame in fn(message):
                cursor = frame.watermark.cursor if frame.watermark is not None else None
                if cursor:
                    last = bytes(cursor)
                if frame.event is not None:
                    # every frame carries a watermark; an event's without one (the node's
                    # fault) gets the latest safe resume point, which at worst reads this
                    # event again -- b"" would have sent a reader back to the first event
                    out.append((frame.event, last or b""))
                if frame.end is not None:
                    end = frame.end.reason
            return EventPage(out, last, end)

        return self.run(call, "ListEvents")
