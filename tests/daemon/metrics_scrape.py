"""Reading the daemon's HTTP endpoint as Prometheus and a browser would: a scrape of
``/metrics`` parsed by ``prometheus_client``'s own parser (so what it accepts is valid
exposition text), a provider and a forwarder that both serve metrics, and a TCP client
that keeps bytes flowing through a forward while the tests look."""

from __future__ import annotations

import contextlib
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from tests.daemon.tunnel_setup import Setup
from tests.support.daemon_procs import Proc

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

METRICS = 'metrics_listen = "127.0.0.1:0"'
"""The ``[daemon]`` line of a daemon serving metrics (on a port of its choosing)."""


@dataclass
class Pair:
    """A provider and a forwarder daemon, both serving metrics (:func:`metered_pair`)."""

    provider: Proc
    forwarder: Proc
    address: tuple[str, int]
    """The forward's local address."""

    @property
    def provider_metrics(self) -> str:
        return str(self.provider.info["metrics"])

    @property
    def forwarder_metrics(self) -> str:
        return str(self.forwarder.info["metrics"])


def metered_pair(setup: Setup, services: str, forward_extra: str = "") -> Pair:
    """A provider and a forwarder (forward "svc" to port 7000), both serving metrics."""
    provider = setup.daemon(setup.write_daemon(services, extra=METRICS))
    config = setup.write_forwarder(provider.info["host_id"], 7000, forward_extra)
    config.write_text(config.read_text().replace("[[forward]]", f"{METRICS}\n\n[[forward]]", 1))
    forwarder = setup.daemon(config)
    host, port = forwarder.info["forwards"]["svc"].rsplit(":", 1)
    return Pair(provider, forwarder, (host, int(port)))


def scrape(address: str, timeout: float = 10.0) -> Samples:
    """``GET http://address/metrics``, every sample by name and labels."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=timeout) as answer:
        assert answer.status == 200
        assert answer.headers["Content-Type"].startswith("text/plain")
        return parse(answer.read().decode())


def parse(text: str) -> Samples:
    """Exposition text's samples by name and labels."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample ``name{labels}`` (KeyError when the daemon did not export it)."""
    return samples[(name, frozenset(labels.items()))]


def get(address: str, path: str, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """``GET http://address/path``: the status, headers and body (errors included)."""
    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=timeout) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


@dataclass
class Stream:
    """A TCP client of a forward that sends 64 KiB chunks and reads the echo, until
    stopped: traffic through a daemon pair while the tests scrape."""

    address: tuple[str, int]
    sent: int = 0
    received: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _sock: socket.socket | None = None

    def start(self) -> Stream:
        self._sock = socket.create_connection(self.address, timeout=30)
        for target in (self._send, self._receive):
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def _send(self) -> None:
        assert self._sock is not None
        chunk = b"m" * 65536
        with contextlib.suppress(OSError):
            while not self._stop.wait(0.02):
                self._sock.sendall(chunk)
                self.sent += len(chunk)
            self._sock.shutdown(socket.SHUT_WR)

    def _receive(self) -> None:
        assert self._sock is not None
        with contextlib.suppress(OSError):
            while data := self._sock.recv(1 << 20):
                self.received += len(data)

    def stop(self) -> None:
        """Stop sending, half-close, and read the echo to its end."""
        self._stop.set()
        for thread in self._threads:
            thread.join(30)
        if self._sock is not None:
            self._sock.close()


@contextlib.contextmanager
def streaming(address: tuple[str, int]) -> Iterator[Stream]:
    stream = Stream(address).start()
    try:
        yield stream
    finally:
        stream.stop()
