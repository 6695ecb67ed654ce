"""The node stand-in's gRPC-web front (dtp/testing/sui_node/grpc_web.py) and
``BatchGetObjects``: what Mysten's TypeScript SDK calls (tests/web/test_sui_escrow.py runs
the SDK itself against it). Requests are made here by hand, as the gRPC-web protocol
frames them (binary and base64 text), and the answers read back with pysui's messages."""

from __future__ import annotations

import base64
import http.client
import struct
from collections.abc import Iterator
from urllib.parse import unquote, urlsplit

import pysui.sui.sui_grpc.suimsgs.google.protobuf as pb
import pysui.sui.sui_grpc.suimsgs.sui.rpc.v2 as sui_prot
import pytest

from dtp.testing.sui_node import SuiNodeStandIn
from dtp.testing.sui_node.grpc_web import frame

OWNER = "0x" + "11" * 32
MISSING = "0x" + "22" * 32


@pytest.fixture
def node() -> Iterator[SuiNodeStandIn]:
    with SuiNodeStandIn(grpc_web_port=0) as node:
        yield node


def post(
    node: SuiNodeStandIn,
    path: str,
    body: bytes,
    kind: str = "application/grpc-web+proto",
    method: str = "POST",
) -> tuple[int, dict[str, str], bytes]:
    url = urlsplit(node.grpc_web_url)
    conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=30)
    try:
        headers = {"Content-Type": kind, "Origin": "http://page.example"}
        conn.request(method, path, body=body, headers=headers)
        answer = conn.getresponse()
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
    finally:
        conn.close()


def frames(body: bytes) -> list[tuple[int, bytes]]:
    out = []
    while body:
        flag, length = struct.unpack(">BI", body[:5])
        out.append((flag, body[5 : 5 + length]))
        body = body[5 + length :]
    return out


BATCH = "/sui.rpc.v2.LedgerService/BatchGetObjects"


def test_batch_get_objects_answers_each_object_or_its_error_in_order(
    node: SuiNodeStandIn,
) -> None:
    coin = node.faucet(OWNER, 10**9)
    request = sui_prot.BatchGetObjectsRequest(
        requests=[
            sui_prot.GetObjectRequest(object_id=MISSING),
            sui_prot.GetObjectRequest(object_id=coin),
        ],
        read_mask=pb.FieldMask(paths=["object_id", "version", "owner"]),
    )
    status, headers, body = post(node, BATCH, frame(bytes(request)))
    assert status == 200 and headers["access-control-allow-origin"] == "*"
    (flag, message), (trailer_flag, trailers) = frames(body)
    assert flag == 0 and trailer_flag == 0x80
    assert b"grpc-status: 0" in trailers
    missing, found = sui_prot.BatchGetObjectsResponse.parse(message).objects
    assert missing.object is None and missing.error is not None
    assert missing.error.code == 5 and MISSING in missing.error.message  # NOT_FOUND
    assert found.object is not None and found.object.object_id == coin
    assert found.object.owner is not None and found.object.owner.address == OWNER
    # the mask holds: no digest, no contents
    assert found.object.digest is None and found.object.contents is None
    # a full node's default mask: object_id, version, digest
    bare = sui_prot.BatchGetObjectsRequest(requests=[sui_prot.GetObjectRequest(object_id=coin)])
    _, _, body = post(node, BATCH, frame(bytes(bare)))
    (only,) = sui_prot.BatchGetObjectsResponse.parse(frames(body)[0][1]).objects
    assert only.object is not None and only.object.digest and only.object.owner is None
    assert node.calls["BatchGetObjects"] == 2


def test_a_malformed_id_fails_the_whole_batch(node: SuiNodeStandIn) -> None:
    request = sui_prot.BatchGetObjectsRequest(
        requests=[sui_prot.GetObjectRequest(object_id="0xnot-hex")]
    )
    status, headers, body = post(node, BATCH, frame(bytes(request)))
    # trailers-only: the status in the headers, no body
    assert status == 200 and body == b""
    assert headers["grpc-status"] == "3"  # INVALID_ARGUMENT
    assert "object_id" in unquote(headers["grpc-message"])


def test_the_text_form_is_base64_both_ways(node: SuiNodeStandIn) -> None:
    request = sui_prot.GetEpochRequest(read_mask=pb.FieldMask(paths=["reference_gas_price"]))
    status, headers, body = post(
        node,
        "/sui.rpc.v2.LedgerService/GetEpoch",
        base64.b64encode(frame(bytes(request))),
        kind="application/grpc-web-text",
    )
    assert status == 200 and headers["content-type"].startswith("application/grpc-web-text")
    (_, message), (_, trailers) = frames(base64.b64decode(body))
    answer = sui_prot.GetEpochResponse.parse(message)
    assert answer.epoch is not None and answer.epoch.reference_gas_price == 1000
    assert b"grpc-status: 0" in trailers


def test_refusals_and_knobs_come_back_as_grpc_statuses(node: SuiNodeStandIn) -> None:
    # an unknown method, a stream the front does not serve, a bad content type, bad frames
    for path, body, kind, code in [
        ("/sui.rpc.v2.LedgerService/NoSuchCall", frame(b""), "application/grpc-web", "12"),
        ("/sui.rpc.v2.LedgerService/ListEvents", frame(b""), "application/grpc-web", "12"),
        (BATCH, frame(b""), "application/json", "3"),
        (BATCH, b"\x01\x00\x00\x00\x00", "application/grpc-web", "3"),  # compressed
        (BATCH, b"\x00\x00\x00\x00\x09ab", "application/grpc-web", "3"),  # truncated
        (BATCH, b"!!", "application/grpc-web-text", "3"),  # not base64
    ]:
        status, headers, answer = post(node, path, body, kind)
        assert (status, headers["grpc-status"], answer) == (200, code, b""), path
    # the stand-in's knobs apply as over gRPC
    node.refuse_next(1, "GetEpoch")
    _, headers, _ = post(node, "/sui.rpc.v2.LedgerService/GetEpoch", frame(b""))
    assert headers["grpc-status"] == "8"  # RESOURCE_EXHAUSTED
    _, headers, body = post(node, "/sui.rpc.v2.LedgerService/GetEpoch", frame(b""))
    assert "grpc-status" not in headers and b"grpc-status: 0" in frames(body)[-1][1]


def test_a_node_gone_away_is_unavailable_there_too(node: SuiNodeStandIn) -> None:
    node.go_away()
    _, headers, _ = post(node, "/sui.rpc.v2.LedgerService/GetEpoch", frame(b""))
    assert headers["grpc-status"] == "14"  # UNAVAILABLE
    node.come_back()
    _, headers, body = post(node, "/sui.rpc.v2.LedgerService/GetEpoch", frame(b""))
    assert "grpc-status" not in headers and b"grpc-status: 0" in frames(body)[-1][1]


def test_a_browser_preflight_is_allowed(node: SuiNodeStandIn) -> None:
    status, headers, body = post(node, BATCH, b"", method="OPTIONS")
    assert status == 204 and body == b""
    assert headers["access-control-allow-origin"] == "*"
    assert "POST" in headers["access-control-allow-methods"]
    assert "grpc-status" in headers["access-control-expose-headers"]


def test_without_the_front_there_is_no_url() -> None:
    with SuiNodeStandIn() as node:
        assert node.grpc_web_url is None
