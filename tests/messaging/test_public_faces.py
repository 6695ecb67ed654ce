"""The public faces of the RPC core and of sealed messages: ``dtp.messaging._protocol``
and ``dtp.messaging.sealed`` keep every name callers import from them, as the very
objects their parts define, and ``RpcProtocol`` / ``SealedInbox`` keep the members the
RPC drivers and applications use (docs/architecture.md, "Layout")."""

from __future__ import annotations

import importlib
import inspect

import pytest

from dtp.identity.keys import HostIdentity
from dtp.messaging import _protocol as protocol
from dtp.messaging import sealed
from dtp.messaging._protocol import RpcProtocol
from dtp.messaging.sealed import SealedInbox

HOST = "0x" + "ab" * 32

# names imported from the faces by other modules (and by applications), beyond __all__
PROTOCOL_EXTRA = [
    "MAX_ID",
    "MAX_TIMEOUT_MS",
    "_check_count",
    "_check_our_method",
    "_check_our_timeout",
    "_check_wait",
]
SEALED_EXTRA = ["_PROTECTED_SEEN"]

# each member's parameters (a keyword-only one after "*")
RPC_MEMBERS = {
    "begin_request": "method params now timeout tracked",
    "cancel": "request_id",
    "check_request": "method params * timeout meta reserve",
    "clear_output": "",
    "data_to_send": "",
    "forget_request": "request_id",
    "put_back": "data",
    "receive_data": "data now",
    "send_request": "method params * now timeout meta timer",
    "take_request": "data",
    "take_response": "request_id data",
}


def _parameters(function: object) -> str:
    words = []
    for parameter in list(inspect.signature(function).parameters.values())[1:]:
        if parameter.kind is parameter.KEYWORD_ONLY and "*" not in words:
            words.append("*")
        words.append(parameter.name)
    return " ".join(words)


@pytest.mark.parametrize(
    ("face", "extra"),
    [(protocol, PROTOCOL_EXTRA), (sealed, SEALED_EXTRA)],
    ids=["protocol", "sealed"],
)
def test_the_face_keeps_every_name_as_the_object_its_part_defines(
    face: object, extra: list[str]
) -> None:
    for name in [*face.__all__, *extra]:
        value = getattr(face, name)
        home = getattr(value, "__module__", None)
        if home is not None and home.startswith("dtp.") and not isinstance(value, int):
            assert getattr(importlib.import_module(home), name) is value, name


def test_rpc_protocol_keeps_its_members_and_their_signatures() -> None:
    for name, signature in RPC_MEMBERS.items():
        assert _parameters(getattr(RpcProtocol, name)) == signature, name
    proto = RpcProtocol(first_id=1)
    assert repr(proto).startswith("<dtp.messaging._protocol.RpcProtocol object at ")
    # the live views the drivers keep: the same objects for the protocol's life
    output, unanswered = proto.output, proto.unanswered
    proto.send_request("echo", b"x")
    assert proto.output is output and len(output) == 1 and proto.queued_bytes == len(output[0])
    assert proto.unanswered is unanswered


def test_sealed_inbox_keeps_its_face() -> None:
    inbox = SealedInbox(HostIdentity.generate(), HOST)
    with inbox:
        assert repr(inbox).startswith("<dtp.messaging.sealed.SealedInbox object at ")
        assert inbox.cursor is None and inbox.duplicates == 0 and inbox.rejected == {}
        assert callable(inbox.fetch) and callable(inbox.accept) and callable(inbox.register)
    assert inspect.signature(SealedInbox).parameters.keys() == {
        "identity",
        "host_id",
        "ledger",
        "state_path",
        "max_seen",
        "verify_hosts",
        "max_age",
    }
