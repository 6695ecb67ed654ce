"""``Connection`` is one class with two mixins (dtp/protocol/connection/) and the
objects it holds (its ``StreamTable`` and its ``RecordLayer``): each method is defined
once, so no mixin's method hides another's, the shared base only declares what the
mixins use, and neither object calls anything of the connection's."""

from __future__ import annotations

import dtp.protocol.connection as package
from dtp.protocol.connection._base import _ConnectionState
from dtp.protocol.connection._core import Connection


def _own_names(cls: type) -> set[str]:
    return {name for name in vars(cls) if not (name.startswith("__") and name.endswith("__"))}


def test_each_method_of_connection_is_defined_in_one_class_only() -> None:
    parts = [cls for cls in Connection.__mro__ if cls not in (Connection, _ConnectionState, object)]
    assert [cls.__name__ for cls in parts] == ["_Streams", "_FastPaths"]
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
        "awaiting_acks",
        "send_control",
        "records_sent",
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
    assert package._parse_params is package._config.parse_params


def test_the_stream_table_is_an_object_the_connection_holds() -> None:
    # it imports no part of the connection (so it can call none back) ...
    import ast
    import inspect

    import dtp.protocol.connection._stream_table as table_module

    tree = ast.parse(inspect.getsource(table_module))
    imported = {
        node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module is not None
    }
    parts = {m for m in imported if m.startswith("dtp.protocol.connection")}
    assert parts == {"dtp.protocol.connection._config"}, parts
    # (tests/protocol/test_stream_credit.py checks a connection keeps its streams there)


def test_the_stream_table_opens_counts_and_forgets_streams() -> None:
    import pytest

    from dtp.errors import LocalProtocolError, RemoteProtocolError
    from dtp.protocol._state import RecvState, SendState
    from dtp.protocol.connection._stream_table import StreamTable

    client = StreamTable(is_client=True, max_streams=2, stream_window=1000, connection_window=4000)
    client.send_window = 500
    with pytest.raises(LocalProtocolError):
        client.open()  # the peer allowed none yet
    client.peer_max = 2
    assert client.can_open()
    assert [client.open(), client.open()] == [0, 2]
    assert not client.can_open()
    with pytest.raises(LocalProtocolError):
        client.open()
    assert client.get(2).send_credit == 500 and client.get(2).recv_limit == 1000
    with pytest.raises(LocalProtocolError):
        client.get(4)
    # a peer (server) stream ID opens every lower one, within our limit of 2
    assert list(client.open_peer_up_to(3)) == [1, 3]
    assert client.peer_next_id() == 5 and client.client_streams() == 2
    with pytest.raises(RemoteProtocolError):
        client.open_peer_up_to(5)
    assert list(client.by_id) == [0, 2, 1, 3]
    # a stream is forgotten once both halves ended; a peer stream's place goes back
    peer_stream = client.get(3)
    peer_stream.send_state = SendState.RESET
    assert not client.forget_if_done(peer_stream)  # still receiving
    peer_stream.recv_state = RecvState.DONE
    assert client.forget_if_done(peer_stream)
    assert 3 not in client.by_id and client.ended(3) and not client.ended(5)
    assert client.max_streams_limit() == 3
    ours = client.get(0)
    ours.send_state, ours.recv_state = SendState.RESET, RecvState.RESET
    assert not client.forget_if_done(ours)  # forgotten, but no place of the peer's
    assert client.ended(0) and not client.ended(4)
    with pytest.raises(RemoteProtocolError):
        client.check_not_unopened(4)
    client.check_not_unopened(2)


def test_the_record_layer_is_an_object_the_connection_holds() -> None:
    # it imports no part of the connection but the config and the stream table (so it
    # can call nothing of the connection back), and names no method of the connection
    import ast
    import inspect

    import dtp.protocol.connection._records as records_module
    from dtp.protocol.connection._records import RecordLayer

    tree = ast.parse(inspect.getsource(records_module))
    imported = {
        node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module is not None
    }
    parts = {m for m in imported if m.startswith("dtp.protocol.connection")}
    assert parts == {
        "dtp.protocol.connection._config",
        "dtp.protocol.connection._stream_table",
    }, parts
    # every attribute it reaches through self is its own (slots and methods), or one
    # of the objects it is handed (the config, the stream table)
    own = set(RecordLayer.__slots__) | set(vars(RecordLayer))
    used = {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
    }
    assert used <= own, used - own
    connection_methods = {
        name for name in vars(Connection) if callable(getattr(Connection, name, None))
    }
    assert not (used - set(RecordLayer.__slots__)) & connection_methods - set(vars(RecordLayer))


def test_the_fast_paths_call_nothing_of_the_streams_api() -> None:
    # the streams API seals at once through the fast paths (and takes a lent stream
    # back first); the other way round, the fast paths count a read themselves
    import ast
    import inspect

    import dtp.protocol.connection._fast_paths as fast_module
    from dtp.protocol.connection._streams import _Streams

    tree = ast.parse(inspect.getsource(fast_module))
    used = {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
    }
    assert not used & set(vars(_Streams)), used & set(vars(_Streams))
