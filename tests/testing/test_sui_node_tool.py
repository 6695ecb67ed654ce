"""The Sui node stand-in as an application's tool (dtp.testing.sui_node): runnable from
the package alone (no checkout's tests/ on the path), a ready line naming URLs clients
can use, ``--fund`` repeated, funding after start through its HTTP faucet (in Sui's
faucet API), and one node reached from two network namespaces at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from dtp.identity.keys import HostIdentity
from dtp.ledger.sui import SuiConfig, SuiLedger
from dtp.testing.identities import identity
from dtp.testing.sui_node import FaucetError, SuiNodeStandIn, client_url, request_funds
from tests.support.netns import TwoMachines
from tests.support.paths import ROOT

SUI = 10**9


def _package_only(tmp: Path) -> dict[str, str]:
    """An environment whose path holds the dtp package and nothing else of the
    checkout: ``import tests`` fails there, as it does where dtp is installed."""
    site = tmp / "site"
    site.mkdir(exist_ok=True)
    if not (site / "dtp").exists():
        (site / "dtp").symlink_to(ROOT / "dtp")
    return {**os.environ, "PYTHONPATH": str(site)}


@contextmanager
def node_process(tmp: Path, *flags: str) -> Iterator[tuple[dict[str, str], subprocess.Popen[str]]]:
    """``python -m dtp.testing.sui_node FLAGS`` run from ``tmp`` with the package alone
    on its path; yields its ready line's fields and the process."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "dtp.testing.sui_node", *flags],
        cwd=tmp,
        env=_package_only(tmp),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            proc.wait(30)
            raise AssertionError(f"no ready line: {proc.stderr.read() if proc.stderr else ''}")
        words = line.split()
        assert words[0] == "ready", line
        yield dict(word.split("=", 1) for word in words[1:]), proc
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def _balance(url: str, package: str, address: str) -> int:
    ledger = SuiLedger(SuiConfig(url, package, timeout=30.0))
    try:
        return ledger.balance(address)
    finally:
        ledger.close()


def test_the_package_alone_runs_it_and_funds_by_flag_and_by_faucet(tmp_path: Path) -> None:
    """From a directory that is no checkout: --fund twice at start, then more through
    the faucet the ready line names, by the fund command and by request_funds."""
    check = subprocess.run(
        [sys.executable, "-c", "import tests"], cwd=tmp_path, env=_package_only(tmp_path),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert check.returncode != 0  # (the checkout's tests are not reachable from there)
    alice, bob, carol = (identity(n).sui_address for n in (1, 2, 3))
    flags = ["--fund", f"{alice}={2 * SUI}", "--fund", f"{bob}={3 * SUI}"]
    with node_process(tmp_path, *flags) as (ready, _):
        url, package, faucet = ready["url"], ready["package"], ready["faucet"]
        assert url.startswith("http://127.0.0.1:") and faucet.endswith("/v2/gas")
        assert _balance(url, package, alice) == 2 * SUI
        assert _balance(url, package, bob) == 3 * SUI
        fund = subprocess.run(
            [sys.executable, "-m", "dtp.testing.sui_node", "fund", faucet, f"{carol}=7"],
            cwd=tmp_path, env=_package_only(tmp_path), capture_output=True, text=True,
            timeout=60,
        )  # fmt: skip
        assert fund.returncode == 0, fund.stderr
        assert fund.stdout.split()[:2] == [carol, "7"]
        request_funds(faucet, alice, 5)
        request_funds(faucet, carol)  # the default amount, as Sui's faucet gives one
        assert _balance(url, package, alice) == 2 * SUI + 5
        assert _balance(url, package, carol) == 7 + 10 * SUI


def test_a_node_on_every_interface_names_urls_clients_can_use(tmp_path: Path) -> None:
    with node_process(tmp_path, "--host", "0.0.0.0") as (ready, _):
        assert "0.0.0.0" not in " ".join(ready.values())
        assert ready["url"].startswith("http://127.0.0.1:")
        port = ready["url"].rsplit(":", 1)[1]
        for other in ready.get("also", "").split(","):
            if other:
                assert other.endswith(f":{port}") and "0.0.0.0" not in other
                assert SuiLedger(SuiConfig(other, ready["package"])).epoch() >= 0
    assert client_url("::", 9) == "http://[::1]:9"
    assert client_url("10.0.0.1", 9) == "http://10.0.0.1:9"


def test_the_faucet_says_what_is_wrong_with_a_request() -> None:
    with SuiNodeStandIn(faucet_port=0) as node:
        faucet = node.faucet_url
        assert faucet is not None
        for address, amount, why in [
            ("0xnothex", 5, "recipient"),
            ("0x" + "1" * 64, 0, "amount"),
            ("0x" + "1" * 64, 2**64, "amount"),
        ]:
            with pytest.raises(FaucetError, match=why):
                request_funds(faucet, address, amount)
        bad = urllib.request.Request(faucet, data=b"[]", method="POST")
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(bad, timeout=30)
        body = json.load(caught.value)
        caught.value.close()
        assert "FixedAmountRequest" in body["status"]["Failure"]["internal"]
        with pytest.raises(FaucetError, match="cannot be reached"):
            request_funds(client_url("127.0.0.1", 1) + "/v2/gas", "0x1", 1, timeout=5)
    assert SuiNodeStandIn().faucet_url is None  # (in process, none unless asked for)


def test_two_network_namespaces_reach_one_node(netns: TwoMachines, tmp_path: Path) -> None:
    """The node on every interface in the root namespace; a client in each namespace
    names the URL of the ready line's list its namespace routes to, and a daemon's
    identity there is funded through the faucet after the start."""
    who = {m.name: HostIdentity.generate() for m in (netns.a, netns.b)}
    with node_process(tmp_path, "--host", "0.0.0.0") as (ready, _):
        port = ready["url"].rsplit(":", 1)[1]
        shared = f"http://{netns.root_address}:{port}"
        assert shared in ready["also"].split(",")
        faucet = ready["faucet"].replace("127.0.0.1", netns.root_address)
        for machine in (netns.a, netns.b):
            address = who[machine.name].sui_address
            script = (
                "import sys; from dtp.testing.sui_node import request_funds; "
                "from dtp.ledger.sui import SuiConfig, SuiLedger; "
                f"request_funds({faucet!r}, {address!r}, 123); "
                f"l = SuiLedger(SuiConfig({shared!r}, {ready['package']!r})); "
                f"print(l.balance({address!r})); l.close()"
            )
            done = netns.run(machine, [sys.executable, "-c", script], timeout=60,
                             env=_package_only(tmp_path), cwd=tmp_path)  # fmt: skip
            assert done.returncode == 0, done.stderr
            assert done.stdout.split() == ["123"]
