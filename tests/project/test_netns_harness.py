"""The two-machine harness (tests/support/netns.py): namespaces A and B reach each other over
their own link only, both reach the root namespace at one address, a DTP connection
crosses from one to the other, and nothing is left behind. Needs root and iproute2
(skipped otherwise, with the reason)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

from tests.support.daemon_procs import Proc, backend
from tests.support.netns import (
    _NAMESPACE,
    LinkImpairmentUnavailable,
    NetnsUnavailable,
    TwoMachines,
    _ip_json,
    lan,
    namespaces,
    remove_stale,
    root_links,
    two_machines,
    unavailable,
)
from tests.support.netns_clients import run_client


def test_tcp_server_in_a_is_reached_from_b_at_as_link_address_only(netns: TwoMachines) -> None:
    echo = netns.track(backend("echo", host="0.0.0.0", netns=netns.a.name))
    port = echo.info["port"]
    got = run_client(netns, netns.b, "tcp", netns.a.address, str(port), "over the link")
    assert got["reply"] == "over the link"
    # B's own address on the A-B link: the connection went over that veth
    assert got["local"][0] == netns.b.address
    # B's loopback is B's own: A's server (listening on every address of A) is not there
    refused = run_client(netns, netns.b, "tcp", "127.0.0.1", str(port), "x")
    assert refused["error"].startswith("ConnectionRefusedError")


def test_the_root_address_is_reached_from_both_machines(netns: TwoMachines) -> None:
    # a server of the root namespace, as a ledger node will be
    echo = netns.track(backend("echo", host=netns.root_address))
    port = str(echo.info["port"])
    from_a = run_client(netns, netns.a, "tcp", netns.root_address, port, "from a")
    from_b = run_client(netns, netns.b, "tcp", netns.root_address, port, "from b")
    assert (from_a["reply"], from_b["reply"]) == ("from a", "from b")
    # each came over its own uplink, not through the other machine
    assert from_a["local"][0] == netns.a.uplink
    assert from_b["local"][0] == netns.b.uplink


def test_a_dtp_connection_crosses_from_b_to_a(netns: TwoMachines) -> None:
    server = netns.track(
        Proc(
            [sys.executable, "-m", "tests.support.servers", "echo", "--host", netns.a.address],
            netns=netns.a.name,
        )
    )
    payload = os.urandom(3000).hex()  # both ways: B sends it, A's server echoes it
    port, key = str(server.info["port"]), server.info["key"]
    got = run_client(netns, netns.b, "dtp", netns.a.address, port, key, payload)
    assert got["reply"] == payload
    assert got["local"][0] == netns.b.address
    # the Noise handshake authenticated the key A's server holds
    assert got["server_key"] == server.info["key"]


def test_cleanup_kills_processes_and_removes_namespaces_and_links() -> None:
    if (reason := unavailable()) is not None:
        pytest.skip(reason)
    with pytest.raises(RuntimeError, match="the test failed"), two_machines() as machines:
        names = [m.name for m in machines.machines]
        links = [m.root_link for m in machines.machines]
        assert set(names) <= set(namespaces()) and set(links) <= set(root_links())
        # one tracked process, one that the harness only finds by looking in the namespace
        tracked = machines.popen(machines.a, ["sleep", "60"])
        stray = subprocess.Popen(machines.command(machines.b, ["sleep", "60"]))
        raise RuntimeError("the test failed")
    try:
        assert tracked.poll() is not None
        assert stray.wait(5) == -9
    finally:
        if stray.poll() is None:
            stray.kill()
            stray.wait()
    assert not set(names) & set(namespaces())
    assert not set(links) & set(root_links())


def test_leftovers_of_a_dead_run_are_removed() -> None:
    if (reason := unavailable()) is not None:
        pytest.skip(reason)
    dead = subprocess.Popen(["true"])
    dead.wait()  # its pid names the leftovers of a run that is gone
    stale_ns, stale_link = f"dtp-a-{dead.pid}-0", f"dtp{dead.pid}-0a"
    subprocess.run(["ip", "netns", "add", stale_ns], check=True)
    try:
        subprocess.run(
            ["ip", "link", "add", stale_link, "type", "veth", "peer", "name", "up0",
             "netns", stale_ns],
            check=True,
        )  # fmt: skip
        assert set(remove_stale()) == {stale_ns, stale_link}
        assert stale_ns not in namespaces() and stale_link not in root_links()
    finally:
        subprocess.run(["ip", "link", "delete", stale_link], capture_output=True)
        subprocess.run(["ip", "netns", "delete", stale_ns], capture_output=True)


def test_a_lan_is_one_bridge_and_is_removed_with_its_processes() -> None:
    if (reason := unavailable()) is not None:
        pytest.skip(reason)
    with pytest.raises(RuntimeError, match="the test failed"), lan(3) as segment:
        names = [segment.switch, *(m.name for m in segment.machines)]
        assert set(names) <= set(namespaces())
        # every machine's eth0 is a port of the one bridge, which floods multicast
        ports = _ip_json("-n", segment.switch, "link", "show", "master", "br0")
        assert sorted(p["ifname"] for p in ports) == ["port0", "port1", "port2"]
        details = _ip_json("-n", segment.switch, "-d", "link", "show", "br0")
        assert details[0]["linkinfo"]["info_data"]["mcast_snooping"] == 0
        # (that multicast crosses it: tests/graph/test_lan_two_machines.py, over mDNS)
        tracked = segment.popen(segment.machines[0], ["sleep", "60"])
        raise RuntimeError("the test failed")
    assert tracked.poll() is not None
    assert not set(names) & set(namespaces())
    # a dead run's LAN is named as remove_stale looks for
    assert all(_NAMESPACE.match(name) for name in names)


def test_impairing_the_link_delays_it_or_says_why_it_cannot(netns: TwoMachines) -> None:
    echo = netns.track(backend("echo", host=netns.a.address, netns=netns.a.name))
    with pytest.raises(ValueError, match=r"loss_percent must be 0\.\.100"):
        netns.impair(loss_percent=101)
    try:
        netns.impair(delay_ms=100, loss_percent=0)
    except LinkImpairmentUnavailable as exc:
        # no sch_netem in this kernel: the error says so, and the link is as it was
        assert "netem" in str(exc) or "`tc`" in str(exc)
        got = run_client(netns, netns.b, "tcp", netns.a.address, str(echo.info["port"]), "x")
        assert got["reply"] == "x"
        return
    start = time.monotonic()
    got = run_client(netns, netns.b, "tcp", netns.a.address, str(echo.info["port"]), "slow")
    # a connect and an echo: at least two round trips of 2 x 100 ms; netem cannot be beaten
    assert got["reply"] == "slow" and time.monotonic() - start >= 0.4
    netns.clear_impairment()


def test_without_root_or_ip_the_reason_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert "need root" in (unavailable() or "")
    with pytest.raises(NetnsUnavailable, match="need root"), two_machines():
        pass
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert "iproute2" in (unavailable() or "")
