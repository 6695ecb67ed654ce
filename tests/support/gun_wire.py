"""A Gun peer written from Gun's wire for the tests of dtp's Gun endpoint: messages as
gun.js sends them, over a blocking WebSocket (``websockets``' sync client), with no
gun.js of its own -- so a test can send what gun.js never would."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable
from typing import Any

from websockets.sync.client import connect

_ids = itertools.count(1)


def node(soul: str, fields: dict[str, Any], state: float | dict[str, Any]) -> dict[str, Any]:
    """A node as gun writes it: ``{"_": {"#": soul, ">": states}, **fields}``."""
    states = state if isinstance(state, dict) else dict.fromkeys(fields, state)
    return {"_": {"#": soul, ">": states}, **fields}


class GunWireClient:
    """One WebSocket to a Gun relay; every message it receives is kept in order."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        ws_url = url.replace("http", "ws", 1)
        # (entered as a context manager: websockets 17 warns about a connection that is not)
        self.ws = connect(
            ws_url if ws_url.endswith("gun") else ws_url + "gun", open_timeout=timeout
        ).__enter__()
        self.timeout = timeout
        self.received: list[dict[str, Any]] = []
        self.frames: list[str] = []
        self._read = 0

    def close(self) -> None:
        self.ws.close()

    def __enter__(self) -> GunWireClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, message: dict[str, Any] | list[dict[str, Any]] | str) -> None:
        self.ws.send(message if isinstance(message, str) else json.dumps(message))

    def _pump(self, timeout: float) -> bool:
        try:
            frame = self.ws.recv(timeout=timeout)
        except TimeoutError:
            return False
        assert isinstance(frame, str), "a Gun relay sends text frames"
        self.frames.append(frame)
        data = json.loads(frame)
        self.received.extend(data if isinstance(data, list) else [data])
        return True

    def wait_for(
        self, test: Callable[[dict[str, Any]], bool], timeout: float | None = None
    ) -> dict[str, Any]:
        """The first message received (now or before) that passes ``test``."""
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        seen = 0
        while True:
            for msg in self.received[seen:]:
                if test(msg):
                    return msg
            seen = len(self.received)
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no such message within the time; got {self.received}")
            self._pump(left)

    def quiet(self, seconds: float) -> list[dict[str, Any]]:
        """Everything that arrives within ``seconds``."""
        start = len(self.received)
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self._pump(left)
        return self.received[start:]

    def answer(self, msg_id: str, timeout: float | None = None) -> dict[str, Any]:
        """The message answering ``msg_id``."""
        return self.wait_for(lambda m: m.get("@") == msg_id, timeout)

    def put(self, graph: dict[str, Any]) -> dict[str, Any]:
        """Send a put and return its acknowledgement."""
        msg_id = f"put{next(_ids)}"
        self.send({"#": msg_id, "put": graph})
        return self.answer(msg_id)

    def get(self, soul: Any, field: Any = None) -> dict[str, Any]:
        """Send a get and return its answer."""
        msg_id = f"get{next(_ids)}"
        get: dict[str, Any] = {"#": soul}
        if field is not None:
            get["."] = field
        self.send({"#": msg_id, "get": get})
        return self.answer(msg_id)


__all__ = ["GunWireClient", "node"]
