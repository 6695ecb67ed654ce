"""Small fixes of session 22, each with the failure it had.

- ``export(max_batch_bytes=2**40)`` on the C table allocated its batch buffer whole and
  raised MemoryError at the first batch; both backends now cap a batch at
  ``HAM_EXPORT_MAX_BATCH`` (the twin never failed, but would have made one batch where
  the C table makes several: the two stay alike).
- ``RequestPayments`` and ``ResponseFeePolicy`` took any option values, which failed (or
  let requests through) only once a client came; ``RpcServer.serve_stream`` handed any
  ``peer_address`` to handlers, in whatever form it came.
- ``DTPSocket.recv_into(buf, nbytes)`` took the general path on every call; it now
  reads through the lent lane as ``recv_into(buf)`` does.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from types import SimpleNamespace
from typing import Any

import pytest

import dtp.socket
from dtp._reference.ham import decode_ham_batch, encode_ham_batch
from dtp._reference.limits import HAM_EXPORT_MAX_BATCH
from dtp._types import HamUpdate
from dtp.chain.local import LocalLedger
from dtp.chain.objects import Sla
from dtp.errors import InvalidObjectId
from dtp.graph.store import Graph
from dtp.keys import HostIdentity
from dtp.messaging.rpc import RequestPayments, ResponseFeePolicy, RpcClient, RpcServer
from tests.conftest import BACKENDS

each_backend = pytest.mark.parametrize("b", BACKENDS, ids=lambda b: b.name)


def _updates() -> list[HamUpdate]:
    return [HamUpdate(b"soul%d" % i, b"f", 1.0, b"v%d" % i) for i in range(50)]


@each_backend
@pytest.mark.parametrize("size", [HAM_EXPORT_MAX_BATCH + 1, 1 << 40, 2**63])
def test_a_huge_batch_size_exports_the_table(b: SimpleNamespace, size: int) -> None:
    g = b.HamGraph(seed=bytes(16))
    g.merge(encode_ham_batch(_updates()), 5.0)
    batches = list(g.export(size))
    assert len(batches) == 1
    assert sorted(decode_ham_batch(batches[0])) == sorted(_updates())


@each_backend
def test_batches_stop_at_the_cap(b: SimpleNamespace) -> None:
    # 70 values of 1 MiB: more than one capped batch holds
    g = b.HamGraph(seed=bytes(16))
    big = [HamUpdate(b"s%d" % i, b"f", 1.0, bytes(1 << 20)) for i in range(70)]
    for i in range(0, 70, 10):
        g.merge(encode_ham_batch(big[i : i + 10]), 5.0)
    batches = list(g.export(1 << 40))
    assert len(batches) == 2
    assert all(len(batch) <= HAM_EXPORT_MAX_BATCH for batch in batches)
    assert sum(len(decode_ham_batch(batch)) for batch in batches) == 70


def test_graph_export_with_a_huge_batch_size(tmp_path: object) -> None:
    with Graph() as graph:
        graph.put("alice", {"name": "Alice", "age": 30})
        got = [u for batch in graph.export(1 << 40) for u in decode_ham_batch(batch)]
        assert {u.field for u in got if u.soul == b"alice"} >= {b"name", b"age"}


# -- RPC arguments ------------------------------------------------------------------------
# RequestPayments and ResponseFeePolicy took any values, which failed (or let requests
# through) only once a client came; serve_stream handed any peer_address to handlers.

_CID = "0x" + "ab" * 32
_SLA = Sla(price_per_kib=1, price_per_request=1, min_deposit=10)
_KEY = bytes(32)

_BAD_PAYMENTS: dict[str, tuple[type[Exception], dict[str, Any]]] = {
    "sla None": (TypeError, {"sla": None}),
    "key short": (TypeError, {"client_public_key": bytes(31)}),
    "key str": (TypeError, {"client_public_key": "00" * 32}),
    "deposited negative": (ValueError, {"deposited": -1}),
    "deposited float": (TypeError, {"deposited": 1.5}),
    "credit negative": (ValueError, {"credit_requests": -1}),
    "credit bool": (TypeError, {"credit_requests": True}),
    "on_receipt not callable": (TypeError, {"on_receipt": 5}),
    "connection id": (InvalidObjectId, {"connection_id": "connection-1"}),
}


@pytest.mark.parametrize("case", list(_BAD_PAYMENTS))
def test_request_payments_refuses_bad_options(case: str) -> None:
    error, change = _BAD_PAYMENTS[case]
    args: dict[str, Any] = {
        "connection_id": _CID,
        "sla": _SLA,
        "client_public_key": _KEY,
        "deposited": 100,
    }
    args.update(change)
    with pytest.raises(error):
        RequestPayments(**args)


def test_request_payments_takes_good_options() -> None:
    payments = RequestPayments("0x" + "AB" * 32, _SLA, _KEY, 0, credit_requests=3)
    assert payments.connection_id == _CID  # (as receipts name it)
    assert payments.credit_requests == 3


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"min_amount": -1}, ValueError),
        ({"min_amount": "5"}, TypeError),
        ({"required": "yes"}, TypeError),
    ],
)
def test_response_fee_policy_refuses_bad_options(
    tmp_path: Any, change: dict[str, Any], error: type[Exception]
) -> None:
    args: dict[str, Any] = {"min_amount": 5}
    args.update(change)
    with LocalLedger(str(tmp_path / "ledger.db")) as ledger, pytest.raises(error):
        ResponseFeePolicy(ledger, HostIdentity.generate(), **args)


def _serve_once(peer_address: Any) -> tuple[Any, BaseException | None]:
    """serve_stream on one end of a socketpair with ``peer_address``; returns what a
    handler saw as its peer address and what serve_stream raised."""
    server = RpcServer(workers=0)
    server.register("who", lambda params, ctx: ctx.peer_address, context=True)
    a, b = socket.socketpair()
    raised: list[BaseException] = []

    def run() -> None:
        try:
            server.serve_stream(a, peer_address=peer_address)
        except BaseException as exc:
            raised.append(exc)
        finally:
            a.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    seen: Any = None
    try:
        with RpcClient(b, timeout=30) as client:
            seen = client.call("who")
    except Exception as exc:  # the stream closed at once: the refusal is the server's
        seen = exc
    finally:
        b.close()
        thread.join(30)
        server.close()
    assert not thread.is_alive()
    return seen, (raised[0] if raised else None)


def test_serve_stream_refuses_a_peer_address_that_is_not_one() -> None:
    _, raised = _serve_once(5)
    assert isinstance(raised, InvalidObjectId)
    _, raised = _serve_once("alice")
    assert isinstance(raised, InvalidObjectId)


def test_serve_stream_gives_handlers_the_address_in_its_usual_form() -> None:
    seen, raised = _serve_once("0x5")
    assert raised is None
    assert seen == "0x" + "0" * 63 + "5"


# -- recv_into(buf, nbytes) ---------------------------------------------------------------
# recv_into(buf, n) took the general path's locking and checks on every call, where
# recv_into(buf) reads through the lent lane in one call: a paid server's reads (the
# PaidSocket passes what the gate allows as nbytes) all paid for it.


def _read_with_nbytes(total: int, bufsize: int, sizes: list[int]) -> tuple[int, int]:
    """Read ``total`` bytes from a DTP server with recv_into(buf, n) into a buffer of
    ``bufsize``, n cycling through ``sizes``, checking that each read stays within its
    n and that the data arrives whole and in order; returns (the reads, how many went
    through the general path's lane read)."""
    server_id = HostIdentity.generate()
    payload = os.urandom(total)
    with dtp.socket.create_server(("127.0.0.1", 0), identity=server_id) as server:

        def serve() -> None:
            sock, _ = server.accept(timeout=30)
            with sock:
                for i in range(0, len(payload), 65536):
                    sock.sendall(payload[i : i + 65536])
                sock.recv(1)

        thread = threading.Thread(target=serve)
        thread.start()
        with dtp.socket.create_connection(
            server.address, timeout=30, server_key=server.noise_public_key
        ) as sock:
            engine = sock._engine
            general = 0
            recv_lent = engine.recv_lent

            def counting_recv_lent(*args: Any) -> int:
                nonlocal general
                general += 1
                return recv_lent(*args)

            engine.recv_lent = counting_recv_lent  # type: ignore[method-assign]
            buf = bytearray(bufsize)
            received = hashlib.sha256()
            got = calls = 0
            while got < len(payload):
                want = min(sizes[calls % len(sizes)], len(payload) - got)
                buf[want:] = b"\xee" * (len(buf) - want)
                n = sock.recv_into(buf, want)
                assert 0 < n <= want
                assert buf[want:] == b"\xee" * (len(buf) - want)  # past nbytes: untouched
                received.update(memoryview(buf)[:n])
                got += n
                calls += 1
            sock.sendall(b"x")
            assert received.digest() == hashlib.sha256(payload).digest()
        thread.join(30)
        assert not thread.is_alive()
    return calls, general


def test_recv_into_with_nbytes_reads_through_the_lane() -> None:
    calls, general = _read_with_nbytes(32 << 20, 1 << 20, [1 << 20, (1 << 20) - 1])
    # the one-call lane read, as for recv_into(buf): the general path only when the
    # lane handed the stream back (about a read in four here; before, every read)
    assert general * 2 <= calls, (general, calls)


def test_recv_into_with_small_nbytes_keeps_the_rest() -> None:
    # reads that end inside a record: the rest of it waits for the next read
    _read_with_nbytes(8 << 20, 1 << 16, [1, 100, 4096, 65535, 1 << 16])
