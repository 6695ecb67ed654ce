"""An attacker that tries to lock a DTP server's clients out (tests/transport/test_lockout.py,
tests/transport/test_reconnect_flood.py), run as a process of its own:
``python -m tests.transport.lockout_attack HOST PORT SECONDS``.

It keeps ``--open`` TCP connections to the server, spread over ``--addresses`` source
addresses (127.0.0.2 and on), opening at most ``--rate`` a second (0: no bound, each
connection the server closes is opened again at once -- the reconnect flood), each one
of ``--kinds`` in turn (all three by default): *silent* (nothing sent), *partial* (part
of a first handshake record, then nothing) and *half* (a genuine XX first record, then
nothing: the server answers and holds a handshake slot for it). A connection the server
closes is opened again at once (within the rate). It prints one line once it has opened
``--open`` connections ("ready"), and at the end -- its time up, or terminated -- how
many it opened and how many the server closed."""

from __future__ import annotations

import argparse
import errno
import selectors
import signal
import socket
import sys
import time

from tests.transport.half_handshakes import first_record

KINDS = ("silent", "partial", "half")


def run(
    host: str,
    port: int,
    seconds: float,
    addresses: int,
    keep_open: int,
    rate: float,
    kinds: tuple[str, ...] = KINDS,
) -> None:
    record = first_record()
    sel = selectors.DefaultSelector()
    opened = closed = 0
    turn = 0
    ready_said = False
    start = time.monotonic()
    end = start + seconds

    def open_one() -> None:
        nonlocal opened, turn
        source = f"127.0.0.{2 + turn % addresses}"
        kind = kinds[turn % len(kinds)]
        turn += 1
        sock = socket.socket()
        sock.setblocking(False)
        try:
            sock.bind((source, 0))
            err = sock.connect_ex((host, port))
        except OSError:
            sock.close()
            return
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            return
        opened += 1
        sel.register(sock, selectors.EVENT_WRITE, kind)

    try:
        while time.monotonic() < end:
            # (at most ``rate`` a second from the start: a burst of connects all at once
            # would be a SYN flood, which overflows any listener's accept queue -- that is
            # the kernel's to defend, with SYN cookies, not the server's admission; rate
            # 0 reopens each connection the server closes at once, which is no more)
            allowed = 1 + (time.monotonic() - start) * rate if rate else float("inf")
            while len(sel.get_map()) < keep_open and turn < allowed:
                open_one()
            if not ready_said and opened >= keep_open:
                print("ready", flush=True)
                ready_said = True
            for key, events in sel.select(0.05):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                kind = key.data
                if events & selectors.EVENT_WRITE:
                    # connected (or failed): say what this kind says, then only read
                    try:
                        if kind == "half":
                            sock.send(record)
                        elif kind == "partial":
                            sock.send(record[:20])
                    except OSError:
                        pass
                    sel.modify(sock, selectors.EVENT_READ, kind)
                    continue
                try:
                    data = sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    sel.unregister(sock)
                    sock.close()
                    closed += 1
    finally:
        for key in list(sel.get_map().values()):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            sock.close()
        print(f"opened {opened} closed-by-server {closed}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("seconds", type=float)
    parser.add_argument("--addresses", type=int, default=200)
    parser.add_argument("--open", type=int, default=600)
    parser.add_argument("--rate", type=float, default=200.0, help="connects a second (0: no bound)")
    parser.add_argument(
        "--kinds", default=",".join(KINDS), help="comma-separated, of " + str(KINDS)
    )
    args = parser.parse_args()
    # (a terminate ends the run as its time would: the counts are still printed)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    kinds = tuple(args.kinds.split(","))
    if not kinds or any(kind not in KINDS for kind in kinds):
        parser.error(f"--kinds: a comma-separated list of {KINDS}")
    run(args.host, args.port, args.seconds, args.addresses, args.open, args.rate, kinds)
    sys.exit(0)


if __name__ == "__main__":
    main()
