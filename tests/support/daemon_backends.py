"""TCP backends for the services daemon tests, run in their own process.

    python -m tests.support.daemon_backends {echo,http,udp} [--port N] [--host ADDRESS]

Prints one JSON line {"port"} once listening (on 127.0.0.1 unless --host says where),
then serves until killed.
  echo  an asyncio server echoing every byte until EOF
  http  Python's http.server (HTTP/1.1, keep-alive) answering JSON-RPC 2.0 POSTs:
        "echo" returns its params, "add" their sum, "whoami" the backend's port
  udp   a UDP server answering each datagram with itself plus a 2-byte marker
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


async def serve_echo(host: str, port: int) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(1 << 20):
                writer.write(data)
                await writer.drain()
            writer.write_eof()
        except OSError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, host, port, backlog=512)
    print(json.dumps({"port": server.sockets[0].getsockname()[1]}), flush=True)
    await server.serve_forever()


class JsonRpcHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        try:
            request = json.loads(body)
            method, params = request["method"], request.get("params", [])
            result: Any
            if method == "echo":
                result = params
            elif method == "add":
                result = sum(params)
            elif method == "whoami":
                result = self.server.server_address[1]
            else:
                raise KeyError(method)
            reply = {"jsonrpc": "2.0", "id": request.get("id"), "result": result}
        except (ValueError, KeyError) as exc:
            reply = {"jsonrpc": "2.0", "id": None, "error": {"code": -32601, "message": str(exc)}}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve_http(host: str, port: int) -> None:
    server = ThreadingHTTPServer((host, port), JsonRpcHandler)
    server.daemon_threads = True
    print(json.dumps({"port": server.server_address[1]}), flush=True)
    server.serve_forever()


def serve_udp(host: str, port: int) -> None:
    import socket

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, port))
    print(json.dumps({"port": sock.getsockname()[1]}), flush=True)
    while True:
        data, peer = sock.recvfrom(65535)
        sock.sendto(data + b"OK", peer)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["echo", "http", "udp"])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    if args.mode == "echo":
        asyncio.run(serve_echo(args.host, args.port))
    elif args.mode == "udp":
        serve_udp(args.host, args.port)
    else:
        serve_http(args.host, args.port)


if __name__ == "__main__":
    sys.exit(main())
