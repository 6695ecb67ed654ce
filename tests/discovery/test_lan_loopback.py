"""LAN discovery in one process, over real mDNS on the loopback interface: servers
announced with dtp.discovery.lan are found by blocking and asyncio browsers, reached by
the key their record names (and only by it), updated and withdrawn; a malformed record
on the network is refused and counted while the browser goes on.

Every mDNS endpoint here runs on 127.0.0.1 only (``interfaces=LOOPBACK``): nothing
leaves the machine. Other test processes may announce on the same loopback at the same
time, so each browser looks for the key of its own test."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Iterator

import pytest
from zeroconf import DNSOutgoing, DNSQuestion, IPVersion, ServiceInfo, Zeroconf
from zeroconf.const import _CLASS_IN, _FLAGS_QR_QUERY, _TYPE_PTR

import dtp.aio
import dtp.socket
from dtp.discovery import lan
from dtp.discovery._records import SERVICE_TYPE, LanRecord, encode_txt
from dtp.discovery.errors import LanDiscoveryError
from dtp.errors import DTPTimeoutError, HandshakeError
from dtp.identity.keys import HostIdentity

LOOPBACK = ["127.0.0.1"]


@pytest.fixture
def echo_server() -> Iterator[dtp.socket.DTPServer]:
    """A blocking DTP server on loopback that echoes what it reads, upper-cased."""
    server = dtp.socket.create_server(("127.0.0.1", 0), identity=HostIdentity.generate())

    def handle(sock: dtp.socket.DTPSocket) -> None:
        with sock, contextlib.suppress(OSError):
            while data := sock.recv(1024):
                sock.sendall(data.upper())

    thread = threading.Thread(target=server.serve_forever, args=(handle,), daemon=True)
    thread.start()
    with server:
        yield server


def test_an_announced_server_is_found_and_reached_by_its_key(
    echo_server: dtp.socket.DTPServer,
) -> None:
    key = echo_server.noise_public_key
    with (
        lan.announce(echo_server, interfaces=LOOPBACK, service="echo", port=7) as announcement,
        lan.browse(interfaces=LOOPBACK, key=key) as browser,
    ):
        assert announcement.endpoints == (echo_server.address,)
        peer = browser.wait_for(timeout=10)
        assert peer.key == key
        assert peer.endpoints == (echo_server.address,)
        assert (peer.record.service, peer.record.port, peer.record.graph) == ("echo", 7, None)
        assert peer.name == announcement.name
        with peer.connect(timeout=5) as sock:
            sock.sendall(b"over mdns")
            assert sock.recv(100) == b"OVER MDNS"
        assert browser.refused_by_reason.get("full", 0) == 0
        assert [p.name for p in browser.peers()] == [announcement.name]


def test_a_spoofed_record_fails_the_handshake_and_reaches_no_other_key(
    echo_server: dtp.socket.DTPServer,
) -> None:
    # someone announces the real server's address under a key of their own: a client
    # that trusts the record asks for that key, which the server cannot prove
    forged = HostIdentity.generate().noise_public
    with (
        lan.announce(address=echo_server.address, key=forged, interfaces=LOOPBACK),
        lan.browse(interfaces=LOOPBACK, key=forged) as browser,
    ):
        peer = browser.wait_for(timeout=10)
        assert peer.endpoints == (echo_server.address,)
        with pytest.raises(HandshakeError):
            peer.connect(timeout=5)


def test_claims_in_a_record_are_claims_and_the_key_is_what_is_proved(
    echo_server: dtp.socket.DTPServer,
) -> None:
    # a record may claim any Host; what a connection proves is the key it names
    host = "0x" + "42" * 32
    key = echo_server.noise_public_key
    with (
        lan.announce(echo_server, interfaces=LOOPBACK, host_id=host),
        lan.browse(interfaces=LOOPBACK, host_id=host) as browser,
    ):
        peer = browser.wait_for(lambda p: p.key == key, timeout=10)
        assert peer.host_id == host
        with peer.connect(timeout=5) as sock:
            assert sock.peer_static_key == key


def test_updates_and_goodbyes_reach_the_browser_as_events(
    echo_server: dtp.socket.DTPServer,
) -> None:
    key = echo_server.noise_public_key
    seen: queue.Queue[lan.LanEvent] = queue.Queue()

    def on_event(event: lan.LanEvent) -> None:
        seen.put(event)
        raise RuntimeError("a callback's failure is logged, not fatal")

    with lan.browse(interfaces=LOOPBACK, key=key, on_event=on_event) as browser:
        announcement = lan.announce(echo_server, interfaces=LOOPBACK, service="a")
        try:
            events = browser.events(timeout=10)
            found = next(events)
            assert (found.kind, found.peer.record.service) == ("found", "a")
            announcement.update(lan.record_for(key, service="b"))
            updated = next(events)
            assert (updated.kind, updated.peer.record.service) == ("updated", "b")
        finally:
            announcement.close()
        lost = next(events)
        assert (lost.kind, lost.peer.name) == ("lost", announcement.name)
        assert browser.peers() == []
        # the callback saw the same, in order, in the browser's thread
        assert [seen.get(timeout=5).kind for _ in range(3)] == ["found", "updated", "lost"]
    with pytest.raises(LanDiscoveryError):
        announcement.update(lan.record_for(key, service="c"))


def test_a_withdrawal_at_once_after_announcing_stays_withdrawn(
    echo_server: dtp.socket.DTPServer,
) -> None:
    # mDNS repeats an announcement shortly after it (RFC 6762 §8.3), and answers queries
    # after a short delay (§6): either one sent after the goodbye announces the instance
    # again for a full TTL. A browser that saw the first announcement drops the repeats
    # as duplicates, so this one starts after it, as a client's would
    key = echo_server.noise_public_key
    label = f"t-{key[:6].hex()}"
    with lan.LanDiscovery(LOOPBACK) as mdns:
        web = lan.announce(echo_server, discovery=mdns, service="web", name=f"{label}-web")
        ssh = lan.announce(echo_server, discovery=mdns, service="ssh", name=f"{label}-ssh")
        try:
            with lan.browse(interfaces=LOOPBACK, key=key) as browser:
                ssh.close()  # (at once: its repeats not all sent yet)
                deadline = time.monotonic() + 15
                while [p.record.service for p in browser.peers()] != ["web"]:
                    assert time.monotonic() < deadline, [p.record for p in browser.peers()]
                    time.sleep(0.05)
                # and it stays so (a late repeat or answer would bring ssh back)
                settled = time.monotonic() + 2
                while time.monotonic() < settled:
                    assert [p.record.service for p in browser.peers()] == ["web"]
                    time.sleep(0.05)
        finally:
            web.close()


def test_an_answer_queued_before_the_withdrawal_is_not_sent_after_it(
    echo_server: dtp.socket.DTPServer,
) -> None:
    # a query's multicast answer waits 20-120 ms before it is sent (RFC 6762 §6): the
    # announcement withdrawn in that time must not be announced again by it
    key = echo_server.noise_public_key
    query = DNSOutgoing(_FLAGS_QR_QUERY)
    query.add_question(DNSQuestion(SERVICE_TYPE, _TYPE_PTR, _CLASS_IN))
    raw = Zeroconf(interfaces=LOOPBACK, ip_version=IPVersion.V4Only, use_asyncio=False)
    try:
        with lan.browse(interfaces=LOOPBACK, key=key) as browser:
            web = lan.announce(echo_server, interfaces=LOOPBACK, service="web")
            browser.wait_for(timeout=15)
            time.sleep(1.0)  # (its own repeats are over)
            raw.send(query)
            time.sleep(0.01)  # (the query taken, its answer waiting)
            web.close()
            deadline = time.monotonic() + 15
            while browser.peers():
                assert time.monotonic() < deadline
                time.sleep(0.05)
            settled = time.monotonic() + 2
            while time.monotonic() < settled:
                assert browser.peers() == []
                time.sleep(0.05)
    finally:
        raw.close()


def test_an_instance_that_did_not_resolve_in_time_is_asked_again(
    echo_server: dtp.socket.DTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the first resolution of each instance times out, as a late answer on a loaded
    # machine does: once announced an instance makes no new browser event, so it is
    # asked again (dtp.discovery._mdns.RESOLVE_RETRY_MAX), not left unresolved
    from dtp.discovery import _mdns as mdns

    failed: set[str] = set()

    class LateFirstAnswer(mdns.AsyncServiceInfo):  # type: ignore[misc]
        async def async_request(self, zc: object, timeout: float, *args: object) -> bool:
            if self.name not in failed:
                failed.add(self.name)
                return False
            return bool(await super().async_request(zc, timeout, *args))

    monkeypatch.setattr(mdns, "AsyncServiceInfo", LateFirstAnswer)
    key = echo_server.noise_public_key
    with (
        lan.announce(echo_server, interfaces=LOOPBACK, service="late") as announcement,
        lan.browse(interfaces=LOOPBACK, key=key) as browser,
    ):
        peer = browser.wait_for(timeout=mdns.RESOLVE_TIMEOUT + 20)
        assert peer.name == announcement.name
        assert announcement.name in failed  # (found by the second try)


def test_a_malformed_record_is_refused_and_the_browser_goes_on(
    echo_server: dtp.socket.DTPServer, caplog: pytest.LogCaptureFixture
) -> None:
    label = f"bad-{os.getpid()}-{id(caplog):x}"
    bad_text = encode_txt(LanRecord(echo_server.noise_public_key)).replace(b"dtp=1", b"dtp=x")
    raw = Zeroconf(interfaces=LOOPBACK, ip_version=IPVersion.V4Only, use_asyncio=False)
    bad = ServiceInfo(
        SERVICE_TYPE,
        f"{label}.{SERVICE_TYPE}",
        port=echo_server.address[1],
        properties=bad_text,
        server=f"{label}.local.",
        parsed_addresses=["127.0.0.1"],
    )
    try:
        with caplog.at_level(logging.WARNING, logger="dtp.discovery"):
            raw.register_service(bad)
            key = echo_server.noise_public_key
            with lan.browse(interfaces=LOOPBACK) as browser:
                # (a good record comes after the bad one: the browser still finds it)
                with lan.announce(echo_server, interfaces=LOOPBACK):
                    peer = browser.wait_for(lambda p: p.key == key, timeout=10)
                assert peer.name != bad.name

                def logged() -> bool:
                    return any(label in r.getMessage() for r in caplog.records)

                # (the count may hold another test process's bad record: the log names ours)
                deadline = time.monotonic() + 15
                while not logged() and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert logged()
                assert browser.refused_by_reason["value"] >= 1
                assert all(p.name != bad.name for p in browser.peers())
        (line,) = [r.getMessage() for r in caplog.records if label in r.getMessage()]
        assert "dtp" in line and "not a number" in line  # (the rule it broke, said once)
    finally:
        raw.close()


def test_asyncio_announce_and_browse(echo_server: dtp.socket.DTPServer) -> None:
    key = echo_server.noise_public_key

    async def main() -> None:
        calls: list[str] = []

        async def on_event(event: lan.LanEvent) -> None:
            calls.append(event.kind)

        async with lan.browse_async(interfaces=LOOPBACK, key=key, on_event=on_event) as browser:
            announcement = await lan.announce_async(echo_server, interfaces=LOOPBACK)
            peer = await browser.wait_for(timeout=10)
            reader, writer = await peer.open_connection(timeout=5)
            writer.write(b"async")
            assert await reader.readexactly(5) == b"ASYNC"
            writer.close()
            await announcement.aclose()
            kinds = []
            async for event in browser.events(timeout=5):
                kinds.append(event.kind)
                if event.kind == "lost":
                    break
            assert kinds == ["found", "lost"]
            for _ in range(500):  # (the callback runs in a task of its own)
                if len(calls) == 2:
                    break
                await asyncio.sleep(0.01)
            assert calls == ["found", "lost"]
            with pytest.raises(DTPTimeoutError):
                await browser.wait_for(timeout=0.2)

        # ``async with`` on the announcement withdraws it
        async with lan.announce_async(echo_server, interfaces=LOOPBACK) as announcement:
            assert not announcement.closed
        assert announcement.closed

    asyncio.run(main())


def test_an_asyncio_server_is_announced_as_any_other() -> None:
    async def main() -> None:
        async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
            writer.write(await reader.read(100))
            await writer.drain()
            writer.close()

        server = await dtp.aio.start_server(
            handle, "127.0.0.1", 0, identity=HostIdentity.generate()
        )
        async with server:
            discovery = await asyncio.to_thread(lan.LanDiscovery, LOOPBACK)
            try:
                async with (
                    lan.announce_async(server, discovery=discovery),
                    lan.browse_async(discovery=discovery, key=server.noise_public_key) as found,
                ):
                    peer = await found.wait_for(timeout=10)
                    assert peer.endpoints == (server.address,)
                assert not discovery.closed  # (shared: its owner closes it)
            finally:
                await discovery.aclose()

    asyncio.run(main())


def test_arguments_are_checked_before_anything_is_sent() -> None:
    with pytest.raises(TypeError, match="server"):
        lan.announce(interfaces=LOOPBACK)
    with pytest.raises(ValueError, match="not an IP address"):
        lan.browse(interfaces=["eth0"])
    with pytest.raises(ValueError, match="ipv6"):
        lan.LanDiscovery(["::1"])
    with lan.LanDiscovery(LOOPBACK) as discovery:
        with pytest.raises(TypeError, match="interfaces"):
            lan.browse(discovery=discovery, interfaces=LOOPBACK)
        with pytest.raises(ValueError, match="port"):
            discovery.announce(LanRecord(bytes(32)), ("127.0.0.1", 0))
        with pytest.raises(ValueError, match="dot"):
            discovery.announce(LanRecord(bytes(32)), ("127.0.0.1", 1), name="a.b")
    with pytest.raises(LanDiscoveryError, match="closed"):
        discovery.announce(LanRecord(bytes(32)), ("127.0.0.1", 1))
