"""The stand-in node's gRPC server (``grpclib``, HTTP/2, plain text) and its test knobs.

Each ``sui.rpc.v2`` method is served by a raw handler (request and answer bytes pass
through :class:`RawCodec`): the request is parsed with pysui's generated message class,
the answer built by :mod:`dtp.testing.sui_node._answers`,
:mod:`dtp.testing.sui_node._execute` or :mod:`dtp.testing.sui_node._simulate` and
serialized, unless a knob says to answer otherwise (an error status, garbage, nothing).

The server runs on an event loop of its own in a daemon thread; state changes happen on
that thread or under the state's lock. ``ExecuteTransaction`` waits ``tx_latency``
seconds after its checks (other calls go on meanwhile) holding the locks of its owned
inputs, as validators lock them: another transaction using one of them at the same
version is refused (an equivocation), and one that touches a shared object an in-flight
transaction writes can be cancelled for congestion.

Each client connection stands for a full node of its own: with ``index_lag``, an object a
transaction created is found (``GetObject``) at once through the connection that executed
it, and through any other only ``index_lag`` seconds later, as a node's indexes lag
behind a transaction another node executed.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, Final, cast

import pysui.sui.sui_grpc.suimsgs.sui.rpc.v2 as sui_prot
from grpclib.const import Cardinality, Handler, Status
from grpclib.encoding.base import CodecBase
from grpclib.exceptions import GRPCError
from grpclib.server import Server

from dtp.ledger._versions import PACKAGE_VERSION
from dtp.ledger.local._tx import base58, tx_digest
from dtp.testing._loops import LoopThread
from dtp.testing.sui_node import _answers as answers
from dtp.testing.sui_node import _execute as execute
from dtp.testing.sui_node import _simulate as simulate
from dtp.testing.sui_node._faucet import FaucetServer
from dtp.testing.sui_node._grpc_web import GrpcWebServer
from dtp.testing.sui_node._objects import full_address
from dtp.testing.sui_node._ptb import Refusal, parse_tx
from dtp.testing.sui_node._state import DAY_MS, NodeState

__all__ = [
    "DEFAULT_PACKAGE",
    "GARBAGE",
    "RawCodec",
    "SuiNodeStandIn",
    "client_url",
    "listening_addresses",
]

#: The package ID the stand-in is "published" at unless told otherwise.
DEFAULT_PACKAGE: Final = "0x" + "d7" * 32
#: What a garbled answer holds: a varint longer than any (betterproto2 reads past much
#: else: unknown wire types, truncated lengths).
GARBAGE: Final = b"\xff" * 11
_JOIN: Final = 30.0

_METHODS: Final = {
    "LedgerService": (
        "GetServiceInfo",
        "GetObject",
        "BatchGetObjects",
        "GetTransaction",
        "GetCheckpoint",
        "GetEpoch",
        "ListEvents",
    ),
    "StateService": ("ListOwnedObjects", "GetBalance", "ListDynamicFields"),
    "TransactionExecutionService": ("ExecuteTransaction", "SimulateTransaction"),
    "SignatureVerificationService": ("VerifySignature",),
}
_STREAMING: Final = frozenset({"ListEvents"})


_WILDCARDS: Final = {"", "0.0.0.0", "::"}


def client_url(host: str, port: int) -> str:
    """``http://host:port`` as a client names it: a wildcard address (0.0.0.0, ::) is
    no destination, so its loopback stands for it; IPv6 addresses go in brackets."""
    if host in _WILDCARDS:
        host = "::1" if host == "::" else "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def listening_addresses(host: str) -> list[str]:
    """The addresses a server bound to ``host`` answers on: ``host`` itself, or for a
    wildcard the loopback first, then every address of the machine's interfaces of that
    family (ifaddr, as LAN discovery reads them)."""
    if host not in _WILDCARDS:
        return [host]
    import ifaddr

    v6 = host == "::"
    found = ["::1" if v6 else "127.0.0.1"]
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, tuple) != v6:
                continue
            text = ip.ip[0] if isinstance(ip.ip, tuple) else ip.ip
            if text not in found and not text.startswith("fe80"):
                found.append(text)
    return found


def _object_key(object_id: str) -> str:
    """An object ID as the index lag keeps it (full length, lower case)."""
    return full_address(object_id.lower()) if object_id.startswith("0x") else object_id


class RawCodec(CodecBase):
    """Passes message bytes through: handlers parse and serialize themselves (and can
    answer with bytes that are no message at all)."""

    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        return bytes(message)

    def decode(self, data: bytes, message_type: Any) -> Any:
        return data


class _Server(Server):
    """A grpclib server that can also drop its open connections (going away: a node
    that stops serving resets the connections clients hold, not just its listener)."""

    def __init__(self, handlers: Any, codec: CodecBase) -> None:
        super().__init__(handlers, codec=codec)
        self.transports: set[asyncio.BaseTransport] = set()

    def _protocol_factory(self) -> Any:
        protocol = super()._protocol_factory()
        made = protocol.connection_made

        def connection_made(transport: asyncio.BaseTransport) -> None:
            self.transports.add(transport)
            made(transport)

        protocol.connection_made = connection_made  # type: ignore[method-assign]
        return protocol

    def drop_connections(self) -> None:
        for transport in self.transports:
            transport.close()
        self.transports.clear()


class SuiNodeStandIn:
    """A stand-in Sui full node for tests (see the package docs).

    ``state_dir`` keeps its state across restarts (None: in memory). ``clock_ms`` freezes
    the clock at that time (it then moves only by :meth:`advance_clock` and
    :meth:`set_clock`); otherwise it follows wall time. ``epoch_ms`` is the epoch length.
    The knobs (``tx_latency``, ``read_latency``, ``rate_limit`` calls per second,
    ``contention`` probability, ``scan_limit`` events per ListEvents, ``index_lag``
    seconds) are attributes tests may change at any time. ``publisher`` holds the
    package's AdminCap (:attr:`admin_cap`), as whoever publishes the package does;
    ``package_version`` is the version of the package code the node runs: a state kept
    (``state_dir``) restarted with a higher one stands for the package upgraded
    (docs/sui.md, "Upgrading the package").
    """

    def __init__(
        self,
        state_dir: str | Path | None = None,
        *,
        package: str = DEFAULT_PACKAGE,
        host: str = "127.0.0.1",
        port: int = 0,
        clock_ms: int | None = None,
        epoch_ms: int = DAY_MS,
        gas_price: int = 1000,
        tx_latency: float = 0.0,
        read_latency: float = 0.0,
        rate_limit: float | None = None,
        contention: float = 0.0,
        scan_limit: int | None = None,
        index_lag: float = 0.0,
        seed: int | None = None,
        faucet_port: int | None = None,
        grpc_web_port: int | None = None,
        package_version: int = PACKAGE_VERSION,
        publisher: str | None = None,
    ) -> None:
        self.state = NodeState(
            state_dir,
            package=package,
            clock_ms=clock_ms,
            epoch_ms=epoch_ms,
            gas_price=gas_price,
            package_version=package_version,
        )
        #: The package's AdminCap, which ``publisher`` holds (None: no publisher given,
        #: and none in a state kept).
        self.admin_cap = (
            self.state.publish_admin_cap(publisher)
            if publisher is not None
            else self.state.ledger.admin_cap()
        )
        self.host = host
        self.port = port
        self.tx_latency = tx_latency
        self.read_latency = read_latency
        self.rate_limit = rate_limit
        self.contention = contention
        self.scan_limit = scan_limit
        #: Seconds an object a transaction created stays unknown (NOT_FOUND) to a
        #: ``GetObject`` on another client connection than the one it executed on: a full
        #: node other than the one a client sent its transaction to shows it only once
        #: its indexes caught up (0: at once, everywhere).
        self.index_lag = index_lag
        #: Objects created lately: ID -> (monotonic time executed, the connection it
        #: executed on); forgotten once older than ``index_lag``.
        self._created: dict[str, tuple[float, object]] = {}
        #: ``GetObject`` calls answered NOT_FOUND by ``index_lag``.
        self.lagged_reads = 0
        #: Leave ``reference_gas_price`` out of GetEpoch (a node without RPC indexes).
        self.epoch_without_price = False
        #: Calls served, by method name.
        self.calls: Counter[str] = Counter()
        #: Transactions in flight at once, at most, by sender (and refusals of a
        #: transaction for an owned object another one in flight holds).
        self.peak_in_flight: Counter[str] = Counter()
        self.lock_conflicts = 0
        self._in_flight: Counter[str] = Counter()
        self._random = random.Random(seed)
        self._knob_lock = threading.Lock()
        self._refuse_next: Counter[str] = Counter()
        self._garble_next: Counter[str] = Counter()
        self._cancel_next = 0
        self._stalled: asyncio.Event | None = None
        self._recent: deque[float] = deque()
        #: Owned objects locked by transactions in flight (ID -> digest).
        self._locks: dict[str, str] = {}
        #: Shared objects written by transactions in flight (ID -> digests).
        self._writing: dict[str, set[str]] = {}
        #: The loop serving, from :meth:`start` on.
        self._loop: LoopThread | None = None
        self._server: _Server | None = None
        self._closed = False
        #: The HTTP faucet's port (``faucet_port`` asked for one; 0: any free one), once
        #: started; None: no HTTP faucet (:meth:`faucet` funds in this process).
        self.faucet_port = faucet_port
        self._faucet: FaucetServer | None = None
        #: The gRPC-web front's port (``grpc_web_port`` asked for one; 0: any free one),
        #: once started; None: gRPC (HTTP/2) only.
        self.grpc_web_port = grpc_web_port
        self._grpc_web: GrpcWebServer | None = None

    # -- life cycle ----------------------------------------------------------------------

    @property
    def package_id(self) -> str:
        """The ID the package is "published" at."""
        return self.state.package

    @property
    def url(self) -> str:
        """The URL a client on this machine reaches the node at: the address it listens
        on, or the loopback address when it listens on every interface (0.0.0.0, ::)."""
        return client_url(self.host, self.port)

    @property
    def urls(self) -> list[str]:
        """Every URL the node answers at: :attr:`url`, and when it listens on every
        interface, one per address of this machine's interfaces (what a process in
        another network namespace, or on another machine, names)."""
        return [client_url(h, self.port) for h in listening_addresses(self.host)]

    @property
    def faucet_url(self) -> str | None:
        """The HTTP faucet's URL (``…/v2/gas``, Sui's faucet API: :mod:`.faucet`), or None
        when the node serves none."""
        if self._faucet is None:
            return None
        return client_url(self.host, self._faucet.port) + "/v2/gas"

    @property
    def grpc_web_url(self) -> str | None:
        """The gRPC-web front's URL (what ``SuiGrpcClient({baseUrl})`` of Mysten's
        TypeScript SDK takes: :mod:`.grpc_web`), or None when the node serves none."""
        if self._grpc_web is None:
            return None
        return client_url(self.host, self._grpc_web.port)

    def start(self) -> SuiNodeStandIn:
        """Start serving (returns self), with the HTTP faucet when ``faucet_port`` was
        given and the gRPC-web front when ``grpc_web_port`` was."""
        self._loop = LoopThread()
        self.come_back()
        if self.faucet_port is not None:
            self._faucet = FaucetServer(self.faucet, self.host, self.faucet_port).start()
            self.faucet_port = self._faucet.port
        if self.grpc_web_port is not None:
            methods = {f"{s}/{n}": n for s, names in _METHODS.items() for n in names}
            for name in _STREAMING:
                del methods[f"LedgerService/{name}"]
            self._grpc_web = GrpcWebServer(
                lambda name, data: self._web_answer(name, data, "grpc-web"),
                methods,
                self.host,
                self.grpc_web_port,
            ).start()
            self.grpc_web_port = self._grpc_web.port
        return self

    def __enter__(self) -> SuiNodeStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        assert self._loop is not None, "the stand-in is not started"
        return self._loop.run(coro, _JOIN)

    def go_away(self) -> None:
        """Stop serving: the port refuses connections and the calls in flight end with a
        reset stream, until :meth:`come_back`. State is kept."""

        async def stop() -> None:
            server, self._server = self._server, None
            if server is not None:
                server.close()
                server.drop_connections()
                await server.wait_closed()

        self._run(stop())

    def come_back(self) -> None:
        """Serve again, on the same port."""

        async def serve() -> None:
            if self._server is not None:
                return
            server = _Server([self], RawCodec())
            await server.start(self.host, self.port, reuse_address=True)
            self._server = server
            # (grpclib's listener is the asyncio.Server loop.create_server made)
            listening = cast("asyncio.Server | None", server._server)
            assert listening is not None and listening.sockets
            self.port = listening.sockets[0].getsockname()[1]

        self._run(serve())

    def stall(self) -> None:
        """Accept calls and answer none of them until :meth:`unstall`."""

        async def set_() -> None:
            self._stalled = asyncio.Event()

        self._run(set_())

    def unstall(self) -> None:
        """Answer calls again (those :meth:`stall` held are answered now)."""

        async def clear() -> None:
            stalled, self._stalled = self._stalled, None
            if stalled is not None:
                stalled.set()

        self._run(clear())

    def close(self) -> None:
        """Stop serving, stop the loop and close the state files (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._faucet is not None:
            self._faucet.close()
        if self._grpc_web is not None:
            self._grpc_web.close()
        if self._loop is not None:
            try:
                self.unstall()
                self.go_away()
            finally:
                self._loop.close(timeout=_JOIN)
        self.state.close()

    # -- knobs ---------------------------------------------------------------------------

    def faucet(self, address: str, amount: int) -> str:
        """Credit ``address`` with a fresh ``Coin<SUI>`` of ``amount`` MIST; its ID."""
        return self.state.faucet(address, amount)

    def advance_clock(self, ms: int) -> int:
        """Move the clock forward by ``ms``; the new time."""
        return self.state.ledger.advance_clock(ms)

    def set_clock(self, ms: int) -> None:
        """Set (and freeze) the clock at ``ms``; it never goes back."""
        self.state.ledger.set_clock(ms)

    def advance_epoch(self) -> int:
        """Start the next epoch now; returns it."""
        return self.state.advance_epoch()

    def refuse_next(self, count: int = 1, method: str = "*") -> None:
        """Answer the next ``count`` calls (of ``method``, or any) with RESOURCE_EXHAUSTED,
        as a rate-limiting node does."""
        with self._knob_lock:
            self._refuse_next[method] += count

    def garble_next(self, count: int = 1, method: str = "*") -> None:
        """Answer the next ``count`` calls (of ``method``, or any) with bytes that are no
        protobuf message."""
        with self._knob_lock:
            self._garble_next[method] += count

    def cancel_next(self, count: int = 1) -> None:
        """Cancel the next ``count`` transactions that write a shared object, as Sui's
        congestion control cancels a transaction (it charges gas and changes nothing
        else)."""
        with self._knob_lock:
            self._cancel_next += count

    def gas_paid(self, address: str | None = None) -> int:
        """Net gas paid by ``address`` (or by all)."""
        with self.state.lock:
            return self.state.gas_paid(address)

    def audit(self) -> dict[str, int]:
        """MIST by holder: ``minted == balances + escrows + broadcasts + gas``."""
        return self.state.audit()

    # -- serving -------------------------------------------------------------------------

    def __mapping__(self) -> dict[str, Handler]:
        out = {}
        for service, names in _METHODS.items():
            for name in names:
                streaming = name in _STREAMING
                out[f"/sui.rpc.v2.{service}/{name}"] = Handler(
                    self._handler(name, streaming),
                    Cardinality.UNARY_STREAM if streaming else Cardinality.UNARY_UNARY,
                    bytes,
                    bytes,
                )
        return out

    def _consume_knob(self, counter: Counter[str], name: str) -> bool:
        with self._knob_lock:
            for key in (name, "*"):
                if counter[key] > 0:
                    counter[key] -= 1
                    return True
            return False

    def _over_rate(self) -> bool:
        if self.rate_limit is None:
            return False
        now = time.monotonic()
        while self._recent and self._recent[0] <= now - 1.0:
            self._recent.popleft()
        if len(self._recent) >= self.rate_limit:
            return True
        self._recent.append(now)
        return False

    async def _admit(self, name: str) -> bool:
        """A call's knobs, in the order both paths (gRPC, gRPC-web) take them: counted,
        held while stalled, refused (Refusal) or delayed; whether to garble its answer."""
        self.calls[name] += 1
        if self._stalled is not None:
            await self._stalled.wait()
        if self._consume_knob(self._refuse_next, name) or self._over_rate():
            raise Refusal(Status.RESOURCE_EXHAUSTED, "Too many requests: rate limited")
        if name != "ExecuteTransaction" and self.read_latency > 0:
            await asyncio.sleep(self.read_latency)
        return self._consume_knob(self._garble_next, name)

    def _handler(self, name: str, streaming: bool) -> Callable[[Any], Awaitable[None]]:
        async def handle(stream: Any) -> None:
            data = await stream.recv_message()
            try:
                garble = await self._admit(name)
                if streaming:
                    async for frame in self._list_events(data):
                        await stream.send_message(GARBAGE if garble else bytes(frame))
                        garble = False
                    return
                answer = await self._answer(name, data, self._peer(stream))
            except Refusal as refusal:
                raise GRPCError(refusal.status, refusal.message) from None
            await stream.send_message(GARBAGE if garble else bytes(answer))

        return handle

    def _web_answer(self, name: str, data: bytes, peer: object) -> bytes:
        """A unary call that came over gRPC-web (:mod:`.grpc_web`, on its own thread),
        answered on the serving loop as :meth:`_handler` answers it over gRPC, knobs
        included."""

        async def handle() -> bytes:
            if self._server is None:
                # gone away (go_away): as a proxy in front of a node that is down answers
                raise Refusal(Status.UNAVAILABLE, "the node is not serving")
            garble = await self._admit(name)
            answer = await self._answer(name, data, peer)
            return GARBAGE if garble else bytes(answer)

        return cast(bytes, self._run(handle()))

    @staticmethod
    def _peer(stream: Any) -> object:
        """Which client connection (standing for which full node) a call came on."""
        peer = getattr(stream, "peer", None)
        return peer.addr() if peer is not None else None

    def _not_indexed_yet(self, object_id: str, peer: object) -> bool:
        """Whether ``index_lag`` hides ``object_id`` from a read on ``peer``'s connection."""
        if not self._created:
            return False
        now = time.monotonic()
        with self._knob_lock:
            for known, (at, _) in list(self._created.items()):
                if now - at >= self.index_lag:
                    del self._created[known]
            seen = self._created.get(_object_key(object_id))
        return seen is not None and seen[1] != peer

    def _note_created(self, executed: Any, peer: object) -> None:
        """Remember the objects ``executed`` created, for ``index_lag``."""
        if self.index_lag <= 0 or executed.effects is None:
            return
        created = sui_prot.ChangedObjectIdOperation.CREATED
        now = time.monotonic()
        with self._knob_lock:
            for change in executed.effects.changed_objects or ():
                if change.id_operation == created and change.object_id:
                    self._created[_object_key(change.object_id)] = (now, peer)

    @staticmethod
    def _parse(cls: Any, data: bytes) -> Any:
        try:
            return cls.parse(data)
        except Exception:  # betterproto2 raises assorted types for bad bytes
            raise Refusal(Status.INVALID_ARGUMENT, "the request does not decode") from None

    async def _answer(self, name: str, data: bytes, peer: object = None) -> Any:
        state = self.state
        if name == "ExecuteTransaction":
            return await self._execute(data, peer)
        if name == "SimulateTransaction":
            return simulate.simulate(state, data)
        if name == "VerifySignature":
            return answers.verify_signature(self._parse(sui_prot.VerifySignatureRequest, data))
        requests = {
            "GetServiceInfo": sui_prot.GetServiceInfoRequest,
            "GetObject": sui_prot.GetObjectRequest,
            "BatchGetObjects": sui_prot.BatchGetObjectsRequest,
            "GetTransaction": sui_prot.GetTransactionRequest,
            "GetCheckpoint": sui_prot.GetCheckpointRequest,
            "GetEpoch": sui_prot.GetEpochRequest,
            "ListOwnedObjects": sui_prot.ListOwnedObjectsRequest,
            "GetBalance": sui_prot.GetBalanceRequest,
            "ListDynamicFields": sui_prot.ListDynamicFieldsRequest,
        }
        request = self._parse(requests[name], data)
        if name == "GetObject" and self._not_indexed_yet(request.object_id or "", peer):
            self.lagged_reads += 1
            raise Refusal(Status.NOT_FOUND, f"Object {request.object_id} not found")
        with state.lock:
            if name == "GetServiceInfo":
                return answers.service_info(state)
            if name == "GetObject":
                return answers.get_object(state, request)
            if name == "BatchGetObjects":
                return answers.batch_get_objects(
                    state, request, lambda i: self._not_indexed_yet(i, peer)
                )
            if name == "GetTransaction":
                return self._transaction(request)
            if name == "GetCheckpoint":
                return answers.checkpoint(state, request)
            if name == "GetEpoch":
                return answers.epoch(state, request, not self.epoch_without_price)
            if name == "ListOwnedObjects":
                return answers.owned_objects(state, request)
            if name == "GetBalance":
                return answers.balance(state, request)
            return answers.dynamic_fields(state, request)

    def _transaction(self, request: sui_prot.GetTransactionRequest) -> Any:
        found = self.state.transaction(request.digest or "")
        if found is None:
            raise Refusal(Status.NOT_FOUND, f"Transaction {request.digest} not found")
        executed = sui_prot.ExecutedTransaction.parse(found[1])
        mask = request.read_mask
        return sui_prot.GetTransactionResponse(
            transaction=answers.masked(executed, mask, "GetTransaction")
        )

    async def _list_events(self, data: bytes) -> AsyncIterator[Any]:
        request = self._parse(sui_prot.ListEventsRequest, data)
        with self.state.lock:
            frames = list(answers.event_frames(self.state, request, self.scan_limit))
        for frame in frames:
            yield frame

    # -- executing ---------------------------------------------------------------------------

    async def _execute(self, data: bytes, peer: object = None) -> Any:
        request = self._parse(sui_prot.ExecuteTransactionRequest, data)
        transaction = request.transaction
        if transaction is None or transaction.bcs is None or not transaction.bcs.value:
            raise Refusal(Status.INVALID_ARGUMENT, "missing transaction.bcs")
        signatures = [bytes(s.bcs.value or b"") if s.bcs else b"" for s in request.signatures]
        tx_bytes = bytes(transaction.bcs.value)
        with self.state.lock:
            # a transaction executed already: its effects again (as a node answers)
            done = self.state.transaction(base58(tx_digest(tx_bytes)))
            if done is not None:
                execute.check_signature(parse_tx(tx_bytes), tx_bytes, signatures)
                executed = sui_prot.ExecutedTransaction.parse(done[1])
                executed = answers.masked(executed, request.read_mask, "ExecuteTransaction")
                return sui_prot.ExecuteTransactionResponse(transaction=executed)
            checked = execute.check(self.state, tx_bytes, signatures)
        digest = checked.digest_text
        for object_id, (version, object_digest) in checked.owned.items():
            holder = self._locks.get(object_id)
            if holder is not None and holder != digest:
                self.lock_conflicts += 1
                raise Refusal(
                    Status.INVALID_ARGUMENT,
                    "Transaction is rejected as invalid by more than 1/3 of validators by stake "
                    f"(non-retriable): ObjectLockConflict {{ obj_ref: ({object_id}, "
                    f"SequenceNumber({version}), o#{object_digest}), pending_transaction: "
                    f"{holder} }}",
                )
        congested = self._congested(checked)
        for object_id in checked.owned:
            self._locks[object_id] = digest
        written = [i for i, mutable in checked.shared.items() if mutable]
        for object_id in written:
            self._writing.setdefault(object_id, set()).add(digest)
        sender = checked.tx.sender
        self._in_flight[sender] += 1
        self.peak_in_flight[sender] = max(self.peak_in_flight[sender], self._in_flight[sender])
        try:
            if self.tx_latency > 0:
                await asyncio.sleep(self.tx_latency)
            executed = execute.execute(self.state, checked, congested)
        finally:
            self._in_flight[sender] -= 1
            for object_id in checked.owned:
                if self._locks.get(object_id) == digest:
                    del self._locks[object_id]
            for object_id in written:
                holders = self._writing.get(object_id, set())
                holders.discard(digest)
                if not holders:
                    self._writing.pop(object_id, None)
        self._note_created(executed, peer)
        executed = answers.masked(executed, request.read_mask, "ExecuteTransaction")
        return sui_prot.ExecuteTransactionResponse(transaction=executed)

    def writing(self, object_id: str) -> bool:
        """Whether a transaction in flight writes ``object_id`` (a test's cue that the
        next one touching it meets contention)."""
        return bool(self._writing.get(object_id))

    def _congested(self, checked: execute.Checked) -> list[str]:
        """The shared objects ``checked`` is cancelled on: all it writes when a
        :meth:`cancel_next` is pending, else (with probability ``contention``) those that
        a transaction in flight writes too."""
        written = sorted(i for i, mutable in checked.shared.items() if mutable)
        if not written:
            return []
        with self._knob_lock:
            if self._cancel_next > 0:
                self._cancel_next -= 1
                return written
        busy = sorted(i for i in checked.shared if self._writing.get(i))
        if busy and self.contention > 0 and self._random.random() < self.contention:
            return busy
        return []
