"""JsonRpcHandler: what an answer tells the caller about a failing method, a result
whose encoding fails in any way, and ids that JSON-RPC 2.0 does not allow."""

from __future__ import annotations

import json
from typing import Any

from dtp.messaging import errors as E
from dtp.messaging.jsonrpc import JsonRpcHandler


def _answer(handler: JsonRpcHandler, document: Any) -> Any:
    raw = handler(json.dumps(document).encode())
    assert raw is not None
    return json.loads(raw)


def test_a_methods_own_typeerror_text_stays_private() -> None:
    """The method's TypeError text went to the caller as the error message (the RPC
    layer sends it only when the params could not be bound); now only that case."""

    def leaky(params: Any) -> Any:
        raise TypeError("password=hunter2")

    def takes_none() -> Any:
        return 1

    handler = JsonRpcHandler({"leaky": leaky, "none": takes_none})
    got = _answer(handler, {"jsonrpc": "2.0", "method": "leaky", "params": [1], "id": 1})
    assert got["error"]["code"] == E.INVALID_PARAMS
    assert "hunter2" not in json.dumps(got)
    bound = _answer(handler, {"jsonrpc": "2.0", "method": "none", "params": [1], "id": 2})
    assert bound["error"]["code"] == E.INVALID_PARAMS
    assert "positional argument" in bound["error"]["message"]


def test_a_result_whose_encoding_fails_in_any_way_fails_that_answer_alone() -> None:
    """A mapping whose items() raises (say, changed by another thread) made the whole
    batch fail (the RPC call got -32603); now that answer alone is an internal error."""

    class Broken(dict[str, Any]):
        def items(self) -> Any:
            raise RuntimeError("changed during iteration")

    handler = JsonRpcHandler({"bad": lambda p: Broken(a=1), "ok": lambda p: "fine"})
    got = _answer(
        handler,
        [
            {"jsonrpc": "2.0", "method": "bad", "id": 1},
            {"jsonrpc": "2.0", "method": "ok", "id": 2},
        ],
    )
    assert got[0]["id"] == 1 and got[0]["error"]["code"] == E.INTERNAL_ERROR
    assert got[1] == {"jsonrpc": "2.0", "result": "fine", "id": 2}


def test_an_id_that_is_not_a_string_number_or_null_is_an_invalid_request() -> None:
    handler = JsonRpcHandler({"ok": lambda p: 1})
    for bad in ({"a": 1}, [1], True):
        got = _answer(handler, {"jsonrpc": "2.0", "method": "ok", "id": bad})
        assert got["error"]["code"] == E.INVALID_REQUEST and got["id"] is None
    for good in ("x", 7, 1.5, None):
        got = _answer(handler, {"jsonrpc": "2.0", "method": "ok", "id": good})
        assert got == {"jsonrpc": "2.0", "result": 1, "id": good}
