"""``Connection`` is one class put together from mixins (dtp/protocol/connection/): each
method is defined once, so no mixin's method hides another's, and the shared base only
declares what the mixins use."""

from __future__ import annotations

import dtp.protocol.connection as package
from dtp.protocol.connection.base import _ConnectionState
from dtp.protocol.connection.core import Connection


def _own_names(cls: type) -> set[str]:
    return {name for name in vars(cls) if not (name.startswith("__") and name.endswith("__"))}


def test_each_method_of_connection_is_defined_in_one_class_only() -> None:
    parts = [cls for cls in Connection.__mro__ if cls not in (Connection, _ConnectionState, object)]
    assert [cls.__name__ for cls in parts] == [
        "_Handshake",
        "_Streams",
        "_FastSend",
        "_FastReceive",
        "_Lending",
        "_Records",
        "_Retransmit",
        "_Inbound",
    ]
    seen: dict[str, str] = {}
    for cls in (Connection, *parts):
        for name in _own_names(cls):
            assert name not in seen, f"{name} is defined in both {seen[name]} and {cls.__name__}"
            seen[name] = cls.__name__
    # every method and property the connection had is still there
    for name in (
        "receive_data",
        "data_to_send",
        "next_event",
        "handle_timer",
        "accept",
        "open_stream",
        "send_stream_data",
        "seal_fast",
        "take_fast",
        "lend",
        "send_datagrams",
        "send_receipt",
        "_build_records",
        "_handle_frame",
        "_handle_record",
        "_handle_records",
        "_process_input",
        "_fail",
        "_terminate",
        "_on_stream_frame",
        "_take_back",
        "take_back",
        "sealed_kept",
        "_fast_stream_frame",
        "_process_direct",
        "_take_run",
        "_on_acked",
        "_requeue",
        "_finish_handshake",
        "usage",
        "max_datagram_size",
    ):
        assert name in seen, name


def test_the_shared_base_holds_declarations_only() -> None:
    # its annotations and TYPE_CHECKING stubs exist for the type checker: an attribute
    # or method of its own at run time would stand behind every mixin's
    assert _own_names(_ConnectionState) == set()
    assert "_streams" in _ConnectionState.__annotations__


def test_the_package_gives_the_old_module_names() -> None:
    for name in package.__all__:
        assert getattr(package, name) is not None, name
    assert package.Connection is Connection
    assert package._parse_params is package.config.parse_params
