"""The daemon's small HTTP server (dtp.daemon._web) on its own: what it answers, what it
refuses, its limits, and its control socket -- a path too long for a Unix socket
address included."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from dtp.daemon import _web
from dtp.daemon._control import unix_get
from dtp.daemon._web import MAX_HEAD, MAX_STOP_WATCHERS, StatusEndpoint
from dtp.errors import MissingExtra

STATUS = {"live": True, "services": {"svc": {"bytes_in": 5}}}


def _endpoint(phase: str = "serving") -> StatusEndpoint:
    return StatusEndpoint(
        lambda: STATUS,
        lambda: {"samples": []},
        lambda accept: (b"dtp_x 1\n", "text/plain; version=0.0.4"),
        "<!doctype html><p>page</p>",
        healthy=lambda: phase,
    )


async def _raw(address: tuple[str, int], request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(*address)
    writer.write(request)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    await writer.wait_closed()
    return answer


def _run(test: Callable[[StatusEndpoint, tuple[str, int]], Awaitable[None]], **kw: Any) -> None:
    async def main() -> None:
        endpoint = _endpoint(**kw)
        address = await endpoint.listen_tcp("127.0.0.1", 0)
        try:
            await test(endpoint, address)
        finally:
            await endpoint.close()

    asyncio.run(main())


def test_get_head_and_what_is_refused() -> None:
    async def test(endpoint: StatusEndpoint, address: tuple[str, int]) -> None:
        answer = await _raw(address, b"GET /status.json HTTP/1.1\r\nHost: x\r\n\r\n")
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK")
        assert b"Content-Type: application/json" in head
        assert b"Connection: close" in head and b"Cache-Control: no-store" in head
        assert json.loads(body) == STATUS
        head = await _raw(address, b"HEAD /metrics HTTP/1.1\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK") and head.endswith(b"\r\n\r\n")
        assert b"Content-Length: 8" in head  # (the body's length, no body)
        answer = await _raw(address, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 405") and b"Allow: GET, HEAD" in answer
        assert (await _raw(address, b"GET /nope HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 404")
        assert (await _raw(address, b"garbage\r\n\r\n")).startswith(b"HTTP/1.1 400")
        huge = b"GET / HTTP/1.1\r\nX: " + b"a" * (MAX_HEAD + 1000) + b"\r\n\r\n"
        assert (await _raw(address, huge)).startswith(b"HTTP/1.1 431")
        page = await _raw(address, b"GET / HTTP/1.1\r\n\r\n")
        assert b"Content-Security-Policy: default-src 'none'" in page
        assert endpoint.requests == 7

    _run(test)


def test_requests_for_the_stop_get_the_status_as_the_daemon_stops() -> None:
    # what the status page keeps open, so that it shows a stopped daemon's last figures
    async def test(endpoint: StatusEndpoint, address: tuple[str, int]) -> None:
        request = b"GET /stopped.json HTTP/1.1\r\n\r\n"
        waiting = [asyncio.ensure_future(_raw(address, request)) for _ in range(MAX_STOP_WATCHERS)]
        while endpoint.stop_watchers < MAX_STOP_WATCHERS:
            await asyncio.sleep(0.01)
        assert (await _raw(address, request)).startswith(b"HTTP/1.1 503")  # (one too many)
        await asyncio.sleep(0.05)
        assert not any(w.done() for w in waiting)
        await endpoint.close()
        for answer in await asyncio.gather(*waiting):
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 OK")
            final = json.loads(body)
            assert final.pop("live") is False and final.pop("stopped") > 0
            assert final == {k: v for k, v in STATUS.items() if k != "live"}
        assert STATUS["live"] is True  # (the live status itself is left as it was)
        assert endpoint.stop_watchers == 0

    _run(test)


def test_a_request_for_the_stop_is_answered_204_after_its_wait(monkeypatch: Any) -> None:
    monkeypatch.setattr(_web, "STOP_WAIT", 0.05)

    async def test(endpoint: StatusEndpoint, address: tuple[str, int]) -> None:
        answer = await _raw(address, b"GET /stopped.json HTTP/1.1\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 204") and answer.endswith(b"\r\n\r\n")
        assert endpoint.stop_watchers == 0

    _run(test)


def test_healthz_says_the_phase() -> None:
    async def serving(endpoint: StatusEndpoint, address: tuple[str, int]) -> None:
        answer = await _raw(address, b"GET /healthz HTTP/1.1\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"\r\n\r\nserving\n")

    async def starting(endpoint: StatusEndpoint, address: tuple[str, int]) -> None:
        answer = await _raw(address, b"GET /healthz HTTP/1.1\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 503") and answer.endswith(b"starting\n")

    _run(serving)
    _run(starting, phase="starting")


def test_a_silent_client_does_not_hold_a_request_slot_for_ever(monkeypatch: Any) -> None:
    """A client that connects and sends nothing is closed after the read timeout."""
    monkeypatch.setattr("dtp.daemon._web.READ_TIMEOUT", 0.2)

    async def test(endpoint: StatusEndpoint, address: tuple[str, int]) -> None:
        reader, writer = await asyncio.open_connection(*address)
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, unanswered
        writer.close()
        await writer.wait_closed()

    _run(test)


def test_the_control_socket_serves_the_same_even_at_a_long_path(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    path = deep / "control.sock"
    assert len(str(path)) > 108  # past what a socket address holds

    async def main() -> None:
        endpoint = _endpoint()
        await endpoint.listen_unix(path)
        try:
            assert path.exists() and (path.stat().st_mode & 0o777) == 0o600
            body = await asyncio.to_thread(unix_get, path, "/status.json")
            assert json.loads(body) == STATUS
        finally:
            await endpoint.close()
        assert not path.exists()  # removed: dtp status then reads the file

    asyncio.run(main())


def test_a_socket_file_a_killed_daemon_left_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    left = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    left.bind(str(path))
    left.close()  # (the file stays; nobody listens)

    async def main() -> None:
        endpoint = _endpoint()
        await endpoint.listen_unix(path)
        try:
            body = await asyncio.to_thread(unix_get, path, "/healthz")
            assert body == b"serving\n"
        finally:
            await endpoint.close()

    asyncio.run(main())


def test_metrics_without_their_client_say_which_extra() -> None:
    def missing(accept: str | None) -> tuple[bytes, str]:
        raise MissingExtra("metrics", "The daemon's metrics", "prometheus_client")

    async def main() -> None:
        endpoint = StatusEndpoint(lambda: {}, lambda: {}, missing, "")
        address = await endpoint.listen_tcp("127.0.0.1", 0)
        try:
            answer = await _raw(address, b"GET /metrics HTTP/1.1\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 404")
            assert answer.endswith(b"pip install 'dtp-sui[metrics]'\n")
        finally:
            await endpoint.close()

    asyncio.run(main())
