"""One-shot clients the two-machine tests run inside a network namespace (tests/support/netns.py).

    python -m tests.support.netns_clients tcp HOST PORT DATA
    python -m tests.support.netns_clients dtp HOST PORT SERVER_KEY_HEX DATA
    python -m tests.support.netns_clients http URL BODY

``tcp`` and ``dtp`` send DATA, half-close and read the answer to the server's EOF;
``http`` POSTs BODY (JSON) to URL. Each prints one JSON line and exits 0:
``{"reply", "local"}`` (``local``: the ``[address, port]`` the client's carrier used,
which tells the route taken; ``dtp`` adds ``server_key``, the key the Noise handshake
authenticated; ``http`` gives ``status`` instead of ``local``). A failure prints
``{"error": "<exception type>: <message>"}`` and exits 1.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import sys
import urllib.parse
from typing import Any

import dtp.socket
from tests.support.daemon_procs import ENV, ROOT
from tests.support.netns import Machine, TwoMachines

TIMEOUT = 10.0


def run_client(machines: TwoMachines, machine: Machine, *args: str) -> dict[str, Any]:
    """Run one of these clients inside ``machine``; what it printed."""
    done = machines.run(
        machine, [sys.executable, "-m", "tests.support.netns_clients", *args], cwd=ROOT, env=ENV
    )
    if not done.stdout:
        raise AssertionError(f"netns client {args} printed nothing:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def tcp(host: str, port: int, data: bytes) -> dict[str, Any]:
    with socket.create_connection((host, port), timeout=TIMEOUT) as sock:
        local = sock.getsockname()
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        reply = bytearray()
        while chunk := sock.recv(65536):
            reply += chunk
    return {"reply": reply.decode(), "local": list(local)}


def dtp_echo(host: str, port: int, server_key: bytes, data: bytes) -> dict[str, Any]:
    # server_key given: the handshake is Noise IK to that key (docs/protocol.md)
    with dtp.socket.create_connection((host, port), TIMEOUT, server_key=server_key) as sock:
        sock.sendall(data)
        sock.shutdown(dtp.socket.SHUT_WR)
        reply = bytearray()
        while chunk := sock.recv(65536):
            reply += chunk
        peer_key = sock.peer_static_key
        return {
            "reply": reply.decode(),
            "local": list(sock.getsockname()),
            "server_key": peer_key.hex() if peer_key is not None else None,
        }


def http_post(url: str, body: str) -> dict[str, Any]:
    parts = urllib.parse.urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=TIMEOUT)
    try:
        conn.request("POST", parts.path or "/", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        return {"status": response.status, "reply": response.read().decode()}
    finally:
        conn.close()


def main() -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="kind", required=True)
    p = sub.add_parser("tcp")
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("data")
    p = sub.add_parser("dtp")
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("key")
    p.add_argument("data")
    p = sub.add_parser("http")
    p.add_argument("url")
    p.add_argument("body")
    args = parser.parse_args()
    try:
        if args.kind == "tcp":
            result = tcp(args.host, args.port, args.data.encode())
        elif args.kind == "dtp":
            result = dtp_echo(args.host, args.port, bytes.fromhex(args.key), args.data.encode())
        else:
            result = http_post(args.url, args.body)
    except Exception as exc:
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
        return 1
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
